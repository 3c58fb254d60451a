"""Training, evaluation and checkpoint loading."""

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
    "VLCOCOEvaluator",
    "VLDetectionCheckpointer",
    "VLTrainer",
    "build_resumable_train_loader",
    "check_datasets",
    "configure_cpu_memory",
    "convert_original_layout",
    "keep_freed_cpu_memory",
    "layoutlmv3_param_groups",
    "transformer_lr_factor",
]
