"""Loading detection checkpoints: this project's own, and those of the original
LayoutLMv3 detection code; saving them with the class names of the training data."""

import logging

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog

__all__ = ["VLDetectionCheckpointer", "category_ids", "checkpoint_info", "convert_original_layout"]

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


def category_ids(metadata, num_classes):
    """The COCO category id of each contiguous class of a dataset (its metadata's
    thing_dataset_id_to_contiguous_id), or 1..N when the metadata has no such mapping."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if mapping and sorted(mapping.values()) == list(range(num_classes)):
        return [int(dataset_id) for dataset_id, _ in sorted(mapping.items(), key=lambda item: item[1])]
    return list(range(1, num_classes + 1))


class VLDetectionCheckpointer(DetectionCheckpointer):
    """
    `DetectionCheckpointer` that reads `.pth` files with `torch.load(weights_only=True)`
    and maps original-layout LayoutLMv3 detection checkpoints onto this project's module
    names. Missing and unexpected keys are reported, parameters of another shape are
    skipped and reported (fvcore's loader), never a crash.

    Given `dataset_name` (the training dataset), `save` also writes that dataset's
    "thing_classes" (class names in contiguous order) and "category_ids" (the COCO
    category id of each class) as plain lists, once its metadata has them (when the
    dataset has been loaded). `load` returns them with the checkpoint's other non-model
    entries, so a model can be used without its training data at hand.
    """

    def __init__(self, model, save_dir="", *, dataset_name=None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.dataset_name = dataset_name

    def save(self, name, **kwargs):
        super().save(name, **{**self._dataset_classes(), **kwargs})

    def _dataset_classes(self):
        if self.dataset_name is None:
            return {}
        metadata = MetadataCatalog.get(self.dataset_name)
        classes = metadata.get("thing_classes")
        if classes is None:
            logger.warning(
                f"The class names of {self.dataset_name} are not known yet; the checkpoint goes without them"
            )
            return {}
        return {"thing_classes": [str(c) for c in classes], "category_ids": category_ids(metadata, len(classes))}

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


def checkpoint_info(path) -> dict:
    """What a detection checkpoint holds besides the weights (the class names and ids training
    saved, ...), read as `VLDetectionCheckpointer.load` reads it, without a model; {} for a
    file of weights only (a model-zoo .pkl, a plain state dict)."""
    checkpointer = VLDetectionCheckpointer(torch.nn.Module())
    local = checkpointer.path_manager.get_local_path(path)
    if local.endswith(".pkl"):
        return {}
    loaded = checkpointer._torch_load(local)
    if not isinstance(loaded, dict) or "model" not in loaded:
        return {}
    return {key: value for key, value in loaded.items() if key != "model"}
