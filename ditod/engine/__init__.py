"""Training, evaluation and checkpoint loading."""

from .blocks import Block, Detection, TextLine, blocks_markdown, ordered_blocks
from .checkpoint import VLDetectionCheckpointer, convert_original_layout
from .cpu_memory import configure_cpu_memory, keep_freed_cpu_memory
from .evaluation import VLCOCOEvaluator
from .trainer import (
    AccumulatingTrainer,
    VLTrainer,
    build_resumable_train_loader,
    check_datasets,
    layoutlmv3_param_groups,
    transformer_lr_factor,
)

__all__ = [
    "AccumulatingTrainer",
    "Block",
    "Detection",
    "TextLine",
    "VLCOCOEvaluator",
    "VLDetectionCheckpointer",
    "VLTrainer",
    "blocks_markdown",
    "build_resumable_train_loader",
    "check_datasets",
    "configure_cpu_memory",
    "convert_original_layout",
    "keep_freed_cpu_memory",
    "layoutlmv3_param_groups",
    "ordered_blocks",
    "transformer_lr_factor",
]
