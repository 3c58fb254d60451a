"""
Everything ditod loads from Hugging Face: the LayoutLMv3 config, the model, the tokenizer,
and the page's text-token budget that follows from them.

`ditod.data` (the mapper tokenizes OCR words) and `ditod.modeling` (the backbone wraps
the model) both import this module; it imports neither. Hub ids and local directories
saved with `save_pretrained` are accepted wherever a name is (MODEL.VIT.PRETRAINED,
MODEL.VIT.TOKENIZER); each is read once per process, downloads going to the Hugging Face
cache or to the config's CACHE_DIR.
"""

import copy
import functools
import hashlib
import json
import logging
import os

import torch
from transformers import AutoTokenizer, LayoutLMv3Config, LayoutLMv3Model

__all__ = [
    "SIZE_PRESETS",
    "build_layoutlmv3_config",
    "build_layoutlmv3_model",
    "from_hub_or_directory",
    "get_tokenizer",
    "layout_embedding_sizes",
    "load_tokenizer",
    "max_text_tokens",
    "sincos_position_embeddings",
    "tokenizer_fingerprint",
]

logger = logging.getLogger(__name__)

# (hidden size, layers, heads, intermediate size) of the released checkpoints.
SIZE_PRESETS = {
    "layoutlmv3_base": (768, 12, 12, 3072),
    "layoutlmv3_large": (1024, 24, 16, 4096),
}


def from_hub_or_directory(key, name, load):
    """`load(name)` for the config key `key` naming a hub id or a local directory; a
    clear error naming the key when neither has it (transformers' own error for a
    missing directory complains about the form of repo ids)."""
    if name.startswith((os.sep, ".")) and not os.path.isdir(name):
        raise ValueError(f"{key} {name}: no such directory")
    try:
        return load(name)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0]
        if os.path.isdir(name):
            raise ValueError(f"{key} {name}: cannot be loaded from this directory ({reason})") from e
        raise ValueError(
            f"{key} {name!r}: not a local directory, and the Hugging Face hub has nothing under this "
            f"name or cannot be reached ({reason})"
        ) from e


# ------------------------------------------------------------------- tokenizer
@functools.cache
def load_tokenizer(name, cache_dir=None):
    """Load a tokenizer (hub id or directory) once per process; hub downloads go to
    `cache_dir` (None: the Hugging Face cache)."""
    logger.info(f"Loading tokenizer {name}")
    tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=cache_dir)
    # From a folder without tokenizer files (a model saved alone) transformers builds
    # a tokenizer of special tokens only, whose ids mean nothing to the model.
    if len(tokenizer) <= len(tokenizer.all_special_ids):
        raise ValueError(
            f"{name} holds no tokenizer (its vocabulary has only the {len(tokenizer)} special tokens): "
            "point MODEL.VIT.TOKENIZER at the tokenizer of the model"
        )
    return tokenizer


def get_tokenizer(cfg):
    """The tokenizer of MODEL.VIT.TOKENIZER (or MODEL.VIT.PRETRAINED); None when neither is set."""
    key = "MODEL.VIT.TOKENIZER" if cfg.MODEL.VIT.TOKENIZER else "MODEL.VIT.PRETRAINED"
    name = cfg.MODEL.VIT.TOKENIZER or cfg.MODEL.VIT.PRETRAINED
    if not name:
        return None
    return from_hub_or_directory(key, name, functools.partial(load_tokenizer, cache_dir=_cache_dir(cfg)))


def tokenizer_fingerprint(tokenizer):
    """What identifies a tokenizer's token ids: its name (hub id or directory), its
    vocabulary size and the SHA-256 of its vocabulary (tokens in id order), as plain
    values for a checkpoint. The hash tells apart vocabularies of the same size."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest = hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"name": str(tokenizer.name_or_path), "vocab_size": len(tokenizer), "vocab_sha256": digest}


def _cache_dir(cfg):
    # CACHE_DIR, the key of unilm's configs; empty: the Hugging Face cache (HF_HOME).
    return cfg.CACHE_DIR or None


# ---------------------------------------------------------------------- config
@functools.cache
def _pretrained_config(name, cache_dir=None):
    load = functools.partial(LayoutLMv3Config.from_pretrained, cache_dir=cache_dir)
    return from_hub_or_directory("MODEL.VIT.PRETRAINED", name, load)


def layout_embedding_sizes(hidden):
    """
    Sizes of LayoutLMv3's x/y coordinate and h/w shape embeddings, concatenated as
    x0, y0, x1, y1, h, w into `hidden` (an even number) features: a sixth each, the
    coordinates rounded up, as in the released checkpoints (base 768: 128 and 128;
    large 1024: 171 and 170).
    """
    coordinate = -(-hidden // 6)
    return coordinate, (hidden - 4 * coordinate) // 2


def build_layoutlmv3_config(cfg, tokenizer=None):
    """
    The `LayoutLMv3Config` described by `cfg`: read from MODEL.VIT.PRETRAINED when set
    (once per process), otherwise from the size keys; relative 1D/2D attention biases off.
    """
    vit = cfg.MODEL.VIT
    if vit.POS_TYPE != "abs":
        raise ValueError(
            f"MODEL.VIT.POS_TYPE must be 'abs' (LayoutLMv3's absolute patch position embeddings), got "
            f"{vit.POS_TYPE!r}: the relative position biases of unilm's BEiT/DiT backbones are not available here"
        )
    if vit.PRETRAINED:
        config = copy.deepcopy(_pretrained_config(vit.PRETRAINED, _cache_dir(cfg)))
    else:
        if vit.NAME == "layoutlmv3_custom":
            hidden, layers, heads, intermediate = (
                vit.HIDDEN_SIZE,
                vit.NUM_LAYERS,
                vit.NUM_HEADS,
                vit.INTERMEDIATE_SIZE,
            )
        elif vit.NAME in SIZE_PRESETS:
            hidden, layers, heads, intermediate = SIZE_PRESETS[vit.NAME]
        else:
            raise ValueError(
                f"MODEL.VIT.NAME must be one of {sorted(SIZE_PRESETS) + ['layoutlmv3_custom']}, got {vit.NAME!r}"
            )
        if hidden % 2 or hidden < 6 or hidden % heads:
            raise ValueError(
                f"MODEL.VIT.HIDDEN_SIZE {hidden} must be even and at least 6 (layout embeddings) "
                f"and divisible by MODEL.VIT.NUM_HEADS {heads}"
            )
        coordinate, shape = layout_embedding_sizes(hidden)
        config = LayoutLMv3Config(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            coordinate_size=coordinate,
            shape_size=shape,
            vocab_size=len(tokenizer) if tokenizer is not None else vit.VOCAB_SIZE,
            max_position_embeddings=vit.MAX_POSITION_EMBEDDINGS,
            patch_size=vit.PATCH_SIZE,
            input_size=vit.INPUT_SIZE,
            hidden_dropout_prob=vit.HIDDEN_DROPOUT,
            attention_probs_dropout_prob=vit.ATTENTION_DROPOUT,
        )
        if tokenizer is not None and tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
    # Relative position biases are (B, heads, N, N) tensors: they do not scale to the
    # thousands of tokens of a detection-size page.
    config.has_relative_attention_bias = False
    config.has_spatial_attention_bias = False
    config.visual_embed = True
    config.text_embed = not cfg.MODEL.IMAGE_ONLY
    return config


def max_text_tokens(config):
    """Most text tokens (special tokens included) one page can give a model of `config`.

    LayoutLMv3 numbers text positions from pad_token_id + 1, so a model with P position
    embeddings takes P - pad_token_id - 1 tokens (512 for 514 positions and pad id 1).
    """
    return config.max_position_embeddings - config.pad_token_id - 1


# ----------------------------------------------------------------------- model
def _check_tokenizer(config, tokenizer, source):
    if tokenizer is None:
        return
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model {source} has a vocabulary "
            f"of {config.vocab_size}: its ids would not fit. Set MODEL.VIT.TOKENIZER to the "
            "tokenizer the checkpoint was trained with."
        )
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != config.pad_token_id:
        raise ValueError(
            f"The tokenizer pads with id {tokenizer.pad_token_id} but the model {source} expects {config.pad_token_id}."
        )


def sincos_position_embeddings(grid, channels):
    """2D sine-cosine position embeddings (MAE), (H*W, channels): a quarter of the
    channels each for sin(y), cos(y), sin(x), cos(x) at geometric frequencies."""
    quarter = channels // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    y, x = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    angles_y = y.reshape(-1, 1) * frequencies
    angles_x = x.reshape(-1, 1) * frequencies
    table = torch.cat([angles_y.sin(), angles_y.cos(), angles_x.sin(), angles_x.cos()], dim=1)
    return torch.nn.functional.pad(table, (0, channels - 4 * quarter)).float()


def build_layoutlmv3_model(cfg, tokenizer=None):
    """A `LayoutLMv3Model` as `cfg` describes it, with pretrained weights when
    MODEL.VIT.PRETRAINED is set (`from_pretrained` semantics)."""
    config = build_layoutlmv3_config(cfg, tokenizer)
    attention = cfg.MODEL.VIT.ATTENTION
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"MODEL.VIT.ATTENTION must be 'sdpa' or 'eager', got {attention!r}")
    pretrained = cfg.MODEL.VIT.PRETRAINED
    if pretrained:
        _check_tokenizer(config, tokenizer, pretrained)
        logger.info(f"Loading LayoutLMv3 weights from {pretrained}")
        model = LayoutLMv3Model.from_pretrained(
            pretrained, config=config, attn_implementation=attention, cache_dir=_cache_dir(cfg)
        )
    else:
        model = LayoutLMv3Model._from_config(config, attn_implementation=attention)
        # transformers starts pos_embed at zero (it expects pretrained weights); a model
        # trained from scratch learns much faster when patches know where they are.
        with torch.no_grad():
            model.pos_embed[:, 1:] = sincos_position_embeddings(model.patch_embed.patch_shape, config.hidden_size)
    return model
