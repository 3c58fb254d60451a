"""
The config keys that ditod adds to detectron2's defaults, and the upgrade of config files
written with older key names.

ditod's configs are detectron2 configs of VERSION 3: importing this module registers
`ConverterV3` with detectron2's versioned-config machinery (detectron2/config/compat.py)
and makes 3 the latest version. A file of VERSION 2 (this project's configs before the
renames below, and the configs of unilm's LayoutLMv3 detection code) is upgraded when it
is merged, by `cfg.merge_from_file` as by `load_config`; `load_config` also names each
old key the file uses and its new name.

Every key of unilm's `add_vit_config` is accepted, so that its YAML files load as they
are: most have a meaning here (MODEL.VIT.DROP_PATH, MODEL.VIT.IMG_SIZE as INPUT_SIZE,
MODEL.VIT.POS_TYPE, PUBLAYNET_DATA_DIR_TRAIN/TEST, CACHE_DIR, ...); `IGNORED_KEYS` lists
those that have none, which `load_config` reports when a config sets them.
"""

import logging
import os
import tempfile

import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import compat, get_cfg
from detectron2.config.defaults import _C as DETECTRON2_DEFAULTS

# What configs name by string, registered with the config: the backbone and the
# meta-architecture, and the built-in dataset names.
from . import modeling  # noqa: F401
from .data import datasets  # noqa: F401

__all__ = ["CONFIG_VERSION", "IGNORED_KEYS", "ConverterV3", "add_vit_config", "load_config"]

logger = logging.getLogger(__name__)

CONFIG_VERSION = 3

# Keys of unilm's LayoutLMv3 detection configs that mean nothing here, with the reason.
IGNORED_KEYS = {
    "MODEL.VIT.MODEL_KWARGS": "keyword arguments of unilm's BEiT/DiT backbones; the LayoutLMv3 architecture "
    "comes from MODEL.VIT.PRETRAINED or the MODEL.VIT size keys",
    "MODEL.CONFIG_PATH": "the LayoutLMv3 architecture comes from MODEL.VIT.PRETRAINED (a hub id or a "
    "save_pretrained directory) or the MODEL.VIT size keys",
    "ICDAR_DATA_DIR_TRAIN": "register ICDAR 2019 with --dataset NAME=JSON:IMAGE_ROOT or DATASETS.REGISTER",
    "ICDAR_DATA_DIR_TEST": "register ICDAR 2019 with --dataset NAME=JSON:IMAGE_ROOT or DATASETS.REGISTER",
}
# (key, value) pairs already reported as ignored in this process (tools load their config twice).
_reported_ignored = set()


class ConverterV3:
    """
    The renames of config VERSION 3, in detectron2's converter protocol (upgrade and
    downgrade a whole config in place). Keys a config does not have are left alone, so
    detectron2's own configs pass through unchanged.
    """

    # (old name, new name)
    RENAMES = [
        ("INPUT.OCR.MAX_TOKENS_PER_WORD", "INPUT.OCR.MAX_TOKENS_PER_LINE"),
        ("AUG.DETR", "INPUT.CROP.DETR_STYLE"),
        ("CPU_KEEP_FREED_MEMORY", "MODEL.CPU_KEEP_FREED_MEMORY"),
    ]

    # unilm's [height, width] of the pre-training image, a single size here (LayoutLMv3
    # pre-trains on square pages).
    IMAGE_SIZE = ("MODEL.VIT.IMG_SIZE", "MODEL.VIT.INPUT_SIZE")

    @classmethod
    def renamed_keys(cls):
        """Every (old name, new name) of VERSION 3."""
        return [*cls.RENAMES, cls.IMAGE_SIZE]

    @classmethod
    def upgrade(cls, cfg):
        for old, new in cls.RENAMES:
            _move(cfg, old, new)
        vit = cfg.get("MODEL", {}).get("VIT", {})
        size = vit.pop("IMG_SIZE", [])
        if size:
            sizes = set(size) if isinstance(size, (list, tuple)) else {size}
            if len(sizes) != 1:
                raise ValueError(
                    f"MODEL.VIT.IMG_SIZE {size}: the pre-training image of LayoutLMv3 is square; "
                    "give its size as MODEL.VIT.INPUT_SIZE"
                )
            vit["INPUT_SIZE"] = int(sizes.pop())

    @classmethod
    def downgrade(cls, cfg):
        for old, new in reversed(cls.RENAMES):
            _move(cfg, new, old)
        # INPUT_SIZE stays (this project's VERSION 2 had it) and IMG_SIZE is empty: a file of
        # VERSION 2 may set either, and `upgrade` takes IMG_SIZE when it was set.
        vit = cfg.get("MODEL", {}).get("VIT")
        if vit is not None and "INPUT_SIZE" in vit:
            vit["IMG_SIZE"] = []


def _move(cfg, source, target):
    """Move the value of the dotted key `source` to `target` when `cfg` has it; a node
    that `source` leaves empty goes too."""
    *source_path, source_key = source.split(".")
    nodes = [cfg]
    for key in source_path:
        if not isinstance(nodes[-1], dict) or key not in nodes[-1]:
            return
        nodes.append(nodes[-1][key])
    if not isinstance(nodes[-1], dict) or source_key not in nodes[-1]:
        return
    value = nodes[-1].pop(source_key)
    for parent, key, node in reversed(list(zip(nodes, source_path, nodes[1:]))):
        if not node:
            del parent[key]
    *target_path, target_key = target.split(".")
    node = cfg
    for key in target_path:
        node = node.setdefault(key, CN())
    node[target_key] = value


def _register_version():
    # A converter of this module from an earlier import of it (a reload) is ours too.
    registered = getattr(compat, f"ConverterV{CONFIG_VERSION}", ConverterV3)
    ours = registered.__module__ == __name__ and registered.__qualname__ == ConverterV3.__qualname__
    if not ours or DETECTRON2_DEFAULTS.VERSION not in (CONFIG_VERSION - 1, CONFIG_VERSION):
        raise ImportError(
            f"this detectron2 has config version {DETECTRON2_DEFAULTS.VERSION} and its own converter to "
            f"version {CONFIG_VERSION}; ditod's config upgrade needs detectron2's config version "
            f"{CONFIG_VERSION - 1}"
        )
    # upgrade_config looks converters up by name in compat's globals.
    compat.ConverterV3 = ConverterV3
    DETECTRON2_DEFAULTS.VERSION = CONFIG_VERSION


_register_version()


def _notice_old_keys(config_file, loaded):
    """One line per old key name that `config_file` (`loaded`: its YAML with its _BASE_
    files) uses."""
    if loaded.get("VERSION", CONFIG_VERSION) >= CONFIG_VERSION:
        return
    for old, new in ConverterV3.renamed_keys():
        node = loaded
        for key in old.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            logger.warning(f"{config_file}: config key {old} is now {new} (upgraded from VERSION {loaded['VERSION']})")


def _drop_mapping_model_kwargs(config_file, loaded) -> bool:
    """
    Remove MODEL.VIT.MODEL_KWARGS from `loaded` (`config_file`'s YAML with its _BASE_
    files) where yacs would read it as a mapping: the key is a string and ignored here
    (IGNORED_KEYS), but configs dumped by ditod before 2026-12-07 hold its old default
    '{}', and a hand-written one may hold a dict literal; yacs evaluates either into a
    dict and refuses it for a string key. A non-empty one is reported as ignored, once
    per process.
    Returns whether it was removed.
    """
    vit = loaded.get("MODEL", {}).get("VIT", {})
    if not isinstance(vit, dict) or "MODEL_KWARGS" not in vit:
        return False
    value = vit["MODEL_KWARGS"]
    if isinstance(CN._decode_cfg_value(value), str):
        return False
    del vit["MODEL_KWARGS"]
    if value not in ("{}", {}) and ("MODEL.VIT.MODEL_KWARGS", repr(value)) not in _reported_ignored:
        _reported_ignored.add(("MODEL.VIT.MODEL_KWARGS", repr(value)))
        logger.warning(
            f"{config_file}: config key MODEL.VIT.MODEL_KWARGS ({value!r}) is ignored: {IGNORED_KEYS['MODEL.VIT.MODEL_KWARGS']}"
        )
    return True


def _merge_file(cfg, config_file):
    """`cfg.merge_from_file(config_file)`, naming old keys, and reading a mapping
    MODEL.VIT.MODEL_KWARGS as absent (`_drop_mapping_model_kwargs`)."""
    loaded = CN.load_yaml_with_base(config_file, allow_unsafe=True)
    _notice_old_keys(config_file, loaded)
    if not _drop_mapping_model_kwargs(config_file, loaded):
        cfg.merge_from_file(config_file)
        return
    # The file without the key, its bases already merged in, through the same merge (and
    # version upgrade) as any file.
    with tempfile.TemporaryDirectory() as scratch:
        resolved = os.path.join(scratch, os.path.basename(config_file))
        with open(resolved, "w", encoding="utf-8") as f:
            yaml.safe_dump(loaded, f)
        cfg.merge_from_file(resolved)


def load_config(config_file, opts=()):
    """
    detectron2's default config with ditod's keys, merged from `config_file` (upgraded
    from an older VERSION, see the module docstring) and the KEY VALUE overrides `opts`
    (not frozen).

    Raises:
        ValueError naming the file or the override: a missing or unparsable file, an
        unknown key, a value of the wrong type, an odd override list (an option such as
        --resume typed after the overrides lands there).
    """
    cfg = get_cfg()
    add_vit_config(cfg)
    if not os.path.isfile(config_file):
        raise ValueError(f"config file {config_file} does not exist")
    try:
        _merge_file(cfg, config_file)
    except (AssertionError, KeyError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"config file {config_file}: {_reason(e)}{_renamed_hint(e)}") from e
    opts = list(opts)
    options = [text for text in opts if isinstance(text, str) and text.startswith("--")]
    if options:
        raise ValueError(f"{options[0]} comes after the KEY VALUE config overrides: put options before them")
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number of words: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (AssertionError, KeyError, ValueError) as e:
        raise ValueError(f"config override: {_reason(e)}{_renamed_hint(e)}") from e
    _report_ignored_keys(cfg)
    return cfg


def _lookup(cfg, dotted):
    for key in dotted.split("."):
        cfg = cfg[key]
    return cfg


def _report_ignored_keys(cfg):
    """One warning per key of `IGNORED_KEYS` that `cfg` sets, once per process."""
    defaults = get_cfg()
    add_vit_config(defaults)
    for key, reason in IGNORED_KEYS.items():
        value = _lookup(cfg, key)
        if value != _lookup(defaults, key) and (key, repr(value)) not in _reported_ignored:
            _reported_ignored.add((key, repr(value)))
            logger.warning(f"config key {key} ({value!r}) is ignored: {reason}")


def _reason(error):
    # yacs reports unknown keys as AssertionError or KeyError; str(KeyError) adds quotes.
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


def _renamed_hint(error):
    """Where an unknown key is an old name (a file that declares VERSION 3, or none, or an
    override), its new name."""
    reason = _reason(error)
    for old, new in ConverterV3.renamed_keys():
        if reason.endswith(f"key: {old}"):
            return f" ({old} is now {new}; a file of VERSION 2 is upgraded)"
    return ""


def add_vit_config(cfg):
    """Add every ditod key, with its default, to a detectron2 config (in place)."""
    _C = cfg
    _C.VERSION = CONFIG_VERSION

    # ------------------------------------------------------------------ backbone
    _C.MODEL.VIT = CN()
    # Size preset when no PRETRAINED checkpoint is given: "layoutlmv3_base",
    # "layoutlmv3_large" (24 layers: tap OUT_FEATURES layer7/11/15/23, as the original
    # large recipe does), or "layoutlmv3_custom" to use the size keys below.
    _C.MODEL.VIT.NAME = "layoutlmv3_base"
    # Hugging Face hub id (microsoft/layoutlmv3-base, microsoft/layoutlmv3-base-chinese)
    # or a local directory saved with save_pretrained. Empty: build from the size keys,
    # randomly initialised (tests, the synthetic demo).
    _C.MODEL.VIT.PRETRAINED = ""
    # Tokenizer (hub id or directory) for the OCR words; empty means PRETRAINED.
    _C.MODEL.VIT.TOKENIZER = ""
    # Size keys, used with NAME "layoutlmv3_custom". HIDDEN_SIZE must be even (LayoutLMv3
    # splits it into x/y/x/y/h/w layout embeddings) and divisible by NUM_HEADS.
    _C.MODEL.VIT.HIDDEN_SIZE = 768
    _C.MODEL.VIT.NUM_LAYERS = 12
    _C.MODEL.VIT.NUM_HEADS = 12
    _C.MODEL.VIT.INTERMEDIATE_SIZE = 3072
    # Vocabulary of a model built from size keys; replaced by the tokenizer's size
    # when a tokenizer is configured.
    _C.MODEL.VIT.VOCAB_SIZE = 50265
    # Text positions of a model built from size keys (RoBERTa convention: tokens + 2 + 2).
    _C.MODEL.VIT.MAX_POSITION_EMBEDDINGS = 514
    _C.MODEL.VIT.PATCH_SIZE = 16
    # Pre-training image size: the grid of the stored patch position embeddings,
    # which are interpolated (bicubic) to each batch's grid at run time (unilm's configs
    # call it MODEL.VIT.IMG_SIZE, [224, 224]).
    _C.MODEL.VIT.INPUT_SIZE = 224
    # Patch position embeddings: "abs", LayoutLMv3's absolute ones (unilm's configs name
    # the kind; the relative biases of its BEiT/DiT backbones are not available here).
    _C.MODEL.VIT.POS_TYPE = "abs"
    _C.MODEL.VIT.HIDDEN_DROPOUT = 0.0
    _C.MODEL.VIT.ATTENTION_DROPOUT = 0.0
    # Stochastic depth: the largest rate at which a transformer layer's attention and MLP
    # branches are dropped per page in training, rising linearly from 0 at the first
    # layer (BEiT/DiT); 0 = off. The published LayoutLMv3 recipe sets 0.1.
    _C.MODEL.VIT.DROP_PATH = 0.0
    # Transformer layers tapped for the pyramid (0-based, hidden states after the layer),
    # in order of strides 4, 8, 16, 32.
    _C.MODEL.VIT.OUT_FEATURES = ["layer3", "layer5", "layer7", "layer11"]
    # Norm between the two transposed convolutions of the stride-4 branch
    # (detectron2 get_norm name; naiveSyncBN also works with GLOO on CPU).
    _C.MODEL.VIT.PYRAMID_NORM = "naiveSyncBN"
    # Recompute transformer layers in backward to save activation memory.
    _C.MODEL.VIT.GRAD_CHECKPOINT = False
    # "sdpa": torch scaled_dot_product_attention (fused kernels); "eager": explicit softmax.
    _C.MODEL.VIT.ATTENTION = "sdpa"
    # Checkpoints record the tokenizer their model was trained with. Loading one into a
    # model that reads text with another tokenizer warns in training (fine-tuning from
    # it) and stops evaluation and inference, unless this is True (then it warns too).
    _C.MODEL.VIT.ALLOW_OTHER_TOKENIZER = False
    # Read from unilm's configs and ignored (IGNORED_KEYS).
    # Empty, not "{}": yacs reads a string that looks like a literal back as that
    # literal, so a dumped config (OUTPUT_DIR/config.yaml) would not load again.
    _C.MODEL.VIT.MODEL_KWARGS = ""
    _C.MODEL.CONFIG_PATH = ""

    # Run the transformer on page pixels only: no OCR tokens, no text fusion.
    _C.MODEL.IMAGE_ONLY = False

    # --------------------------------------------------------------- text fusion
    _C.MODEL.TEXT_FUSION = CN()
    # Which of MODEL.VIT.OUT_FEATURES receive painted text features; empty: all of them.
    _C.MODEL.TEXT_FUSION.LEVELS = []
    # A module of ditod.modeling.fusion.TEXT_FUSION_REGISTRY, or "none" (no fusion; text
    # still enters the transformer). Built in: "gated": g*visual + (1-g)*text with
    # g = sigmoid(conv3x3([visual; text])) per channel; "add": visual + text (VGT);
    # "vsr": alpha*visual + (1-alpha)*text with alpha = sigmoid(W [visual; text]) (VSR);
    # "m2doc": LayerNorm(visual + tanh(conv(relu(conv(text)))) * text) (M2Doc).
    _C.MODEL.TEXT_FUSION.MODE = "gated"
    # Implementation of "gated": "auto" runs the CPU kernel (ditod/layers/cpu_gated_fusion.py)
    # for float32 on the CPU outside autocast where its start-up check passes, and the
    # reference (plain PyTorch ops) everywhere else; "reference" always the reference.
    _C.MODEL.TEXT_FUSION.IMPL = "auto"
    # How several tokens painted on one cell combine: "mean" or "sum".
    _C.MODEL.TEXT_FUSION.REDUCE = "mean"
    # Initial gate bias of "gated" and "vsr": sigmoid(3) = 0.95, so training starts close
    # to the image-only behaviour.
    _C.MODEL.TEXT_FUSION.GATE_BIAS_INIT = 3.0

    # ----------------------------------------------------------------- OCR input
    _C.INPUT.OCR = CN()
    # Token budget per page, CLS/SEP not counted; lowered (with a warning) to what the
    # model's text positions allow.
    _C.INPUT.OCR.MAX_TOKENS = 510
    # Cap on the tokens of one OCR line (an entry of the OCR json's "words"); 0 = no cap.
    _C.INPUT.OCR.MAX_TOKENS_PER_LINE = 0
    # "reading": column-aware reading order before the budget cuts; "ocr": as given.
    _C.INPUT.OCR.ORDER = "reading"
    # Drop tokens that the tokenizer maps to its unknown token.
    _C.INPUT.OCR.DROP_UNK = True
    # Drop a sentencepiece word-start piece ("▁") that stands alone as a token.
    _C.INPUT.OCR.DROP_LEADING_SPACE = True
    # Wrap each page's tokens in the tokenizer's CLS/SEP tokens.
    _C.INPUT.OCR.ADD_SPECIAL_TOKENS = False
    # A page without a usable OCR file (missing, not UTF-8/JSON, bad fields): "error"
    # (stop with the path and the problem) or "empty" (no tokens, counted and logged).
    _C.INPUT.OCR.MISSING = "error"

    # ---------------------------------------------------------------- datasets
    # Extra COCO datasets registered at start-up: [[name, json, image_root, ocr_root], ...]
    # (ocr_root may be "" for <image_root>/../ocr).
    _C.DATASETS.REGISTER = []
    # PubLayNet's train / val image folders (unilm's keys): publaynet_train / publaynet_val
    # then read DIR.json, the images in DIR and the OCR jsons in DIR/../ocr/<name of DIR>
    # (the built-in layout). Empty: the built-in paths under $DETECTRON2_DATASETS.
    _C.PUBLAYNET_DATA_DIR_TRAIN = ""
    _C.PUBLAYNET_DATA_DIR_TEST = ""
    # Read from unilm's configs and ignored (IGNORED_KEYS).
    _C.ICDAR_DATA_DIR_TRAIN = ""
    _C.ICDAR_DATA_DIR_TEST = ""
    # Training stops when this many pages in a row (in one data-loader process) cannot be
    # read, naming the first; 0: never (unreadable pages are skipped and counted).
    _C.DATALOADER.MAX_CONSECUTIVE_UNREADABLE = 100

    # --------------------------------------------------------------- augmentation
    # With INPUT.CROP.ENABLED: crop the DETR way (unilm's AUG.DETR, which its code applies
    # to DiT backbones and skips for LayoutLMv3): half of the pages are resized to a short
    # side of 400/500/600 and cropped before the multi-scale resize, the other half are
    # not cropped. False: every page is cropped (detectron2's DatasetMapper).
    _C.INPUT.CROP.DETR_STYLE = False

    # -------------------------------------------------------------------- solver
    # "AdamW" or "SGD", in any case (unilm's configs say "ADAMW").
    _C.SOLVER.OPTIMIZER = "AdamW"
    # Learning-rate multiplier of the transformer (not FPN, fusion or heads).
    _C.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # Layer-wise learning-rate decay of the transformer layers; 1.0 = off.
    _C.SOLVER.LAYER_DECAY = 1.0
    # Optimizer step every N iterations' gradients; the LR schedule counts optimizer steps.
    _C.SOLVER.GRADIENT_ACCUMULATION_STEPS = 1

    # ------------------------------------------------------------------- runtime
    # Where Hugging Face downloads (MODEL.VIT.PRETRAINED, MODEL.VIT.TOKENIZER) are cached;
    # empty: the Hugging Face cache ($HF_HOME).
    _C.CACHE_DIR = ""
    # With MODEL.DEVICE "cpu", let glibc reuse freed memory for large tensors instead of
    # mapping fresh pages for each one (ditod.engine.keep_freed_cpu_memory). Off by
    # default: the base model's text step runs 7-11% faster on CPU,
    # but the process never returns freed memory and its heap fragments (eager
    # attention: > 24 GB, against a 14 GB peak without it).
    _C.MODEL.CPU_KEEP_FREED_MEMORY = False
