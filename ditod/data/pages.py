"""The pages of a collection: image files and PDF pages, their names, shards, and loading
a page with its OCR.

A page is named after its file, relative to the folder it was found in and without the
suffix (``scans/page_12``); page 1 of ``report.pdf`` is ``report_p0001`` (1-based, four
digits). Tools write a page's outputs under its name (``<name>.json``, ...), so two
inputs with one name are an error. A page's *key* is its name with the suffix of what
is written for it (``scans/page_12.png``, ``report_p0001.png``): it names the page in
reports and decides its shard (``--shard K/N``), the same on every machine.

PDFs are checked when they are collected: one that cannot be opened, is encrypted or has
no pages is a failure with the reason; one that PyMuPDF had to repair (truncated,
damaged) is logged. A rendered page that is blank although the PDF page has content is
an error when the page is loaded (see `ditod.data.ocr.check_rendered_page`).
"""

import argparse
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from detectron2.data.detection_utils import _apply_exif_orientation
from detectron2.utils.file_io import PathManager

from .mapper import UnreadableImageError
from .ocr import OnTheFlyOCR, PageOCR, load_ocr, read_pdf_page

__all__ = [
    "IMAGE_SUFFIXES",
    "LoadedPage",
    "OnTheFlyOCR",
    "Page",
    "check_unique_names",
    "collect_pages",
    "find_files",
    "in_shard",
    "load_page",
    "parse_shard",
    "pdf_page_count",
    "pdf_page_name",
    "pdf_pages",
    "read_rgb_image",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


def pdf_page_name(stem: str, index: int) -> str:
    """The name of page `index` (0-based) of the PDF `stem`: ``<stem>_p0001`` for the first."""
    return f"{stem}_p{index + 1:04d}"


@dataclass(frozen=True)
class Page:
    """One page: an image file, or page `index` (0-based) of a PDF file."""

    name: str  # relative output name, without suffix
    source: Path
    index: int | None = None
    ocr_file: Path | None = None  # an existing OCR json of an image page

    @property
    def key(self) -> str:
        """The name with the suffix of the page image: names the page in reports and shards."""
        return self.name + (self.source.suffix if self.index is None else ".png")


def find_files(folder, suffixes=IMAGE_SUFFIXES) -> list[Path]:
    """The files under `folder` (recursively, sorted) whose suffix, in any case, is in `suffixes`."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in suffixes and p.is_file())


def pdf_page_count(path) -> int:
    """The number of pages of a PDF.

    Raises:
        ValueError: the file cannot be opened as a PDF, is encrypted or has no pages
            (the message says which).
    """
    import pymupdf

    try:
        document = pymupdf.open(path)
    except Exception as e:
        raise ValueError(f"cannot open PDF: {e}") from None
    with document:
        if not document.is_pdf:
            raise ValueError("cannot open PDF: not a PDF file")
        if document.needs_pass:
            raise ValueError("cannot open PDF: it is encrypted (needs a password)")
        if document.page_count == 0:
            raise ValueError("the PDF has no pages")
        if document.is_repaired:
            logger.warning(f"{path}: damaged PDF (truncated?), repaired by PyMuPDF: some of its content may be lost")
        return document.page_count


def pdf_pages(path, name: str) -> list[Page]:
    """The pages of the PDF at `path`, named after `name` (see `pdf_page_count` for errors)."""
    return [Page(pdf_page_name(name, i), Path(path), index=i) for i in range(pdf_page_count(path))]


def check_unique_names(pages):
    """Raise ValueError when two pages have the same name (their outputs would overwrite each other)."""
    first = {}
    for page in pages:
        if page.name in first:
            other = first[page.name]
            raise ValueError(f"{other.key} and {page.key} would both be written as {page.name}; rename one")
        first[page.name] = page


def collect_pages(inputs, ocr_dir=None) -> tuple[list[Page], list[tuple[str, str]]]:
    """
    The pages of `inputs` (image files, PDFs and folders searched recursively for both), in
    order, and the inputs that cannot be used, with the reason (a file that is neither an
    image nor a PDF, a PDF that cannot be opened or has no pages).

    Args:
        ocr_dir: folder of the OCR jsons of the images (same relative path and stem),
            recorded as each image page's `ocr_file`.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: two pages would have the same name.
    """
    files = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = find_files(path, IMAGE_SUFFIXES | {".pdf"})
            files.extend((p, p.relative_to(path).with_suffix("").as_posix()) for p in found)
        elif path.is_file():
            files.append((path, path.stem))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    pages, failures = [], []
    for path, name in files:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            pages.append(Page(name, path, ocr_file=Path(ocr_dir) / f"{name}.json" if ocr_dir else None))
        elif suffix == ".pdf":
            try:
                pages.extend(pdf_pages(path, name))
            except ValueError as e:
                failures.append((str(path), str(e)))
        else:
            failures.append((str(path), f"not an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or PDF"))
    check_unique_names(pages)
    return pages, failures


def in_shard(key: str, shard: tuple[int, int]) -> bool:
    """Whether `key` belongs to shard K of N: a hash that is the same in every process and machine."""
    k, n = shard
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n == k


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` as (K, N), for argparse's ``type=``."""
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like K/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


# ---------------------------------------------------------------------- loading


def read_rgb_image(path) -> np.ndarray:
    """
    An image file as RGB (H, W, 3 uint8), EXIF orientation applied: the pixels of
    detectron2's ``read_image(path, "RGB")`` (what the data loader reads), without its
    extra full-size copy of a page that is RGB already (a 12000 x 9000 page: 324 MB as an
    array, 432 MB in PIL).
    """
    with PathManager.open(path, "rb") as f:
        image = _apply_exif_orientation(Image.open(f))
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)


@dataclass
class LoadedPage:
    """A page read into memory: the image (RGB, H x W x 3 uint8), its OCR, where the OCR came
    from ("ocr json", "text layer", the on-the-fly engine's name, or "none"), the image file
    (None for a rendered PDF page) and the seconds spent per stage ("load", "ocr")."""

    image: np.ndarray
    ocr: PageOCR | None
    ocr_source: str
    file_name: str | None
    seconds: dict[str, float] = field(default_factory=Counter)


def load_page(page: Page, dpi: float = 144, ocr: OnTheFlyOCR | None = None, with_text: bool = True) -> LoadedPage:
    """
    Read a page once: an image file (EXIF orientation applied), or a PDF page rendered at
    `dpi`. With `with_text` (a model that reads text) its OCR is the image's OCR json, the
    PDF page's text layer, or, for a page without either, made by `ocr` (when given).

    Raises:
        UnreadableImageError: the image cannot be read.
        ValueError: a PDF page renders blank although it has content.
        OCRFormatError: the OCR json is unusable.
    """
    start = time.perf_counter()
    seconds = Counter()
    text, source = None, "none"
    if page.index is None:
        try:
            image = read_rgb_image(page.source)
        except (OSError, SyntaxError) as e:  # PIL reports some broken files as SyntaxError
            raise UnreadableImageError(f"{page.source}: cannot read the image ({e})") from e
        file_name = str(page.source)
        if with_text and page.ocr_file is not None:
            if page.ocr_file.is_file():
                text, source = load_ocr(page.ocr_file, image_size=(image.shape[1], image.shape[0])), "ocr json"
            else:
                logger.warning(f"{page.name}: no OCR json {page.ocr_file}; OCR on the fly")
    else:
        import pymupdf

        with pymupdf.open(page.source) as document:
            rendered = read_pdf_page(document[page.index], dpi)
        image, file_name = rendered.image, None
        if with_text and len(rendered.ocr):
            text, source = rendered.ocr, "text layer"
    seconds["load"] = time.perf_counter() - start
    if with_text and text is None and ocr is not None:
        start = time.perf_counter()
        text, source = ocr(image), ocr.name
        seconds["ocr"] = time.perf_counter() - start
    return LoadedPage(image, text, source, file_name, seconds)
