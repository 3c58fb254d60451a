"""The optimizer of the recipe: parameter groups with the transformer's learning-rate
factor and layer-wise decay, no weight decay on norms, biases and position tables."""

import pytest
import torch

from detectron2.modeling import build_model

from conftest import tiny_cfg
from ditod.engine import build_optimizer

LM = "backbone.bottom_up.layoutlmv3."


def param_settings(optimizer):
    """{parameter: (lr, weight_decay)} from the optimizer's groups; each parameter once."""
    settings = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert param not in settings, "a parameter is in two groups"
            settings[param] = (group["lr"], group["weight_decay"])
    return settings


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(tiny_cfg())


def test_param_groups_multiplier_layer_decay_and_no_decay_parameters(tiny_model):
    cfg = tiny_cfg(
        "SOLVER.BASE_LR",
        1.0,
        "SOLVER.WEIGHT_DECAY",
        0.05,
        "SOLVER.BACKBONE_MULTIPLIER",
        0.1,
        "SOLVER.LAYER_DECAY",
        0.5,
    )
    optimizer = build_optimizer(cfg, tiny_model)
    assert isinstance(optimizer, torch.optim.AdamW)
    settings = param_settings(optimizer)
    named = dict(tiny_model.named_parameters())
    assert set(settings) == set(named.values())
    lr = {name: settings[p][0] for name, p in named.items()}
    wd = {name: settings[p][1] for name, p in named.items()}

    # The tiny transformer has 4 layers: layer i gets 0.1 * 0.5^(4 - i), the embedding
    # stage 0.1 * 0.5^5, everything outside the transformer the base LR.
    for i in range(4):
        assert lr[f"{LM}encoder.layer.{i}.attention.self.query.weight"] == pytest.approx(0.1 * 0.5 ** (4 - i))
        assert lr[f"{LM}encoder.layer.{i}.output.LayerNorm.bias"] == pytest.approx(0.1 * 0.5 ** (4 - i))
    for name in (
        "embeddings.word_embeddings.weight",
        "embeddings.x_position_embeddings.weight",
        "patch_embed.proj.weight",
        "cls_token",
        "pos_embed",
        "norm.weight",
        "LayerNorm.bias",
    ):
        assert lr[LM + name] == pytest.approx(0.1 * 0.5**5), name
    outside = [name for name in named if not name.startswith(LM)]
    assert any("fpn1" in n for n in outside) and any("text_fusion" in n for n in outside)
    assert any(n.startswith("roi_heads") for n in outside) and any(n.startswith("backbone.fpn_") for n in outside)
    assert {lr[name] for name in outside} == {1.0}

    no_decay = [
        name
        for name in named
        if name.endswith(".bias")
        or "LayerNorm" in name
        or name.startswith(LM + "norm.")
        or "position_embeddings" in name
        or name in (LM + "pos_embed", LM + "cls_token")
        or name == "backbone.bottom_up.fpn1.1.weight"  # the pyramid's BatchNorm
    ]
    assert {wd[name] for name in no_decay} == {0.0}
    for name in (LM + "embeddings.x_position_embeddings.weight", LM + "embeddings.position_embeddings.weight"):
        assert wd[name] == 0.0
    decayed = set(named) - set(no_decay)
    assert LM + "embeddings.word_embeddings.weight" in decayed
    assert "backbone.bottom_up.text_fusion.layer0.gate_visual.weight" in decayed
    assert {wd[name] for name in decayed} == {0.05}


def test_param_groups_without_multiplier_or_decay_share_the_base_lr(tiny_model):
    optimizer = build_optimizer(tiny_cfg("SOLVER.BASE_LR", 0.25), tiny_model)
    assert {lr for lr, _ in param_settings(optimizer).values()} == {0.25}


def test_sgd_and_unknown_optimizer(tiny_model):
    optimizer = build_optimizer(tiny_cfg("SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", 0.8), tiny_model)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.8
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(tiny_cfg("SOLVER.OPTIMIZER", "Adam"), tiny_model)


@pytest.mark.parametrize(
    "name, kind", [("ADAMW", torch.optim.AdamW), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]
)
def test_optimizer_name_in_any_case(tiny_model, name, kind):
    # unilm's configs say "ADAMW".
    assert isinstance(build_optimizer(tiny_cfg("SOLVER.OPTIMIZER", name), tiny_model), kind)
