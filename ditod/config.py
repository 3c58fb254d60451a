"""The config keys that ditod adds to detectron2's defaults."""

import os

import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_vit_config", "load_config"]


def load_config(config_file, opts=()):
    """
    detectron2's default config with ditod's keys, merged from `config_file` and the
    KEY VALUE overrides `opts` (not frozen).

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
        cfg.merge_from_file(config_file)
    except (AssertionError, KeyError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"config file {config_file}: {_reason(e)}") from e
    opts = list(opts)
    options = [text for text in opts if text.startswith("--")]
    if options:
        raise ValueError(f"{options[0]} comes after the KEY VALUE config overrides: put options before them")
    if len(opts) % 2:
        raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number of words: {opts}")
    try:
        cfg.merge_from_list(opts)
    except (AssertionError, KeyError, ValueError) as e:
        raise ValueError(f"config override: {_reason(e)}") from e
    return cfg


def _reason(error):
    # yacs reports unknown keys as AssertionError or KeyError; str(KeyError) adds quotes.
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)


def add_vit_config(cfg):
    """Add every ditod key, with its default, to a detectron2 config (in place)."""
    _C = cfg

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
    # which are interpolated (bicubic) to each batch's grid at run time.
    _C.MODEL.VIT.INPUT_SIZE = 224
    _C.MODEL.VIT.HIDDEN_DROPOUT = 0.0
    _C.MODEL.VIT.ATTENTION_DROPOUT = 0.0
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

    # Run the transformer on page pixels only: no OCR tokens, no text fusion.
    _C.MODEL.IMAGE_ONLY = False

    # --------------------------------------------------------------- text fusion
    _C.MODEL.TEXT_FUSION = CN()
    # Which of MODEL.VIT.OUT_FEATURES receive painted text features.
    _C.MODEL.TEXT_FUSION.LEVELS = ["layer3", "layer5", "layer7", "layer11"]
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
    # Cap on the tokens of one word/line; 0 = no cap.
    _C.INPUT.OCR.MAX_TOKENS_PER_WORD = 0
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

    # --------------------------------------------------------------- augmentation
    _C.AUG = CN()
    # DETR-style augmentation: with probability 0.5 resize + random crop before the
    # multi-scale resize.
    _C.AUG.DETR = False

    # -------------------------------------------------------------------- solver
    # "AdamW" or "SGD".
    _C.SOLVER.OPTIMIZER = "AdamW"
    # Learning-rate multiplier of the transformer (not FPN, fusion or heads).
    _C.SOLVER.BACKBONE_MULTIPLIER = 1.0
    # Layer-wise learning-rate decay of the transformer layers; 1.0 = off.
    _C.SOLVER.LAYER_DECAY = 1.0
    # Optimizer step every N iterations' gradients; the LR schedule counts optimizer steps.
    _C.SOLVER.GRADIENT_ACCUMULATION_STEPS = 1

    # ------------------------------------------------------------------- runtime
    # With MODEL.DEVICE "cpu", let glibc reuse freed memory for large tensors instead of
    # mapping fresh pages for each one (ditod.engine.keep_freed_cpu_memory). Off by
    # default: the base model's text step runs 7-11% faster on CPU,
    # but the process never returns freed memory and its heap fragments (eager
    # attention: > 24 GB, against a 14 GB peak without it).
    _C.CPU_KEEP_FREED_MEMORY = False
