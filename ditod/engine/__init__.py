"""Training, evaluation and checkpoint loading."""
from .checkpoint import VLDetectionCheckpointer, convert_original_layout
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
    "VLDetectionCheckpointer",
    "VLTrainer",
    "build_resumable_train_loader",
    "check_datasets",
    "convert_original_layout",
    "layoutlmv3_param_groups",
    "transformer_lr_factor",
]
