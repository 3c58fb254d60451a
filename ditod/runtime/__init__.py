"""Inference on an exported model (`tools/export.py`) with ONNX Runtime. No detectron2 is
imported on this path: ONNX Runtime, numpy, PIL and the tokenizer only."""

from .predictor import OnnxPredictor
from .spec import ExportSpec

__all__ = ["ExportSpec", "OnnxPredictor"]
