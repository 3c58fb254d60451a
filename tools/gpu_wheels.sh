#!/usr/bin/env bash
# Makes .whl/: the wheels `make test-gpu` (tools/gpu_check.sh) installs on a GPU machine
# without a package registry. Run it here, where PyPI is reachable:
#
#   bash tools/gpu_wheels.sh
#
# The machine it is made for: Python 3.12 with PyTorch, transformers, timm, tokenizers,
# OpenCV, numpy, Pillow, matplotlib, PyYAML, tqdm, tabulate, portalocker, pytest and
# the rest of a CUDA image installed, but no detectron2, fvcore, iopath, yacs,
# pycocotools, termcolor or omegaconf. .whl/ holds those (pytest and pytest-timeout too,
# so that the check runs known versions), about 8 MB; it travels with the working tree
# (git ignores it). The script ends by checking the set: each wheel installs for
# CPython 3.12 on x86-64 Linux as gpu_check.sh installs it (pip's dry run), and each
# of its requirements is carried or on that machine (IMAGE_HAS below).
#
#   PYTHON   the interpreter whose pip downloads (default: the project's .venv, else python3)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${DITOD_VENV:-$repo/.venv}
python=${PYTHON:-$([ -x "$venv/bin/python" ] && echo "$venv/bin/python" || echo python3)}
out=$repo/.whl
log() { echo "[gpu-wheels] $*"; }
# This machine's pip configuration names local package folders that may not exist.
pip() { "$python" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }

# Python 3.12 wheels for x86-64 Linux (pure-Python ones match too).
target=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# What the tests import and the machine lacks, at the versions tested here.
WHEELS=(pycocotools==2.0.11 yacs==0.1.8 termcolor==3.3.0 omegaconf==2.3.1 pytest==9.2.0 pytest-timeout==2.4.0
  pluggy==1.7.0 iniconfig==2.3.1)
# Pure-Python packages published as source only: built into wheels here.
SOURCES=(fvcore==0.1.5.post20221221 iopath==0.1.10 antlr4-python3-runtime==4.9.3)
# sal-detectron2's requirements that the machine need not have: numpy<2 (it runs on
# numpy 2, as here) and two that only code the tests do not use imports.
DETECTRON2_UNUSED="black hydra-core"
# On the GPU machine already (its image's package list, 2026-11), of what the wheels
# above require.
IMAGE_HAS="cloudpickle matplotlib numpy packaging pillow portalocker pygments pyyaml tabulate tensorboard tqdm
  typing-extensions"

rm -rf "$out"
mkdir -p "$out/cp310"
log "downloading sal-detectron2 0.7.2 (pure-Python part, as tools/setup_env.sh installs it)"
pip download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp --platform any \
  -d "$out/cp310" sal-detectron2==0.7.2
log "downloading ${WHEELS[*]}"
pip download -q --no-deps "${target[@]}" -d "$out" "${WHEELS[@]}"
log "building wheels of ${SOURCES[*]}"
pip wheel -q --no-deps -w "$out" "${SOURCES[@]}"

log "checking the set: installable as tools/gpu_check.sh installs it, every requirement met"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
pip install -q --dry-run --no-index --no-deps --target "$scratch" "${target[@]}" "$out"/*.whl
pip install -q --dry-run --no-index --no-deps --target "$scratch" --only-binary=:all: --python-version 3.10 \
  --implementation cp --platform any "$out"/cp310/*.whl
"$python" - "$out" "$IMAGE_HAS" "$DETECTRON2_UNUSED" <<'EOF'
# Every requirement of every carried wheel (for CPython 3.12 on x86-64 Linux) is carried
# or on the machine: the --no-deps install there leaves nothing out.
import re, sys, zipfile
from pathlib import Path

from packaging.requirements import Requirement

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

folder, image, unused = Path(sys.argv[1]), set(sys.argv[2].split()), set(sys.argv[3].split())
python312 = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
             "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
             "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
wheels = sorted(folder.rglob("*.whl"))
carried = {canonical(wheel.name.split("-")[0]) for wheel in wheels}
missing = set()
for wheel in wheels:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    for line in lines:
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is None or requirement.marker.evaluate(python312):
                name = canonical(requirement.name)
                if name not in carried | image | unused:
                    missing.add(f"{name} (for {wheel.name})")
if missing:
    sys.exit("[gpu-wheels] required but neither carried nor on the GPU machine: " + ", ".join(sorted(missing)))
print(f"[gpu-wheels] complete: every requirement of the {len(wheels)} wheels is carried or on the machine")
EOF
size=$(du -sm "$out" | cut -f1)
[ "$size" -lt 64 ] || { log "$out is ${size} MB: over the 64 MB that travels with the working tree"; exit 1; }
log "done: $(ls "$out"/*.whl "$out"/cp310/*.whl | wc -l) wheels, ${size} MB in $out"
