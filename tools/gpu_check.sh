#!/usr/bin/env bash
# Every GPU check, in one command (`make test-gpu`): the tests marked gpu, on CUDA.
#
#   bash tools/gpu_check.sh [pytest options]
#
# They check every fusion module on CUDA in float32 and under float16 and bfloat16
# autocast against the CPU float32 result, paint_tokens' forward and backward without a
# host-device synchronisation, and a 20-step AMP training of the tiny text config
# (sized to take under 5 minutes, install included).
#
# On a machine without detectron2 and without a package registry, it first installs
# the wheels of .whl/ (made with tools/gpu_wheels.sh where PyPI is reachable, carried
# with the working tree) into $DITOD_GPU_SITE (default /tmp/site), from local files.
#
#   PYTHON   interpreter (default: the project's .venv when there, else python3)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
venv=${DITOD_VENV:-$repo/.venv}
python=${PYTHON:-$([ -x "$venv/bin/python" ] && echo "$venv/bin/python" || echo python3)}
site=${DITOD_GPU_SITE:-/tmp/site}
log() { echo "[gpu-check] $*"; }

if ! "$python" -c "import detectron2, fvcore, pycocotools, pytest_timeout" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    log "detectron2 (or another test requirement) is missing and .whl/ has no wheels:"
    log "run 'bash tools/gpu_wheels.sh' on a machine that reaches PyPI, then carry .whl/ here"
    exit 1
  fi
  log "installing the wheels of .whl/ into $site"
  install=("$python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile
    --no-cache-dir --upgrade --target "$site")
  "${install[@]}" .whl/*.whl
  # sal-detectron2's wheel is tagged for CPython 3.10 (its pure-Python part runs on
  # later versions): installed as tools/setup_env.sh installs it.
  "${install[@]}" --only-binary=:all: --python-version 3.10 --implementation cp --platform any .whl/cp310/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

if ! "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  log "no CUDA device: the gpu checks need one"
  exit 1
fi
"$python" -c "import torch; print('[gpu-check]', torch.cuda.get_device_name(), '| torch', torch.__version__)"
# The test files that hold gpu tests (the `device` fixture or the gpu marker): the
# others may import what such a machine lacks (tests/test_ocr.py: pymupdf).
mapfile -t files < <(grep -lE 'pytest\.mark\.gpu|def test_[[:alnum:]_]*\(([^)]*[ ,])?device[,)]' tests/test_*.py)
log "pytest -m gpu ${files[*]}"
# Only the plugin the check uses: the machine's own (xdist, cov, ...) may not suit this pytest.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
exec "$python" -m pytest -p pytest_timeout -m gpu -q -rs --timeout 300 "${files[@]}" "$@"
