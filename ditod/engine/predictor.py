"""Layout detection in Python: a trained model on page images and PDF pages, shaped like
detectron2's `DefaultPredictor`.

    predictor = VLPredictor(cfg, "model_final.pth")
    result = predictor(cv2.imread("page.png"))          # BGR, as DefaultPredictor takes
    print(result.to_markdown())

A page goes through the preprocessing of the test data loader (`VLDatasetMapper`: the
same resize, the same tokenization), so the detections are those of the evaluation.
"""

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ..data.mapper import VLDatasetMapper
from ..data.ocr import OCREngine, PageOCR, read_pdf_page
from ..data.pages import OnTheFlyOCR
from .blocks import Block, Detection, TextLine, blocks_markdown, ordered_blocks
from .checkpoint import VLDetectionCheckpointer, category_ids

__all__ = ["PagePrediction", "VLPredictor", "model_classes"]

logger = logging.getLogger(__name__)


def _dataset_classes(dataset):
    """The class names of a registered dataset, reading its COCO json if need be (or None)."""
    if not dataset:
        return None
    metadata = MetadataCatalog.get(dataset)
    if (
        metadata.get("thing_classes") is None
        and dataset in DatasetCatalog
        and os.path.isfile(metadata.get("json_file", ""))
    ):
        DatasetCatalog.get(dataset)  # loading a COCO json sets its class names
    return metadata.get("thing_classes")


def model_classes(cfg, checkpoint: dict, classes=None, weights="") -> tuple[list[str], list[int]]:
    """
    The class names of a model and the COCO category id of each (contiguous) class.

    Names: `classes`, else those training saved in the checkpoint, else those of the
    config's first DATASETS.TEST (or TRAIN) dataset. Ids: the checkpoint's, else the
    dataset's own when known, else 1..N.

    Args:
        checkpoint: what the weights file holds besides the weights (`VLDetectionCheckpointer.load`).
        weights: the weights file, named in messages.

    Raises:
        ValueError: no names are known, or not MODEL.ROI_HEADS.NUM_CLASSES of them.
    """
    dataset = (list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN) + [None])[0]
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    hint = ""
    if classes:
        source = "the classes given"
    elif checkpoint.get("thing_classes"):
        classes, source = checkpoint["thing_classes"], f"the checkpoint {weights}"
        # The model was trained with these classes: the config must say as many.
        hint = f" (MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}?)"
    else:
        classes, source = _dataset_classes(dataset), f"dataset {dataset}"
        if classes is None:
            raise ValueError(
                f"the checkpoint {weights} has no class names and those of {dataset or 'DATASETS.TEST'} "
                "are unknown (its json is not here); give them"
            )
    if len(classes) != num_classes:
        raise ValueError(
            f"{len(classes)} class names from {source} for a model of "
            f"MODEL.ROI_HEADS.NUM_CLASSES {num_classes}{hint}: {list(classes)}"
        )
    logger.info(f"Class names from {source}: {list(classes)}")
    ids = checkpoint.get("category_ids")
    if not ids or len(ids) != num_classes:
        ids = category_ids(MetadataCatalog.get(dataset), num_classes) if dataset else list(range(1, num_classes + 1))
    return [str(c) for c in classes], [int(i) for i in ids]


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


class VLPredictor:
    """
    A trained model with its preprocessing and OCR, for pages in memory. Like detectron2's
    `DefaultPredictor`: built from a config (frozen or not; it is copied) and a weights
    file (default cfg.MODEL.WEIGHTS), on cfg.MODEL.DEVICE, keeping the detections that
    score at least cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST.

    `predictor(page)` takes one page and returns its `PagePrediction`;
    `predictor([page, ...])` runs the pages as one batch and returns a list. A page is:

    * an image array H x W x 3 uint8 in `input_format` ("BGR" by default, what
      `cv2.imread` and `DefaultPredictor` take; "RGB" for arrays from PIL or
      `detectron2.data.detection_utils.read_image(..., "RGB")`);
    * a PIL image (any mode, converted to RGB);
    * a PDF page (``pymupdf.Page``), rendered at `dpi`, its text layer as its OCR.

    `ocr` gives a page's `PageOCR` (a list, one entry or None per page, for a batch).
    A model that reads text OCRs the pages that have none (a PDF page without a text
    layer included) with `ocr_engine`, built on first use; an image-only model reads no
    OCR. Class names and COCO category ids: see `model_classes` (`classes` overrides the
    names).

    The model runs in `run_model`; `preprocess` and `postprocess` use no model object, so
    another backend (e.g. an exported model) can replace `run_model` alone.
    """

    def __init__(
        self,
        cfg,
        weights=None,
        *,
        input_format: str = "BGR",
        classes=None,
        ocr_engine: str | OCREngine = "rapidocr",
        dpi: float = 144,
    ):
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"input_format must be 'RGB' or 'BGR', got {input_format!r}")
        self.cfg = cfg.clone()
        self.input_format = input_format
        self.dpi = dpi
        weights = weights or cfg.MODEL.WEIGHTS
        self.model = build_model(self.cfg).eval()
        checkpoint = VLDetectionCheckpointer(self.model).load(weights)
        self.class_names, self.category_ids = model_classes(self.cfg, checkpoint, classes, weights)
        self.mapper = VLDatasetMapper(self.cfg, is_train=False)
        self.reads_text = self.mapper.ocr_tokenizer is not None
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
        The model input dict of one page (`VLDatasetMapper.map_image`: resized once, OCR
        lines tokenized), and the `PagePrediction` to fill in (size, OCR, seconds).
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
        # A view, not a copy, when the formats differ: the mapper's resize makes the one copy.
        model_image = image if image_format == self.cfg.INPUT.FORMAT else image[:, :, ::-1]
        inputs = self.mapper.map_image({} if ocr is None else {"ocr": ocr}, model_image)
        seconds["preprocess"] = time.perf_counter() - start
        height, width = image.shape[:2]
        return inputs, PagePrediction(width, height, [], [], [], ocr, source, seconds)

    @torch.no_grad()
    def run_model(self, inputs: list[dict]) -> list[dict[str, np.ndarray]]:
        """
        The model on a batch of preprocessed pages: per page "boxes" (N x 4, x0, y0, x1,
        y1 in page pixels), "scores" (N) and "classes" (N, contiguous class indices),
        highest score first.
        """
        outputs = []
        for output in self.model(inputs):
            instances = output["instances"].to("cpu")
            outputs.append(
                {
                    "boxes": instances.pred_boxes.tensor.numpy(),
                    "scores": instances.scores.numpy(),
                    "classes": instances.pred_classes.numpy(),
                }
            )
        return outputs

    def postprocess(self, output: dict[str, np.ndarray], page: PagePrediction) -> PagePrediction:
        """`page` with the detections of `output` (see `run_model`) and its blocks in reading order."""
        page.detections = [
            Detection(self.class_names[c], float(s), tuple(float(v) for v in box), self.category_ids[c])
            for box, s, c in zip(output["boxes"], output["scores"], output["classes"].tolist())
        ]
        page.blocks, page.lines_outside_blocks = ordered_blocks(page.detections, page.ocr)
        return page
