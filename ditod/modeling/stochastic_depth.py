"""
Stochastic depth (drop path) for the layers of transformers' `LayoutLMv3Model`, which has none.

Each LayoutLMv3 layer adds two residual branches, attention and MLP: their output modules
(`LayoutLMv3SelfOutput`, `LayoutLMv3Output`) compute LayerNorm(dropout(dense(x)) + residual).
timm's `DropPath` is put right after that dropout, so a page's whole branch is dropped
(and the kept ones scaled by 1 / (1 - rate)) before the residual add, as in BEiT/DiT,
while the layer code and the weight names stay those of transformers.
"""

import torch
from timm.layers import DropPath
from torch import nn

__all__ = ["add_drop_path", "drop_path_rates"]


def drop_path_rates(max_rate, num_layers):
    """Per-layer rates rising linearly from 0 at the first layer to `max_rate` at the last."""
    return torch.linspace(0, max_rate, num_layers).tolist()


def add_drop_path(model, max_rate):
    """
    Add stochastic depth to both residual branches of every layer of a LayoutLMv3Model
    (in place), at `drop_path_rates(max_rate, number of layers)`. Active in training
    mode only. Returns the rates.
    """
    if not 0 <= max_rate < 1:
        raise ValueError(f"MODEL.VIT.DROP_PATH must be in [0, 1), got {max_rate}")
    rates = drop_path_rates(max_rate, len(model.encoder.layer))
    for index, (layer, rate) in enumerate(zip(model.encoder.layer, rates)):
        if rate == 0:
            continue
        for output in (layer.attention.output, layer.output):
            if not isinstance(getattr(output, "dropout", None), nn.Dropout):
                raise TypeError(
                    f"layer {index}: {type(output).__name__} has no dropout before its residual add; "
                    "this transformers version's LayoutLMv3 layers are not supported by MODEL.VIT.DROP_PATH"
                )
            output.dropout = nn.Sequential(output.dropout, DropPath(rate))
    return rates
