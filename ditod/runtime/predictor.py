"""
`OnnxPredictor`: an exported model (`tools/export.py`) run by ONNX Runtime, with the
call contract of `ditod.engine.predictor.VLPredictor`, and no detectron2.

    predictor = OnnxPredictor("exported/")
    result = predictor(cv2.imread("page.png"))
    print(result.to_markdown())
"""

import logging
from pathlib import Path

import numpy as np

from ..data.ocr import OCREngine, PageOCR, fit_to_image
from ..data.tokens import OCRTokenizer
from ..engine.prediction import PagePredictor
from ..layoutlmv3 import load_tokenizer, tokenizer_fingerprint
from .resize import ShortestEdgeResize
from .spec import MODEL_FILE, OUTPUTS, ExportSpec

__all__ = ["OnnxPredictor", "inference_session", "to_page_pixels"]

logger = logging.getLogger(__name__)


def to_page_pixels(boxes, scores, classes, image_size, page_size) -> dict[str, np.ndarray]:
    """
    Detections in pixels of the resized image (`image_size` (height, width)) in pixels of
    the page (`page_size`), as detectron2's `detector_postprocess`: boxes scaled, clipped
    to the page, and those left without area dropped.
    """
    (height, width), (page_height, page_width) = image_size, page_size
    boxes = boxes * np.array([page_width / width, page_height / height] * 2, dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, page_width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, page_height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]}


def inference_session(path, threads: int | None = None):
    """An ONNX Runtime session of the file `path` on CUDA when the onnxruntime-gpu package
    provides it, else on the CPU with `threads` intra-op threads (None: one per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    available = onnxruntime.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return onnxruntime.InferenceSession(str(path), options, providers=providers)


class OnnxPredictor(PagePredictor):
    """
    A model exported by `ditod.engine.export.export_onnx` (the folder `model_dir`: model.onnx,
    ditod_export.json, tokenizer/), run by ONNX Runtime on the CPU (or CUDA when the
    onnxruntime-gpu package provides it). Importing and running it imports no detectron2.

    The call contract is `VLPredictor`'s (`ditod.engine.prediction.PagePredictor`): one
    page (an array in `input_format`, a PIL image or a ``pymupdf.Page`` rendered at
    `dpi`) or a list of pages, with their OCR given, read from a PDF's text layer, made
    on the fly by `ocr_engine`, or none for an image-only model; `PagePrediction`s out.
    Pages are preprocessed as the test loader does (the same resize, the same tokens),
    so the detections are those of the PyTorch model, within float rounding.

    The exported graph takes one page: a list of pages is run page by page in ONNX
    Runtime (the seconds of "model" are the batch's shared out over its pages).

    Args:
        classes: class names instead of the exported ones (as many).
        threads: ONNX Runtime's intra-op threads (None: its default, one per core).
        score_thresh: keep the detections scoring at least this; None: the export's
            MODEL.ROI_HEADS.SCORE_THRESH_TEST (the graph's threshold, below which
            nothing comes out, so a lower one is an error).
    """

    def __init__(
        self,
        model_dir,
        *,
        input_format: str = "BGR",
        classes=None,
        ocr_engine: str | OCREngine = "rapidocr",
        dpi: float = 144,
        threads: int | None = None,
        score_thresh: float | None = None,
    ):
        super().__init__(input_format=input_format, ocr_engine=ocr_engine, dpi=dpi)
        self.model_dir = Path(model_dir)
        self.spec = spec = ExportSpec.load(self.model_dir)
        if classes is not None and len(classes) != len(spec.class_names):
            raise ValueError(f"{len(classes)} class names for a model of {len(spec.class_names)} classes")
        if score_thresh is not None and score_thresh < spec.score_thresh:
            raise ValueError(
                f"score threshold {score_thresh} is below the exported model's {spec.score_thresh}, "
                "under which it returns nothing: export again with a lower MODEL.ROI_HEADS.SCORE_THRESH_TEST"
            )
        self.score_thresh = spec.score_thresh if score_thresh is None else score_thresh
        self.class_names = [str(c) for c in (classes or spec.class_names)]
        self.category_ids = list(spec.category_ids)
        self.model_format = spec.input_format
        self.reads_text = spec.reads_text
        self.ocr_tokenizer = None
        if spec.reads_text:
            tokenizer_dir = self.model_dir / spec.tokenizer_dir
            tokenizer = load_tokenizer(str(tokenizer_dir))
            if not spec.has_vocabulary_of(tokenizer_fingerprint(tokenizer)):
                raise ValueError(f"{tokenizer_dir}: not the tokenizer the model was exported with (another vocabulary)")
            self.ocr_tokenizer = OCRTokenizer(tokenizer, **spec.tokens)
        self.session = inference_session(self.model_dir / MODEL_FILE, threads)
        logger.info(
            f"Loaded {self.model_dir / MODEL_FILE} ({spec.attention} attention, quantization {spec.quantization}) "
            f"on {self.session.get_providers()[0]}"
        )

    def prepare(self, image: np.ndarray, ocr: PageOCR | None) -> dict:
        """The graph's inputs of one page (resized as `VLDatasetMapper.map_image` resizes it,
        its OCR lines tokenized the same way) and the page's size."""
        height, width = image.shape[:2]
        resize = ShortestEdgeResize.for_image(height, width, self.spec.min_size_test, self.spec.max_size_test)
        resized = resize.apply_image(image)
        feeds = {"image": np.ascontiguousarray(resized.transpose(2, 0, 1))}
        if self.reads_text:
            page = fit_to_image(ocr, (width, height), "the page")
            input_ids, token_boxes = self.ocr_tokenizer.encode_page(page, resize, resized.shape[:2])
            feeds.update(input_ids=input_ids.numpy(), token_boxes=token_boxes.numpy())
        return {"feeds": feeds, "height": height, "width": width}

    def run_model(self, inputs: list[dict]) -> list[dict[str, np.ndarray]]:
        """The graph on each prepared page, one after the other; boxes in page pixels."""
        outputs = []
        for page in inputs:
            boxes, scores, classes = self.session.run(OUTPUTS, page["feeds"])
            keep = scores > self.score_thresh  # as detectron2 keeps them
            image_size = page["feeds"]["image"].shape[1:]
            outputs.append(
                to_page_pixels(boxes[keep], scores[keep], classes[keep], image_size, (page["height"], page["width"]))
            )
        return outputs
