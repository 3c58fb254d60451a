"""Training, optimizer, evaluation and checkpoint loading."""

from .checkpoint import VLDetectionCheckpointer, WeightsError, convert_huggingface_layout, convert_original_layout
from .cpu_memory import configure_cpu_memory, keep_freed_cpu_memory
from .evaluation import VLCOCOEvaluator, write_metrics
from .optimizer import build_optimizer, layoutlmv3_param_groups, transformer_lr_factor
from .trainer import AccumulatingTrainer, VLTrainer

__all__ = [
    "AccumulatingTrainer",
    "VLCOCOEvaluator",
    "VLDetectionCheckpointer",
    "VLTrainer",
    "WeightsError",
    "build_optimizer",
    "configure_cpu_memory",
    "convert_huggingface_layout",
    "convert_original_layout",
    "keep_freed_cpu_memory",
    "layoutlmv3_param_groups",
    "transformer_lr_factor",
    "write_metrics",
]
