"""Training, optimizer, evaluation, checkpoint loading and inference (the predictor, ordered blocks, collections)."""

from .blocks import Block, Detection, TextLine, blocks_markdown, ordered_blocks
from .checkpoint import (
    VLDetectionCheckpointer,
    WeightsError,
    checkpoint_info,
    convert_huggingface_layout,
    convert_original_layout,
)
from .collection import PageWriter, ResultsLog, predict_pages
from .cpu_memory import configure_cpu_memory, keep_freed_cpu_memory
from .evaluation import VLCOCOEvaluator, write_metrics
from .optimizer import build_optimizer, layoutlmv3_param_groups, transformer_lr_factor
from .predictor import PagePrediction, VLPredictor, model_classes
from .trainer import AccumulatingTrainer, VLTrainer, check_solver

__all__ = [
    "AccumulatingTrainer",
    "Block",
    "Detection",
    "PagePrediction",
    "PageWriter",
    "ResultsLog",
    "TextLine",
    "VLCOCOEvaluator",
    "VLDetectionCheckpointer",
    "VLPredictor",
    "VLTrainer",
    "WeightsError",
    "blocks_markdown",
    "build_optimizer",
    "check_solver",
    "checkpoint_info",
    "configure_cpu_memory",
    "convert_huggingface_layout",
    "convert_original_layout",
    "keep_freed_cpu_memory",
    "layoutlmv3_param_groups",
    "model_classes",
    "ordered_blocks",
    "predict_pages",
    "transformer_lr_factor",
    "write_metrics",
]
