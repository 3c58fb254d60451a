"""Pages in, `PagePrediction`s out, whatever runs the model: the part of a predictor that
reads pages (arrays, PIL images, PDF pages), OCRs those that need it, and turns the
model's boxes into detections and blocks in reading order. No detectron2 here: the
PyTorch predictor (`ditod.engine.predictor.VLPredictor`) and the ONNX Runtime one
(`ditod.runtime.OnnxPredictor`) both build on `PagePredictor`.
"""

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..data.ocr import OCREngine, OnTheFlyOCR, PageOCR, read_pdf_page
from .blocks import Block, Detection, TextLine, blocks_markdown, ordered_blocks

__all__ = ["PagePrediction", "PagePredictor"]


@dataclass
class PagePrediction:
    """
    What the model found on one page: `detections` in the model's order (highest score
    first), `blocks` in reading order with their text, the OCR lines outside every
    block, the page's OCR and where it came from ("given", "text layer", the OCR
    engine's name, or "none" for an image-only model), and the seconds spent per stage
    ("ocr", "preprocess", "model"; a batch's model time shared out over its pages).
    """

    width: int
    height: int
    detections: list[Detection]
    blocks: list[Block]
    lines_outside_blocks: list[TextLine]
    ocr: PageOCR | None
    ocr_source: str
    seconds: dict[str, float] = field(default_factory=Counter)

    def to_dict(self) -> dict:
        """The page as JSON (the schema in the README): size, OCR source, blocks, lines outside them."""
        return {
            "width": self.width,
            "height": self.height,
            "ocr": self.ocr_source,
            "blocks": [block.to_dict() for block in self.blocks],
            "lines_outside_blocks": [line.to_dict() for line in self.lines_outside_blocks],
        }

    def to_markdown(self) -> str:
        """The page's blocks as Markdown (see `ditod.engine.blocks.blocks_markdown`)."""
        return blocks_markdown(self.blocks)


class PagePredictor:
    """
    The call contract of ditod's predictors. `predictor(page)` takes one page and returns
    its `PagePrediction`; `predictor([page, ...])` runs the pages as one batch and
    returns a list. A page is:

    * an image array H x W x 3 uint8 in `input_format` ("BGR" by default, what
      `cv2.imread` and detectron2's `DefaultPredictor` take; "RGB" for arrays from PIL or
      `detectron2.data.detection_utils.read_image(..., "RGB")`);
    * a PIL image (any mode, converted to RGB);
    * a PDF page (``pymupdf.Page``), rendered at `dpi`, its text layer as its OCR.

    `ocr` gives a page's `PageOCR` (a list, one entry or None per page, for a batch).
    A model that reads text (`reads_text`) OCRs the pages that have none (a PDF page
    without a text layer included) with `ocr_engine`, built on first use; an image-only
    model reads no OCR.

    A subclass sets `model_format` (the channel order the model reads), `class_names`,
    `category_ids` and `reads_text`, and writes `prepare` (one page's model inputs) and
    `run_model` (a batch of them to boxes, scores and classes in page pixels).
    """

    model_format = "BGR"
    reads_text = False
    class_names: list[str] = []
    category_ids: list[int] = []

    def __init__(self, *, input_format: str = "BGR", ocr_engine: str | OCREngine = "rapidocr", dpi: float = 144):
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        self.input_format = input_format
        self.dpi = dpi
        self.ocr = OnTheFlyOCR(ocr_engine)

    def __call__(self, pages, ocr=None):
        """One page and its OCR (or None) -> its `PagePrediction`; a list of pages and a list
        of their OCR (or None) -> a list of them, run as one batch."""
        if isinstance(pages, (list, tuple)):
            ocr = [None] * len(pages) if ocr is None else list(ocr)
            if len(ocr) != len(pages):
                raise ValueError(f"{len(pages)} pages but {len(ocr)} OCR entries")
            return self.predict(pages, ocr)
        return self.predict([pages], [ocr])[0]

    def predict(self, pages, ocr) -> list[PagePrediction]:
        """The pages as one batch (see the class docstring), with their OCR (None: none yet)."""
        if not pages:
            return []
        prepared = [self.preprocess(page, page_ocr) for page, page_ocr in zip(pages, ocr)]
        start = time.perf_counter()
        outputs = self.run_model([inputs for inputs, _ in prepared])
        model_seconds = (time.perf_counter() - start) / max(len(pages), 1)
        predictions = []
        for (_, page), output in zip(prepared, outputs):
            page.seconds["model"] = model_seconds
            predictions.append(self.postprocess(output, page))
        return predictions

    def _image(self, page):
        """The page as an image array and its format ("RGB" or "BGR"), and its rendered PDF page or None."""
        if hasattr(page, "get_pixmap"):  # a pymupdf.Page
            rendered = read_pdf_page(page, self.dpi)
            return rendered.image, "RGB", rendered
        if isinstance(page, Image.Image):
            return np.asarray(page.convert("RGB")), "RGB", None
        if not (isinstance(page, np.ndarray) and page.ndim == 3 and page.shape[2] == 3 and page.dtype == np.uint8):
            described = f"{page.shape} {page.dtype}" if isinstance(page, np.ndarray) else type(page).__name__
            raise ValueError(
                f"a page must be an H x W x 3 uint8 image array, a PIL image or a PDF page, got {described}"
            )
        return page, self.input_format, None

    def preprocess(self, page, ocr: PageOCR | None = None):
        """
        The model inputs of one page (`prepare`), and the `PagePrediction` to fill in
        (size, OCR, seconds).
        """
        seconds = Counter()
        source = "given" if ocr is not None else "none"
        start = time.perf_counter()
        image, image_format, rendered = self._image(page)
        if rendered is not None:
            seconds["load"] = time.perf_counter() - start
            if ocr is None and len(rendered.ocr):
                ocr, source = rendered.ocr, "text layer"
        if not self.reads_text:
            ocr, source = None, "none"
        elif ocr is None:
            start = time.perf_counter()
            rgb = image if image_format == "RGB" else np.ascontiguousarray(image[:, :, ::-1])
            ocr, source = self.ocr(rgb), self.ocr.name
            seconds["ocr"] = time.perf_counter() - start
        start = time.perf_counter()
        # A view, not a copy, when the formats differ: the resize makes the one copy.
        inputs = self.prepare(image if image_format == self.model_format else image[:, :, ::-1], ocr)
        seconds["preprocess"] = time.perf_counter() - start
        height, width = image.shape[:2]
        return inputs, PagePrediction(width, height, [], [], [], ocr, source, seconds)

    def prepare(self, image: np.ndarray, ocr: PageOCR | None):
        """
        The model inputs of one page: `image` H x W x 3 uint8 in `model_format`, `ocr` its
        OCR (None for an image-only model).
        """
        raise NotImplementedError

    def run_model(self, inputs: list) -> list[dict[str, np.ndarray]]:
        """
        The model on a batch of prepared pages: per page "boxes" (N x 4, x0, y0, x1, y1 in
        page pixels), "scores" (N) and "classes" (N, contiguous class indices), highest
        score first.
        """
        raise NotImplementedError

    def postprocess(self, output: dict[str, np.ndarray], page: PagePrediction) -> PagePrediction:
        """`page` with the detections of `output` (see `run_model`) and its blocks in reading order."""
        page.detections = [
            Detection(self.class_names[c], float(s), tuple(float(v) for v in box), self.category_ids[c])
            for box, s, c in zip(output["boxes"], output["scores"], output["classes"].tolist())
        ]
        page.blocks, page.lines_outside_blocks = ordered_blocks(page.detections, page.ocr)
        return page
