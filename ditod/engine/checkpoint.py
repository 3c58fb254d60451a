"""
Loading weights in every form users have, without running any code from the file, and
saving checkpoints with what a model needs besides its weights.

`MODEL.WEIGHTS` (and the tools' --weights) may name:

* a checkpoint of this project (`model_final.pth`);
* a checkpoint of the original LayoutLMv3 detection code (unilm's; its
  `backbone.bottom_up.backbone.*` keys are mapped);
* Hugging Face LayoutLMv3 weights: `pytorch_model.bin` or `model.safetensors`, with or
  without the `layoutlmv3.` prefix, or the directory `save_pretrained` wrote them to. They
  go into the transformer; the pyramid, fusion, FPN and heads start fresh;
* a Detectron2 or Caffe2 model-zoo `.pkl`.

Patch position embeddings of another grid are resized (bicubic) to the model's. The log
counts what was loaded, what is new and what was ignored, naming the first few; a file of
which nothing fits the model stops with an error that says what the file looks like.

No file runs code when read: `.safetensors` files through safetensors, `.pkl` files
through an unpickler that builds only plain containers and numpy arrays, every other file
through `torch.load(weights_only=True)`.
"""

import importlib
import logging
import math
import os
import pickle

import numpy as np
import safetensors.torch
import torch
from torch.nn import functional as F

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.data import MetadataCatalog

from ..modeling.backbone import LayoutLMv3Backbone
from .optimizer import TRANSFORMER_PREFIX

__all__ = [
    "HUGGINGFACE_WEIGHTS",
    "VLDetectionCheckpointer",
    "WeightsError",
    "category_ids",
    "checkpoint_info",
    "convert_huggingface_layout",
    "convert_original_layout",
    "load_model_zoo_pickle",
]

logger = logging.getLogger(__name__)

# The original code kept the transformer under `backbone.bottom_up.backbone.` and
# the four pyramid ops inside its encoder.
_ORIGINAL_PREFIXES = (
    ("backbone.bottom_up.backbone.encoder.fpn", "backbone.bottom_up.fpn"),
    ("backbone.bottom_up.backbone.", "backbone.bottom_up.layoutlmv3."),
)
# Top-level names of a detector's state dict (detectron2's GeneralizedRCNN).
_DETECTOR_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.")
# Top-level names of transformers' LayoutLMv3Model, and the prefix of its task models.
_LAYOUTLMV3_NAMES = ("embeddings.", "encoder.", "patch_embed.", "pos_embed", "cls_token", "LayerNorm.", "norm.")
_HUGGINGFACE_PREFIX = "layoutlmv3."
# The weights files of a save_pretrained directory, in the order transformers prefers them.
HUGGINGFACE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# How many names a log line or an error lists.
_NAMED = 5


class WeightsError(RuntimeError):
    """A weights file that cannot be read or used; the message names the file and the problem."""


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


def convert_huggingface_layout(state_dict):
    """
    The keys of Hugging Face LayoutLMv3 weights (a `LayoutLMv3Model`'s, or a task model's
    with the `layoutlmv3.` prefix) as the detector names the transformer
    (`backbone.bottom_up.layoutlmv3.`); keys of task heads keep their names.

    Returns the renamed dict, or None when `state_dict` does not look like LayoutLMv3
    weights (a detector's keys, or no LayoutLMv3 name).
    """
    if any(key.startswith(_DETECTOR_PREFIXES) for key in state_dict):
        return None
    renamed, found = {}, False
    for key, value in state_dict.items():
        name = key[len(_HUGGINGFACE_PREFIX) :] if key.startswith(_HUGGINGFACE_PREFIX) else key
        if name.startswith(_LAYOUTLMV3_NAMES):
            key, found = TRANSFORMER_PREFIX + name, True
        renamed[key] = value
    return renamed if found else None


# ----------------------------------------------------------------- reading files
class _ModelZooUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers, strings, numbers and numpy arrays only:
    what Detectron2 and Caffe2 model-zoo files hold. Any other global (a function or class
    that unpickling would call) is refused."""

    _NUMPY_CORE = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
    ALLOWED = {
        ("collections", "OrderedDict"): "collections",
        ("numpy", "ndarray"): "numpy",
        ("numpy", "dtype"): "numpy",
        # Arrays and numpy scalars are rebuilt by these (numpy 1 and 2 module names).
        ("numpy.core.multiarray", "_reconstruct"): _NUMPY_CORE,
        ("numpy._core.multiarray", "_reconstruct"): _NUMPY_CORE,
        ("numpy.core.multiarray", "scalar"): _NUMPY_CORE,
        ("numpy._core.multiarray", "scalar"): _NUMPY_CORE,
        # Python 2 pickles store bytes as latin-1 text.
        ("_codecs", "encode"): "_codecs",
    }

    def find_class(self, module, name):
        target = self.ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"it asks to call {module}.{name}, which a model-zoo file never needs (only plain containers "
                "and numpy arrays are read from .pkl files, so that no file can run code)"
            )
        return getattr(importlib.import_module(target), name)


def load_model_zoo_pickle(path):
    """
    A Detectron2 ({"model": ..., "__author__": ...}) or Caffe2 ({"blobs": ...} or a flat
    dict of arrays) model-zoo `.pkl` file, read by `_ModelZooUnpickler`, in detectron2's
    checkpoint form (Caffe2 names matched by detectron2's heuristics).

    Raises:
        WeightsError naming the file: not a pickle, or a pickle that needs anything but
        plain containers and numpy arrays.
    """
    try:
        with open(path, "rb") as f:
            data = _ModelZooUnpickler(f, encoding="latin1").load()
    except Exception as e:
        raise WeightsError(f"{path}: cannot be read as a model-zoo .pkl file ({e})") from e
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: a model-zoo .pkl file holds a dict, this one a {type(data).__name__}")
    if "model" in data and "__author__" in data:
        logger.info(f"Reading a file from '{data['__author__']}'")
        return data
    data = data.get("blobs", data)
    arrays = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": arrays, "__author__": "Caffe2", "matching_heuristics": True}


def weights_file_in(directory):
    """The weights file of a `save_pretrained` directory (`HUGGINGFACE_WEIGHTS`)."""
    for name in HUGGINGFACE_WEIGHTS:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    present = sorted(os.listdir(directory))[:_NAMED]
    raise WeightsError(
        f"{directory}: a directory given as weights must hold {' or '.join(HUGGINGFACE_WEIGHTS)} (as "
        f"save_pretrained writes them; sharded weights are not read), it holds {present or 'nothing'}. "
        "A tokenizer directory belongs in MODEL.VIT.TOKENIZER"
    )


def _first(names):
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > _NAMED else ""
    return ", ".join(names[:_NAMED]) + more


def category_ids(metadata, num_classes):
    """The COCO category id of each contiguous class of a dataset (its metadata's
    thing_dataset_id_to_contiguous_id), or 1..N when the metadata has no such mapping."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id")
    if mapping and sorted(mapping.values()) == list(range(num_classes)):
        return [int(dataset_id) for dataset_id, _ in sorted(mapping.items(), key=lambda item: item[1])]
    return list(range(1, num_classes + 1))


class VLDetectionCheckpointer(DetectionCheckpointer):
    """
    `DetectionCheckpointer` that reads weights in every form of this module's docstring,
    without running code from any file, and reports what it loaded. Parameters of another
    shape are skipped and reported (fvcore's loader).

    Given `dataset_name` (the training dataset), `save` also writes that dataset's
    "thing_classes" (class names in contiguous order) and "category_ids" (the COCO
    category id of each class) as plain lists, once its metadata has them (when the
    dataset has been loaded). For a model that reads text it writes "tokenizer" (the
    `tokenizer_fingerprint` of the model's tokenizer). `load` returns these with the
    checkpoint's other non-model entries, so a model can be used without its training
    data at hand.

    Loading a checkpoint that records another tokenizer than the model's: with
    `training` (the trainer's checkpointer: fine-tuning from it) a warning; otherwise
    (evaluation, inference) a `WeightsError`, unless the model was built with
    MODEL.VIT.ALLOW_OTHER_TOKENIZER (a warning then).
    """

    def __init__(self, model, save_dir="", *, dataset_name=None, training=False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.dataset_name = dataset_name
        self.training = training
        # The file being loaded, and (what it looks like, tensors loaded, model keys not
        # in it) for the log.
        self._source = self._report = None

    def _backbone(self):
        return next((m for m in self.model.modules() if isinstance(m, LayoutLMv3Backbone)), None)

    def save(self, name, **kwargs):
        backbone = self._backbone()
        extras = self._dataset_classes()
        if backbone is not None and backbone.tokenizer_info is not None:
            extras["tokenizer"] = dict(backbone.tokenizer_info)
        super().save(name, **{**extras, **kwargs})

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

    # ------------------------------------------------------------------ loading
    def load(self, path, *args, **kwargs):
        """fvcore's `load` of `path`, a weights file or a `save_pretrained` directory;
        then the check of the checkpoint's tokenizer against the model's."""
        if path and os.path.isdir(path):
            path = weights_file_in(path)
        self._source = path
        try:
            extras = super().load(path, *args, **kwargs)
        finally:
            # detectron2 resets it only when loading succeeds.
            self._parsed_url_during_load = None
        self._check_tokenizer(extras.get("tokenizer"), path)
        return extras

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            return load_model_zoo_pickle(filename)
        if filename.endswith(".safetensors"):
            try:
                return {"model": safetensors.torch.load_file(filename)}
            except Exception as e:
                raise WeightsError(f"{filename}: cannot be read as a safetensors file ({e})") from e
        if filename.endswith(".pyth"):
            # detectron2 reads pycls files with torch.load's defaults, which an environment
            # variable can turn unsafe.
            return {"model": self._torch_load(filename)}
        return super()._load_file(filename)

    def _torch_load(self, f):
        with self.path_manager.open(f, "rb") as file:
            try:
                return torch.load(file, map_location=torch.device("cpu"), weights_only=True)
            except Exception as error:
                raise WeightsError(f"{f}: cannot be read as a PyTorch checkpoint ({error})") from error

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        if not isinstance(state, dict):
            raise WeightsError(f"{self._source}: its 'model' entry is a {type(state).__name__}, not a state dict")
        other = next((key for key, value in state.items() if not isinstance(value, (torch.Tensor, np.ndarray))), None)
        if other is not None:
            raise WeightsError(
                f"{self._source}: not model weights: its entry {other!r} is a {type(state[other]).__name__}, "
                "not a tensor"
            )
        self._convert_ndarray_to_tensor(state)
        if state and all(key.startswith("module.") for key in state):  # saved from a DDP-wrapped model
            state = {key[len("module.") :]: value for key, value in state.items()}
        kind = "a detection checkpoint"
        if checkpoint.pop("matching_heuristics", False):
            # Model-zoo names, matched here (rather than by detectron2's loader) so that the
            # report below sees the names the model has.
            caffe2 = checkpoint.get("__author__") == "Caffe2"
            kind = "a Caffe2 model-zoo file" if caffe2 else "a model-zoo file"
            state = align_and_update_state_dicts(self.model.state_dict(), state, c2_conversion=caffe2)
        else:
            state, count = convert_original_layout(state)
            huggingface = convert_huggingface_layout(state)
            if count:
                kind = "a checkpoint of the original LayoutLMv3 detection code"
            elif huggingface is not None:
                kind, state = "Hugging Face LayoutLMv3 weights", huggingface
            self._resize_patch_position_embeddings(state)
        model_shapes = {key: tuple(value.shape) for key, value in self.model.state_dict().items()}
        file_shapes = {key: tuple(value.shape) for key, value in state.items()}
        loaded = {key for key, shape in file_shapes.items() if model_shapes.get(key) == shape}
        if not loaded:
            raise WeightsError(self._nothing_fits(kind, file_shapes, model_shapes))
        self._report = kind, len(loaded), [key for key in model_shapes if key not in loaded]
        checkpoint["model"] = state
        return super()._load_model(checkpoint)

    def _resize_patch_position_embeddings(self, state):
        """Resize the file's patch position embeddings (bicubic) to the model's grid, as
        the original detection code does, when the two grids differ."""
        key = TRANSFORMER_PREFIX + "pos_embed"
        backbone = self._backbone()
        if backbone is None or not isinstance(state.get(key), torch.Tensor):
            return
        stored = state[key]
        target = backbone.layoutlmv3.pos_embed
        side = math.isqrt(stored.shape[1] - 1)
        if stored.shape == target.shape or stored.shape[-1] != target.shape[-1] or side * side + 1 != stored.shape[1]:
            return
        grid = tuple(backbone.layoutlmv3.patch_embed.patch_shape)
        patches = stored[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(stored.dtype)
        state[key] = torch.cat([stored[:, :1], patches], dim=1)
        logger.info(
            f"Resized the patch position embeddings of {self._source} from {side}x{side} to {grid[0]}x{grid[1]}"
        )

    def _nothing_fits(self, kind, file_shapes, model_shapes):
        message = f"{self._source}: none of its {len(file_shapes)} tensors fits the model. It looks like {kind}"
        shared = [key for key in file_shapes if key in model_shapes]
        if kind == "Hugging Face LayoutLMv3 weights" or (shared and "model-zoo" not in kind):
            mismatched = "; ".join(f"{key} {file_shapes[key]} vs {model_shapes[key]}" for key in shared[:3])
            return (
                f"{message} made for a model of other sizes ({mismatched or 'no names in common'}). The "
                "architecture comes from MODEL.VIT.PRETRAINED (a hub id, or the directory of these weights with "
                "its config.json) or from the MODEL.VIT size keys (NAME, HIDDEN_SIZE, NUM_LAYERS, ...): make them "
                "describe the model these weights belong to"
            )
        return (
            f"{message}, whose names mean nothing to this model (first: {_first(file_shapes) or 'none'}). "
            "MODEL.WEIGHTS takes this project's checkpoints, those of the original LayoutLMv3 detection code, "
            f"or Hugging Face LayoutLMv3 weights ({', '.join(HUGGINGFACE_WEIGHTS)}, or their directory); a "
            "Hugging Face model to build the transformer from belongs in MODEL.VIT.PRETRAINED, a tokenizer in "
            "MODEL.VIT.TOKENIZER"
        )

    def _log_incompatible_keys(self, incompatible):
        """One line: what was loaded, what is new (not in the file) and what was ignored
        (not in the model, or of another shape), as counts with the first names."""
        kind, loaded, new = self._report
        ignored = list(incompatible.unexpected_keys)
        shapes = [f"{key} {tuple(file)} vs {tuple(model)}" for key, file, model in incompatible.incorrect_shapes]
        parts = [f"loaded {loaded} of the model's {loaded + len(new)} tensors"]
        if new:
            parts.append(f"new (not in the file): {len(new)}, {_first(new)}")
        if ignored:
            parts.append(f"ignored (not in the model): {len(ignored)}, {_first(ignored)}")
        if shapes:
            parts.append(f"ignored (another shape, file vs model): {len(shapes)}, {_first(shapes)}")
        level = logging.WARNING if len(parts) > 1 else logging.INFO
        logger.log(level, f"Weights from {self._source} ({kind}): {'; '.join(parts)}")

    def _check_tokenizer(self, recorded, path):
        backbone = self._backbone()
        ours = backbone.tokenizer_info if backbone is not None else None
        if recorded is None or ours is None:
            return
        if (recorded.get("vocab_size"), recorded.get("vocab_sha256")) == (ours["vocab_size"], ours["vocab_sha256"]):
            return
        message = (
            f"{path} was trained with the tokenizer {recorded.get('name')!r} ({recorded.get('vocab_size')} tokens, "
            f"vocabulary {str(recorded.get('vocab_sha256'))[:12]}) but the model reads text with {ours['name']!r} "
            f"({ours['vocab_size']} tokens, vocabulary {ours['vocab_sha256'][:12]}): its token ids stand for "
            "other words"
        )
        if self.training:
            logger.warning(f"{message}; training goes on from these weights")
        elif backbone.allow_other_tokenizer:
            logger.warning(f"{message}; going on (MODEL.VIT.ALLOW_OTHER_TOKENIZER)")
        else:
            raise WeightsError(
                f"{message}. Set MODEL.VIT.TOKENIZER to the tokenizer it was trained with, or "
                "MODEL.VIT.ALLOW_OTHER_TOKENIZER True to use it anyway"
            )


def checkpoint_info(path) -> dict:
    """What a checkpoint holds besides the weights (the class names and ids, the tokenizer
    training saved), read as `VLDetectionCheckpointer.load` reads it, without a model; {} for
    a file of weights only (a model-zoo .pkl, Hugging Face weights, a plain state dict)."""
    if os.path.isdir(path):
        path = weights_file_in(path)
    if path.endswith((".pkl", ".pyth", ".safetensors")):
        return {}
    checkpointer = VLDetectionCheckpointer(torch.nn.Module())
    loaded = checkpointer._torch_load(checkpointer.path_manager.get_local_path(path))
    if not isinstance(loaded, dict) or "model" not in loaded:
        return {}
    return {key: value for key, value in loaded.items() if key != "model"}
