"""
A trained model as an ONNX file that ONNX Runtime runs without detectron2
(`ditod.runtime.OnnxPredictor`), and what inference needs beside it.

    export_onnx(cfg, "model_final.pth", "exported/")

writes exported/model.onnx (one page: its resized image and tokens in; boxes, scores,
classes out; the page size and the number of tokens dynamic), ditod_export.json
(`ditod.runtime.spec.ExportSpec`: class names and ids, preprocessing constants, the
score threshold), config.yaml (the full config, for reference) and, for a model that
reads text, tokenizer/ (the tokenizer, saved with `save_pretrained`).

The graph is traced (`torch.onnx.export` with the TorchScript exporter, opset 17) on
an example page. The fusion runs its reference implementation (MODEL.TEXT_FUSION.IMPL
"reference": the CPU kernel is no ONNX op), and detectron2's ROI heads, score threshold
and NMS included, trace into ONNX ops (RoiAlign, NonMaxSuppression). Attention is written
as ONNX Runtime's fused MultiHeadAttention (attention="fused", the default, for ONNX
Runtime on CPU or CUDA) or in standard ONNX ops (attention="plain", for any runtime).
quantize="int8" stores the linear layers as ONNX Runtime's int8 products
(`ditod.layers.onnxruntime_quantization`: faster on CPUs with VNNI, outputs close to the
float model's, not equal).
"""

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectron2.modeling import build_model

from ..data.mapper import VLDatasetMapper
from ..data.ocr import PageOCR
from ..layers.onnxruntime_attention import sdpa_as_multihead_attention
from ..layers.onnxruntime_quantization import QUANTIZATION_FORMS, quantize_linear_layers
from ..runtime.spec import MODEL_FILE, OUTPUTS, TOKENIZER_DIR, ExportSpec
from .checkpoint import VLDetectionCheckpointer
from .predictor import model_classes

__all__ = ["ATTENTION_FORMS", "OPSET", "QUANTIZATION_FORMS", "OnePageDetector", "export_onnx"]

logger = logging.getLogger(__name__)

OPSET = 17
ATTENTION_FORMS = ("fused", "plain")


class OnePageDetector(nn.Module):
    """
    A `VLGeneralizedRCNN` as a function of tensors, the form an exporter traces: one page's
    resized image (3, H, W) uint8 and, for a model that reads text, its input_ids (T,)
    and token_boxes (T, 4) in pixels of that image; returns boxes (N, 4) in pixels of
    that image, scores (N) and classes (N), as the model's instances before
    `detector_postprocess`.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image, input_ids=None, token_boxes=None):
        page = {"image": image}
        if input_ids is not None:
            page.update(input_ids=input_ids, token_boxes=token_boxes)
        instances = self.model.inference([page], do_postprocess=False)[0]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


@contextlib.contextmanager
def torchscript_exporter_quiet():
    """Silence the TorchScript exporter's notes that do not concern a ditod export."""
    with warnings.catch_warnings():
        # The tracer's notes on Python values taken from shapes (detectron2's asserts and
        # branches): what the trace keeps is checked against PyTorch by tests/test_export.py.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter (dynamo=False) is deprecated, and says so, in its own
        # code too; it is the one that traces detectron2's data-dependent steps
        # (proposals, NMS) as this module needs. Its note on advanced indexing concerns
        # negative indices, which detectron2's (from nonzero, topk) never are.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", module=r"torch\.onnx")
        yield


def example_page(cfg) -> tuple[np.ndarray, PageOCR]:
    """A page to trace the model on: an image of the test size (noise, so that the model
    finds something on it) and OCR lines of a few words over its height."""
    height = max(cfg.INPUT.MIN_SIZE_TEST, 64)
    width = height * 3 // 4
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    lines = 12
    boxes = [
        [width * 0.1, height * (i + 0.5) / (lines + 1), width * 0.7, height * 0.6 / (lines + 1)] for i in range(lines)
    ]
    words = [f"line {i} of the example page" for i in range(lines)]
    return image, PageOCR(width, height, words, np.asarray(boxes))


def export_onnx(cfg, weights, output_dir, *, classes=None, attention="fused", quantize="none") -> Path:
    """
    Export the model of `cfg` with the weights file `weights` to `output_dir` (created;
    files there are overwritten). An image-only config (MODEL.IMAGE_ONLY) exports a model
    with the image as its only input. Class names and ids: see
    `ditod.engine.predictor.model_classes` (`classes` overrides the names).

    Returns:
        the path of model.onnx.
    """
    if attention not in ATTENTION_FORMS:
        raise ValueError(f"attention must be one of {ATTENTION_FORMS}, got {attention!r}")
    if quantize not in QUANTIZATION_FORMS:
        raise ValueError(f"quantize must be one of {QUANTIZATION_FORMS}, got {quantize!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.TEXT_FUSION.IMPL = "reference"
    cfg.freeze()
    model = build_model(cfg).eval()
    checkpoint = VLDetectionCheckpointer(model).load(weights)
    class_names, category_ids = model_classes(cfg, checkpoint, classes, weights)
    mapper = VLDatasetMapper(cfg, is_train=False)
    reads_text = mapper.ocr_tokenizer is not None

    image, ocr = example_page(cfg)
    inputs = mapper.map_image({"ocr": ocr} if reads_text else {}, image)
    args = (inputs["image"],)
    names = ["image"]
    dynamic = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in OUTPUTS}}
    if reads_text:
        args += (inputs["input_ids"], inputs["token_boxes"])
        names += ["input_ids", "token_boxes"]
        dynamic.update(input_ids={0: "tokens"}, token_boxes={0: "tokens"})
    path = output_dir / MODEL_FILE
    logger.info(f"Tracing the model on a {image.shape[1]}x{image.shape[0]} page and exporting it to {path}")
    transformer = model.backbone.bottom_up.layoutlmv3.config
    num_heads = transformer.num_attention_heads
    fused_attention = (
        sdpa_as_multihead_attention(num_heads, transformer.hidden_size // num_heads, OPSET)
        if attention == "fused"
        else contextlib.nullcontext([])
    )
    with torch.no_grad(), torchscript_exporter_quiet(), fused_attention as fused:
        torch.onnx.export(
            OnePageDetector(model).eval(),
            args,
            str(path),
            input_names=names,
            output_names=OUTPUTS,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    if attention == "fused":
        logger.info(f"{len(fused)} attention layers written as ONNX Runtime's MultiHeadAttention")
        if not fused:
            # MODEL.VIT.ATTENTION "eager" spells attention out without the op that is fused.
            attention = "plain"
    if quantize == "int8" and not quantize_linear_layers(path):
        quantize = "none"

    tokenizer_dir = fingerprint = None
    tokens = {}
    if reads_text:
        tokenizer = mapper.ocr_tokenizer.tokenizer
        tokenizer.save_pretrained(str(output_dir / TOKENIZER_DIR))
        tokenizer_dir, fingerprint = TOKENIZER_DIR, model.backbone.bottom_up.tokenizer_info
        tokens = mapper.ocr_tokenizer.settings()
    heads = cfg.MODEL.ROI_HEADS
    spec = ExportSpec(
        class_names=class_names,
        category_ids=category_ids,
        input_format=cfg.INPUT.FORMAT,
        min_size_test=cfg.INPUT.MIN_SIZE_TEST,
        max_size_test=cfg.INPUT.MAX_SIZE_TEST,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
        pixel_std=list(cfg.MODEL.PIXEL_STD),
        size_divisibility=model.backbone.size_divisibility,
        reads_text=reads_text,
        score_thresh=heads.SCORE_THRESH_TEST,
        nms_thresh=heads.NMS_THRESH_TEST,
        detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        opset=OPSET,
        attention=attention,
        quantization=quantize,
        tokens=tokens,
        tokenizer_dir=tokenizer_dir,
        tokenizer_fingerprint=fingerprint,
    )
    spec.save(output_dir)
    (output_dir / "config.yaml").write_text(cfg.dump(), encoding="utf-8")
    logger.info(
        f"Exported {path} ({path.stat().st_size / 2**20:.1f} MiB) with {', '.join(sorted(p.name for p in output_dir.iterdir()))}"
    )
    return path
