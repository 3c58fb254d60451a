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

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from ..data.mapper import VLDatasetMapper
from ..data.ocr import OCREngine, PageOCR
from .checkpoint import VLDetectionCheckpointer, category_ids
from .prediction import PagePrediction, PagePredictor

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


class VLPredictor(PagePredictor):
    """
    A trained model with its preprocessing and OCR, for pages in memory. Like detectron2's
    `DefaultPredictor`: built from a config (frozen or not; it is copied) and a weights
    file (default cfg.MODEL.WEIGHTS), on cfg.MODEL.DEVICE, keeping the detections that
    score at least cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST.

    The call contract is `PagePredictor`'s: one page (array in `input_format`, PIL image
    or PDF page) or a list of pages run as one batch, with their OCR given, read from a
    PDF's text layer, made on the fly by `ocr_engine`, or none for an image-only model.
    Class names and COCO category ids: see `model_classes` (`classes` overrides the
    names).

    `prepare` and `run_model` are its own; reading pages, OCR and the blocks are
    `PagePredictor`'s, shared with the ONNX Runtime predictor (`ditod.runtime`).
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
        super().__init__(input_format=input_format, ocr_engine=ocr_engine, dpi=dpi)
        self.cfg = cfg.clone()
        self.model_format = self.cfg.INPUT.FORMAT
        weights = weights or cfg.MODEL.WEIGHTS
        self.model = build_model(self.cfg).eval()
        checkpoint = VLDetectionCheckpointer(self.model).load(weights)
        self.class_names, self.category_ids = model_classes(self.cfg, checkpoint, classes, weights)
        self.mapper = VLDatasetMapper(self.cfg, is_train=False)
        self.reads_text = self.mapper.ocr_tokenizer is not None

    def prepare(self, image: np.ndarray, ocr: PageOCR | None) -> dict:
        """The model input dict of one page: `VLDatasetMapper.map_image` (resized once, OCR
        lines tokenized)."""
        return self.mapper.map_image({} if ocr is None else {"ocr": ocr}, image)

    @torch.no_grad()
    def run_model(self, inputs: list[dict]) -> list[dict[str, np.ndarray]]:
        """
        The model on a batch of prepared pages, as `PagePredictor.run_model` says.
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
