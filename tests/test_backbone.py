import pytest
import torch
from timm.layers import DropPath
from transformers import LayoutLMv3Model

from detectron2.modeling import build_backbone

from conftest import tiny_cfg
from ditod.modeling.backbone import LayoutLMv3Backbone, bicubic_resize_separably


def twelve_layer_cfg(*overrides):
    """A narrow 12-layer model so that the default taps 3/5/7/11 apply."""
    return tiny_cfg(
        "MODEL.VIT.HIDDEN_SIZE",
        48,
        "MODEL.VIT.NUM_LAYERS",
        12,
        "MODEL.VIT.NUM_HEADS",
        4,
        "MODEL.VIT.INTERMEDIATE_SIZE",
        96,
        "MODEL.VIT.OUT_FEATURES",
        ["layer3", "layer5", "layer7", "layer11"],
        *overrides,
    )


def randomize_embeddings(model):
    # HF initializes pos_embed and cls_token to zero; random values make the test bite.
    with torch.no_grad():
        model.pos_embed.normal_(std=0.5)
        model.cls_token.normal_(std=0.5)


def page_tokens(batch, tokens, vocab, image_hw):
    generator = torch.Generator().manual_seed(1)
    height, width = image_hw
    input_ids = torch.randint(3, vocab, (batch, tokens), generator=generator)
    xy = torch.rand(batch, tokens, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    token_boxes = torch.cat([xy, xy + 12], dim=-1)
    attention_mask = torch.ones(batch, tokens, dtype=torch.long)
    if batch > 1:
        attention_mask[1, tokens // 2 :] = 0
        input_ids[1, tokens // 2 :] = 1
    scale = torch.tensor([width, height, width, height])
    bbox = (token_boxes / scale * 1000).clamp(0, 1000).long() * attention_mask.unsqueeze(-1)
    return {"input_ids": input_ids, "bbox": bbox, "attention_mask": attention_mask, "token_boxes": token_boxes}


def build_bottom_up(cfg):
    backbone = build_backbone(cfg)
    bottom_up = backbone.bottom_up
    randomize_embeddings(bottom_up.layoutlmv3)
    return backbone.eval(), bottom_up.eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_bottom_up_reproduces_layoutlmv3_hidden_states(attention):
    cfg = twelve_layer_cfg("MODEL.TEXT_FUSION.MODE", "none", "MODEL.VIT.ATTENTION", attention)
    _, bottom_up = build_bottom_up(cfg)
    hf = bottom_up.layoutlmv3
    assert isinstance(hf, LayoutLMv3Model)
    images = torch.randn(2, 3, 224, 224)
    text = page_tokens(2, 10, 300, (224, 224))
    with torch.no_grad():
        ours = bottom_up({"images": images, **text})
        reference = hf(
            input_ids=text["input_ids"],
            bbox=text["bbox"],
            attention_mask=text["attention_mask"],
            pixel_values=images,
            output_hidden_states=True,
        ).hidden_states
    # hidden_states[0] is the embedding output; [i + 1] the output of layer i.
    # Sequence: 10 text tokens, [CLS], then the 14 x 14 patches.
    after_layer7 = reference[8][:, 11:].transpose(1, 2).reshape(2, 48, 14, 14)
    assert ours["layer7"].shape == (2, 48, 14, 14)
    assert torch.allclose(ours["layer7"], after_layer7, atol=1e-5)
    after_layer11 = reference[12][:, 11:].transpose(1, 2).reshape(2, 48, 14, 14)
    assert torch.allclose(ours["layer11"], torch.nn.functional.max_pool2d(after_layer11, 2), atol=1e-5)


def test_without_tokens_runs_on_the_image_alone():
    cfg = twelve_layer_cfg("MODEL.TEXT_FUSION.MODE", "none")
    _, bottom_up = build_bottom_up(cfg)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = bottom_up({"images": images})
        reference = bottom_up.layoutlmv3(pixel_values=images, output_hidden_states=True).hidden_states
    after_layer7 = reference[8][:, 1:].transpose(1, 2).reshape(1, 48, 14, 14)
    assert torch.allclose(ours["layer7"], after_layer7, atol=1e-5)


def test_pyramid_shapes_and_any_image_size():
    cfg = twelve_layer_cfg()
    backbone, bottom_up = build_bottom_up(cfg)
    images = torch.randn(2, 3, 320, 480)
    text = page_tokens(2, 7, 300, (320, 480))
    with torch.no_grad():
        features = bottom_up({"images": images, **text})
        pyramid = backbone({"images": images, **text})
    expected = {"layer3": 4, "layer5": 8, "layer7": 16, "layer11": 32}
    for name, stride in expected.items():
        assert features[name].shape == (2, 48, 320 // stride, 480 // stride)
        assert bottom_up.output_shape()[name].stride == stride
    assert sorted(pyramid) == ["p2", "p3", "p4", "p5", "p6"]
    assert pyramid["p2"].shape[-2:] == (80, 120)
    assert pyramid["p6"].shape[-2:] == (5, 8)


def test_position_embeddings_are_interpolated_bicubic_and_cached():
    cfg = twelve_layer_cfg()
    _, bottom_up = build_bottom_up(cfg)
    pos_embed = bottom_up.layoutlmv3.pos_embed
    assert pos_embed.shape == (1, 14 * 14 + 1, 48)  # kept at the pre-training grid
    stored = pos_embed[:, 1:].reshape(1, 14, 14, 48).permute(0, 3, 1, 2)
    with torch.no_grad():
        resized = bottom_up.patch_position_embeddings((20, 30))
        expected = torch.nn.functional.interpolate(stored, size=(20, 30), mode="bicubic", align_corners=False)
        assert torch.equal(resized, expected)
        assert bottom_up.patch_position_embeddings((20, 30)) is resized
    # With autograd it is recomputed so that pos_embed learns.
    trained = bottom_up.patch_position_embeddings((20, 30))
    trained.sum().backward()
    assert pos_embed.grad is not None and pos_embed.grad.abs().sum() > 0


def test_separable_bicubic_resize_equals_interpolate():
    maps = torch.randn(1, 48, 14, 14, generator=torch.Generator().manual_seed(0))
    for size in ((66, 50), (14, 14), (7, 30), (3, 2)):
        expected = torch.nn.functional.interpolate(maps, size=size, mode="bicubic", align_corners=False)
        torch.testing.assert_close(bicubic_resize_separably(maps, size), expected, atol=2e-6, rtol=1e-5)
    assert torch.equal(bicubic_resize_separably(maps, (14, 14)), maps)


def test_padding_tokens_do_not_influence_features():
    cfg = twelve_layer_cfg()
    _, bottom_up = build_bottom_up(cfg)
    images = torch.randn(1, 3, 224, 256)
    text = page_tokens(2, 12, 300, (224, 256))
    # Page 1 of `text` has 6 real tokens; pad it to 12 with different junk.
    short = {k: v[1:2, :6] for k, v in text.items()}
    padded = {k: v[1:2].clone() for k, v in text.items()}
    padded["input_ids"][:, 6:] = 1
    padded["token_boxes"][:, 6:] = torch.tensor([0.0, 0.0, 200.0, 200.0])
    with torch.no_grad():
        alone = bottom_up({"images": images, **short})
        batched = bottom_up({"images": images, **padded})
    for name in alone:
        assert torch.allclose(alone[name], batched[name], atol=1e-5), name


def test_text_changes_the_fused_features_where_the_words_are():
    cfg = twelve_layer_cfg("MODEL.TEXT_FUSION.GATE_BIAS_INIT", 0.0)
    _, bottom_up = build_bottom_up(cfg)
    images = torch.randn(1, 3, 224, 224)
    text = page_tokens(1, 4, 300, (224, 224))
    text["token_boxes"] = torch.tensor([[[0.0, 0.0, 30.0, 10.0]] * 4])
    text["bbox"] = (text["token_boxes"] / 224 * 1000).long()
    other = dict(text, input_ids=text["input_ids"].flip(-1) + 1)
    with torch.no_grad():
        a = bottom_up({"images": images, **text})["layer3"]
        b = bottom_up({"images": images, **other})["layer3"]
    # Different words change the features (through attention everywhere, and through
    # painting most strongly on the cells under the box).
    assert not torch.allclose(a, b)
    under_box = (a - b)[..., :3, :8].abs().mean()
    elsewhere = (a - b)[..., 20:, 20:].abs().mean()
    assert under_box > 3 * elsewhere


def test_image_only_model_has_no_text_parameters():
    cfg = tiny_cfg("MODEL.IMAGE_ONLY", True)
    backbone = build_backbone(cfg)
    names = [name for name, _ in backbone.named_parameters()]
    assert not any("embeddings.word_embeddings" in n for n in names)
    assert not any("text_fusion" in n for n in names)
    assert not backbone.bottom_up.uses_text


def test_layers_after_the_last_tap_are_dropped():
    cfg = twelve_layer_cfg(
        "MODEL.VIT.OUT_FEATURES",
        ["layer1", "layer2", "layer3", "layer5"],
        "MODEL.TEXT_FUSION.LEVELS",
        ["layer5"],
    )
    backbone = build_backbone(cfg)
    assert len(backbone.bottom_up.layoutlmv3.encoder.layer) == 6
    assert list(backbone.bottom_up.text_fusion) == ["layer5"]
    # FPN.IN_FEATURES left empty: the pyramid reads every tapped layer.
    assert list(backbone.in_features) == ["layer1", "layer2", "layer3", "layer5"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("MODEL.VIT.HIDDEN_SIZE", 99), "must be even"),
        (("MODEL.VIT.NAME", "vit_huge"), "MODEL.VIT.NAME"),
        (("MODEL.VIT.ATTENTION", "flash"), "MODEL.VIT.ATTENTION"),
        (("MODEL.TEXT_FUSION.MODE", "concat"), "MODEL.TEXT_FUSION.MODE"),
        (("MODEL.TEXT_FUSION.LEVELS", ["layer9"]), "not among"),
        (
            (
                "MODEL.VIT.OUT_FEATURES",
                ["layer0", "layer1", "layer2", "layer9"],
                "MODEL.TEXT_FUSION.LEVELS",
                ["layer9"],
            ),
            "only 4 layers",
        ),
    ],
)
def test_bad_configs_give_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(tiny_cfg(*overrides))


def test_gradient_checkpointing_gives_the_same_gradients_with_less_saved():
    grads, saved = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        # Dropout and stochastic depth draw the same masks when a layer is recomputed.
        cfg = tiny_cfg(
            "MODEL.VIT.GRAD_CHECKPOINT",
            checkpointing,
            "MODEL.VIT.HIDDEN_DROPOUT",
            0.1,
            "MODEL.VIT.ATTENTION_DROPOUT",
            0.1,
            "MODEL.VIT.DROP_PATH",
            0.5,
        )
        bottom_up = build_backbone(cfg).bottom_up.train()
        images = torch.randn(2, 3, 96, 128)
        text = page_tokens(2, 6, 300, (96, 128))
        numel = []

        def pack(tensor, numel=numel):
            numel.append(tensor.numel())
            return tensor

        torch.manual_seed(1)  # same dropout masks in both runs
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = bottom_up({"images": images, **text})
        sum(v.square().mean() for v in out.values()).backward()
        grads.append({n: p.grad.clone() for n, p in bottom_up.named_parameters() if p.grad is not None})
        saved.append(sum(numel))
    # Checkpointed layers keep only their inputs for backward.
    assert saved[1] < 0.7 * saved[0]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_layout_embeddings_fill_the_hidden_size_as_in_released_checkpoints():
    from ditod.layoutlmv3 import build_layoutlmv3_config

    large = build_layoutlmv3_config(tiny_cfg("MODEL.VIT.NAME", "layoutlmv3_large"))
    # microsoft/layoutlmv3-large's config.json
    assert (large.hidden_size, large.coordinate_size, large.shape_size) == (1024, 171, 170)
    base = build_layoutlmv3_config(tiny_cfg("MODEL.VIT.NAME", "layoutlmv3_base"))
    assert (base.hidden_size, base.coordinate_size, base.shape_size) == (768, 128, 128)
    # A hidden size that is not a multiple of 6 builds and runs with text.
    cfg = tiny_cfg("MODEL.VIT.HIDDEN_SIZE", 100, "MODEL.VIT.NUM_HEADS", 4)
    bottom_up = build_backbone(cfg).bottom_up.eval()
    inputs = {
        "images": torch.randn(1, 3, 64, 96),
        "input_ids": torch.randint(5, 300, (1, 7)),
        "bbox": torch.randint(0, 1000, (1, 7, 4)).sort(-1).values,
        "attention_mask": torch.ones(1, 7, dtype=torch.long),
        "token_boxes": torch.rand(1, 7, 4) * 60,
    }
    with torch.no_grad():
        features = bottom_up(inputs)
    assert features["layer0"].shape == (1, 100, 16, 24)


def test_backbone_class_is_the_registered_bottom_up():
    assert isinstance(build_backbone(tiny_cfg()).bottom_up, LayoutLMv3Backbone)


def test_sdpa_attention_equals_eager():
    cfg = twelve_layer_cfg("MODEL.VIT.ATTENTION", "sdpa")
    _, bottom_up = build_bottom_up(cfg)
    images = torch.randn(2, 3, 256, 192)
    text = page_tokens(2, 16, 300, (256, 192))  # page 1 is half padding
    with torch.no_grad():
        fused = bottom_up({"images": images, **text})
        bottom_up.layoutlmv3.set_attn_implementation("eager")
        eager = bottom_up({"images": images, **text})
    for name in fused:
        assert torch.allclose(fused[name], eager[name], atol=1e-4), name


# ------------------------------------------------------------------ stochastic depth
def test_drop_path_rates_rise_linearly_and_weights_keep_their_names():
    plain = build_backbone(twelve_layer_cfg()).bottom_up
    dropping = build_backbone(twelve_layer_cfg("MODEL.VIT.DROP_PATH", 0.1)).bottom_up
    layers = dropping.layoutlmv3.encoder.layer
    for index, layer in enumerate(layers):
        for output in (layer.attention.output, layer.output):
            rate = 0.1 * index / 11
            if index == 0:
                assert isinstance(output.dropout, torch.nn.Dropout)  # rate 0: nothing added
            else:
                assert isinstance(output.dropout[1], DropPath)
                assert output.dropout[1].drop_prob == pytest.approx(rate)
    # The same parameter names as transformers' (checkpoints load either way).
    assert plain.state_dict().keys() == dropping.state_dict().keys()


def test_drop_path_is_the_identity_in_eval_mode():
    torch.manual_seed(0)
    _, plain = build_bottom_up(twelve_layer_cfg())
    dropping = build_backbone(twelve_layer_cfg("MODEL.VIT.DROP_PATH", 0.5)).bottom_up.eval()
    dropping.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 96, 128)
    text = page_tokens(2, 6, 300, (96, 128))
    with torch.no_grad():
        expected = plain({"images": images, **text})
        got = dropping({"images": images, **text})
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


@pytest.mark.parametrize("branch", ["attention", "mlp"])
def test_drop_path_drops_a_pages_branch_at_its_layers_rate(branch):
    """In training, each page's branch is dropped (the layer then passes the residual
    through its LayerNorm alone) with the layer's rate, independently per page, and kept
    branches are scaled by 1 / (1 - rate)."""
    bottom_up = build_backbone(twelve_layer_cfg("MODEL.VIT.DROP_PATH", 0.4)).bottom_up.train()
    layer = bottom_up.layoutlmv3.encoder.layer[9]
    rate = 0.4 * 9 / 11
    output = layer.attention.output if branch == "attention" else layer.output
    pages = 4000
    generator = torch.Generator().manual_seed(3)
    branch_input = torch.randn(pages, 3, output.dense.in_features, generator=generator)
    residual = torch.randn(pages, 3, 48, generator=generator)
    torch.manual_seed(4)
    with torch.no_grad():
        trained = output(branch_input, residual)
        dropped = output.LayerNorm(residual)
        kept = output.LayerNorm(output.dense(branch_input) / (1 - rate) + residual)
    is_dropped = torch.isclose(trained, dropped, atol=1e-5).flatten(1).all(1)
    is_kept = torch.isclose(trained, kept, atol=1e-5).flatten(1).all(1)
    assert (is_dropped ^ is_kept).all(), "every page is either dropped or kept whole"
    # Binomial standard deviation sqrt(rate (1 - rate) / pages) = 0.0074: 4 of them.
    assert abs(is_dropped.float().mean().item() - rate) < 0.03
