"""Loading detection checkpoints: this project's own, and those of the original
LayoutLMv3 detection code."""
import logging

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["VLDetectionCheckpointer", "convert_original_layout"]

logger = logging.getLogger(__name__)

# The original code kept the transformer under `backbone.bottom_up.backbone.` and
# the four pyramid ops inside its encoder.
_ORIGINAL_PREFIXES = (
    ("backbone.bottom_up.backbone.encoder.fpn", "backbone.bottom_up.fpn"),
    ("backbone.bottom_up.backbone.", "backbone.bottom_up.layoutlmv3."),
)


def convert_original_layout(state_dict):
    """Rename the keys of an original-layout LayoutLMv3 detection checkpoint to ours.

    Returns the renamed dict and the number of keys renamed (0 for our own layout).
    """
    renamed, count = {}, 0
    for key, value in state_dict.items():
        for old, new in _ORIGINAL_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old) :]
                count += 1
                break
        renamed[key] = value
    return renamed, count


class VLDetectionCheckpointer(DetectionCheckpointer):
    """
    `DetectionCheckpointer` that reads `.pth` files with `torch.load(weights_only=True)`
    and maps original-layout LayoutLMv3 detection checkpoints onto this project's module
    names. Missing and unexpected keys are reported, parameters of another shape are
    skipped and reported (fvcore's loader), never a crash.
    """

    def _torch_load(self, f):
        with self.path_manager.open(f, "rb") as file:
            try:
                return torch.load(file, map_location=torch.device("cpu"), weights_only=True)
            except Exception as error:
                raise RuntimeError(f"{f}: cannot be read as a PyTorch checkpoint ({error})") from error

    def _load_model(self, checkpoint):
        checkpoint["model"], count = convert_original_layout(checkpoint["model"])
        if count:
            logger.info(f"Mapped {count} keys of an original-layout LayoutLMv3 detection checkpoint")
        return super()._load_model(checkpoint)
