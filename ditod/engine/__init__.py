"""Training, optimizer, evaluation and checkpoint loading."""

from .checkpoint import VLDetectionCheckpointer, convert_original_layout
from .cpu_memory import configure_cpu_memory, keep_freed_cpu_memory
from .evaluation import VLCOCOEvaluator, write_bbox_metrics
from .optimizer import build_optimizer, layoutlmv3_param_groups, transformer_lr_factor
from .trainer import AccumulatingTrainer, VLTrainer, check_solver

__all__ = [
    "AccumulatingTrainer",
    "VLCOCOEvaluator",
    "VLDetectionCheckpointer",
    "VLTrainer",
    "build_optimizer",
    "check_solver",
    "configure_cpu_memory",
    "convert_original_layout",
    "keep_freed_cpu_memory",
    "layoutlmv3_param_groups",
    "transformer_lr_factor",
    "write_bbox_metrics",
]
