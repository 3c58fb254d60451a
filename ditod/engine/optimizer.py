"""
The optimizer of the LayoutLMv3 detection recipe: AdamW (or SGD) over parameter groups
with a learning-rate factor for the transformer and a layer-wise decay (ViTDet's
`lr_factor_func` idiom over detectron2's `get_default_optimizer_params`), and no weight
decay on norms, biases, position embeddings and the CLS token.
"""

import logging
import re
from functools import partial

import torch

from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

__all__ = ["build_optimizer", "layoutlmv3_param_groups", "transformer_lr_factor"]

logger = logging.getLogger(__name__)

# Where the LayoutLMv3 transformer sits in the detector built by build_vit_fpn_backbone.
TRANSFORMER_PREFIX = "backbone.bottom_up.layoutlmv3."
# Transformer parameters of the embedding stage (text and patch embeddings and their norms).
_EMBEDDING_NAMES = ("embeddings.", "patch_embed.", "cls_token", "pos_embed", "norm.", "LayerNorm.")


def transformer_lr_factor(name, num_layers, multiplier=1.0, layer_decay=1.0):
    """
    Learning-rate factor of the parameter `name` (as in `model.named_parameters()`).

    Transformer parameters (under `backbone.bottom_up.layoutlmv3.`) get `multiplier`
    times a layer-wise decay (BEiT convention): encoder layer i (0-based) gets
    layer_decay ** (num_layers - i), the embedding stage layer_decay ** (num_layers + 1).
    Everything else (pyramid, fusion, FPN, heads) gets 1.
    """
    if not name.startswith(TRANSFORMER_PREFIX):
        return 1.0
    name = name[len(TRANSFORMER_PREFIX) :]
    match = re.match(r"encoder\.layer\.(\d+)\.", name)
    if match:
        depth = int(match.group(1)) + 1
    elif name.startswith(_EMBEDDING_NAMES):
        depth = 0
    else:
        depth = num_layers + 1
    return multiplier * layer_decay ** (num_layers + 1 - depth)


def layoutlmv3_param_groups(model, base_lr, weight_decay, multiplier=1.0, layer_decay=1.0):
    """
    Optimizer parameter groups: `transformer_lr_factor` learning rates, and no weight
    decay on norms, biases, position embeddings (pos_embed and the text/layout
    position tables) and the CLS token.
    """
    transformer_layers = [
        len(module.encoder.layer) for name, module in model.named_modules() if name + "." == TRANSFORMER_PREFIX
    ]
    if not transformer_layers and (multiplier != 1.0 or layer_decay != 1.0):
        logger.warning(
            f"The model has no {TRANSFORMER_PREFIX[:-1]}: SOLVER.BACKBONE_MULTIPLIER and "
            "SOLVER.LAYER_DECAY have nothing to act on"
        )
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
        lr_factor_func=partial(
            transformer_lr_factor,
            num_layers=transformer_layers[0] if transformer_layers else 0,
            multiplier=multiplier,
            layer_decay=layer_decay,
        ),
        overrides={"pos_embed": {"weight_decay": 0.0}, "cls_token": {"weight_decay": 0.0}},
    )
    # The text position tables are nn.Embedding weights, out of reach of `overrides`;
    # a later group overrides earlier ones for the same parameters.
    tables = [
        param
        for name, module in model.named_modules()
        if name.endswith("position_embeddings")
        for param in module.parameters()
        if param.requires_grad
    ]
    return reduce_param_groups(groups + [{"params": tables, "weight_decay": 0.0}])


def build_optimizer(cfg, model):
    """The optimizer of SOLVER.OPTIMIZER ("AdamW" or "SGD", in any case) over `layoutlmv3_param_groups`, with detectron2's
    per-parameter gradient clipping when SOLVER.CLIP_GRADIENTS asks for it (full-model
    clipping is done by the trainer)."""
    solver = cfg.SOLVER
    params = layoutlmv3_param_groups(
        model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BACKBONE_MULTIPLIER, solver.LAYER_DECAY
    )
    # Any case: unilm's configs say "ADAMW".
    name = solver.OPTIMIZER.lower()
    if name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
    elif name == "sgd":
        optimizer = torch.optim.SGD(
            params,
            lr=solver.BASE_LR,
            momentum=solver.MOMENTUM,
            nesterov=solver.NESTEROV,
            weight_decay=solver.WEIGHT_DECAY,
        )
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'AdamW' or 'SGD', got {solver.OPTIMIZER!r}")
    if solver.CLIP_GRADIENTS.ENABLED and solver.CLIP_GRADIENTS.CLIP_TYPE != "full_model":
        # detectron2's per-parameter "value" / "norm" clipping.
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer
