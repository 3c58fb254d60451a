"""The reference text fusion (ditod/modeling/fusion.py): painting, the registry and its
modules. Tests taking `device` run on the CPU and, marked gpu, on CUDA."""

import contextlib
import math

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg

import ditod
from ditod.modeling.fusion import TEXT_FUSION_REGISTRY, TextFusion, build_text_fusion, paint_tokens

MODULES = ["gated", "add", "vsr", "m2doc"]


def reference_paint(feats, boxes, mask, grid, stride, reduce):
    """The per-token loop of the definition: each token adds its feature to every
    cell its box overlaps with positive area (the one containing cell for a
    zero-size side), clipped to the grid."""
    batch, _, channels = feats.shape
    height, width = grid
    out = torch.zeros(batch, channels, height, width, dtype=feats.dtype)
    count = torch.zeros(batch, 1, height, width, dtype=feats.dtype)

    def cells(lo, hi, size):
        first = math.floor(lo / stride)
        last = first if hi == lo else math.ceil(hi / stride) - 1
        last = max(first, last)
        return min(max(first, 0), size - 1), min(max(last, 0), size - 1)

    for b in range(batch):
        for t in range(feats.shape[1]):
            if not mask[b, t]:
                continue
            x0, y0, x1, y1 = boxes[b, t].tolist()
            c0, c1 = cells(x0, x1, width)
            r0, r1 = cells(y0, y1, height)
            out[b, :, r0 : r1 + 1, c0 : c1 + 1] += feats[b, t, :, None, None]
            count[b, :, r0 : r1 + 1, c0 : c1 + 1] += 1
    if reduce == "mean":
        out = out / count.clamp(min=1)
    return out


def random_boxes(batch, tokens, page_w, page_h, generator):
    """Boxes spread over the page and a margin around it (some outside the grid), with
    the edge cases in the first page's first five tokens."""
    x0 = torch.rand(batch, tokens, generator=generator) * page_w * 1.1 - page_w * 0.05
    y0 = torch.rand(batch, tokens, generator=generator) * page_h * 1.1 - page_h * 0.05
    w = torch.rand(batch, tokens, generator=generator) * page_w * 0.4
    h = torch.rand(batch, tokens, generator=generator) * page_h * 0.1
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)
    # Edge cases: zero width, zero height, a point, boxes on cell borders, the page corner.
    boxes[0, 0] = torch.tensor([12.0, 30.0, 12.0, 50.0])
    boxes[0, 1] = torch.tensor([5.0, 16.0, 40.0, 16.0])
    boxes[0, 2] = torch.tensor([33.0, 33.0, 33.0, 33.0])
    boxes[0, 3] = torch.tensor([8.0, 8.0, 16.0, 24.0])
    boxes[0, 4] = torch.tensor([page_w - 3.0, 0.0, page_w, 2.0])
    return boxes


def fusion_cfg(*overrides):
    """The library's defaults with `overrides` (KEY, VALUE, ...)."""
    cfg = get_cfg()
    ditod.add_vit_config(cfg)
    cfg.merge_from_list(list(overrides))
    return cfg


def build(mode, channels, stride, *overrides):
    """The registered module `mode` for one level, from the config."""
    return TEXT_FUSION_REGISTRY.get(mode)(fusion_cfg(*overrides), channels, stride)


def randomize_(module, seed):
    """Weights as after training: none at its initial value (zero gates, identity norms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return module


def level_inputs(batch, tokens, channels, grid, stride, seed, dtype=torch.float32):
    """A level's visual map, token features, boxes (edge cases included) and a mask
    with padding tokens (garbage features) on the second page."""
    generator = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, channels, *grid, generator=generator, dtype=dtype)
    feats = torch.randn(batch, tokens, channels, generator=generator, dtype=dtype)
    boxes = random_boxes(batch, tokens, grid[1] * stride, grid[0] * stride, generator).to(dtype)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    if batch > 1:
        mask[1, tokens // 2 :] = 0
        feats[1, tokens // 2 :] = 1e4
    return visual, feats, boxes, mask


# ------------------------------------------------------------------------------ painting
def check_painting_against_loop(paint, reduce, stride, vertical):
    """`paint` (paint_tokens' signature) against the per-token loop, forward and
    backward, in float64, with padding tokens holding NaN; returns the case's boxes,
    mask and grid."""
    generator = torch.Generator().manual_seed(stride)
    batch, tokens, channels = 2, 40, 5
    page_h, page_w = 128, 96
    grid = (page_h // stride, page_w // stride)
    feats = torch.randn(batch, tokens, channels, generator=generator, dtype=torch.float64)
    if vertical:
        boxes = random_boxes(batch, tokens, page_h, page_w, generator).double()[..., [1, 0, 3, 2]]
    else:
        boxes = random_boxes(batch, tokens, page_w, page_h, generator).double()
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[1, 25:] = 0
    # Padding carries garbage that must not leak anywhere.
    feats[1, 25:] = float("nan")

    feats_a = feats.clone().requires_grad_(True)
    feats_b = feats.clone().requires_grad_(True)
    out = paint(feats_a, boxes, mask, grid, stride, reduce)
    ref = reference_paint(feats_b, boxes, mask, grid, stride, reduce)
    assert out.shape == (batch, channels) + grid
    # The layout of the pyramid's visual maps, which the gate convs need.
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-9)

    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    grad_a, grad_b = feats_a.grad, feats_b.grad
    assert torch.allclose(grad_a[mask.bool()], grad_b[mask.bool()], atol=1e-9)
    assert torch.all(grad_a[~mask.bool()] == 0)
    return boxes, mask, grid


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("stride", [4, 8, 32])
@pytest.mark.parametrize("vertical", [False, True])
def test_paint_tokens_matches_reference_loop(reduce, stride, vertical):
    check_painting_against_loop(paint_tokens, reduce, stride, vertical)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_paint_tokens_passes_gradcheck(reduce):
    generator = torch.Generator().manual_seed(7)
    feats = torch.randn(2, 6, 3, generator=generator, dtype=torch.float64).requires_grad_(True)
    boxes = random_boxes(2, 6, 40, 32, generator).double()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    assert torch.autograd.gradcheck(lambda f: paint_tokens(f, boxes, mask, (4, 5), 8, reduce), (feats,))


def test_paint_tokens_orientation_and_empty_cells():
    # One token in the top-right corner of a 64 (h) x 128 (w) page at stride 16.
    feats = torch.tensor([[[1.0, 2.0]]])
    boxes = torch.tensor([[[118.0, 2.0, 126.0, 10.0]]])
    out = paint_tokens(feats, boxes, torch.ones(1, 1), (4, 8), 16, "mean")
    assert out.shape == (1, 2, 4, 8)
    nonzero = out[0, 0].nonzero().tolist()
    assert nonzero == [[0, 7]]  # row 0 (top), last column (right)
    assert out[0, :, 0, 7].tolist() == [1.0, 2.0]


def test_paint_tokens_mean_divides_by_tokens_on_cell():
    feats = torch.tensor([[[2.0], [4.0], [10.0]]])
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 16.0, 8.0], [100.0, 100.0, 110.0, 110.0]]])
    mask = torch.tensor([[1, 1, 0]])
    mean = paint_tokens(feats, boxes, mask, (2, 2), 8, "mean")[0, 0]
    total = paint_tokens(feats, boxes, mask, (2, 2), 8, "sum")[0, 0]
    assert mean.tolist() == [[3.0, 4.0], [0.0, 0.0]]
    assert total.tolist() == [[6.0, 4.0], [0.0, 0.0]]


def test_paint_tokens_without_tokens_is_zero():
    out = paint_tokens(torch.zeros(2, 0, 3), torch.zeros(2, 0, 4), torch.zeros(2, 0), (5, 6), 8, "mean")
    assert out.shape == (2, 3, 5, 6)
    assert not out.any()
    # A page whose tokens are all padding, next to one with tokens.
    feats = torch.randn(2, 4, 3)
    boxes = torch.tensor([[0.0, 0.0, 20.0, 10.0]]).expand(2, 4, 4)
    out = paint_tokens(feats, boxes, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), (5, 6), 8, "mean")
    assert out[0].any() and not out[1].any()


def test_paint_tokens_leaves_empty_cells_exactly_zero():
    """Cells no token covers are 0 exactly, even where the prefix sums of features of
    very different sizes leave rounding residue."""
    generator = torch.Generator().manual_seed(11)
    feats = torch.randn(2, 60, 4, generator=generator) * torch.logspace(-3, 7, 60)[:, None]
    boxes = random_boxes(2, 60, 96, 80, generator)
    mask = torch.ones(2, 60)
    out = paint_tokens(feats, boxes, mask, (10, 12), 8, "sum")
    covered = reference_paint(torch.ones(2, 60, 1), boxes, mask, (10, 12), 8, "sum") > 0
    assert (~covered).any()
    assert torch.all(out.masked_select(~covered) == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_paint_tokens_sums_in_float32(dtype):
    """Half-precision features (autocast's) are summed in float32 and rounded once."""
    generator = torch.Generator().manual_seed(12)
    feats = torch.randn(1, 200, 4, generator=generator).to(dtype)
    boxes = torch.tensor([0.0, 0.0, 30.0, 30.0]).expand(1, 200, 4)  # 200 tokens on every cell
    out = paint_tokens(feats, boxes, torch.ones(1, 200), (4, 4), 8, "sum")
    assert out.dtype == dtype
    assert torch.equal(out, paint_tokens(feats.float(), boxes, torch.ones(1, 200), (4, 4), 8, "sum").to(dtype))


def _sync_checked(device):
    """Raises on any host-device synchronisation inside, on CUDA."""
    if device.type != "cuda":
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def checked():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return checked()


def test_paint_tokens_on_device_without_host_sync(device):
    """Forward and backward on the device match the loop, and on CUDA run without a
    single host-device synchronisation (all shapes are known from the inputs')."""
    stride, grid = 8, (16, 12)
    _, feats, boxes, mask = level_inputs(2, 40, 6, grid, stride, seed=13, dtype=torch.float64)
    weights = torch.randn(2, 6, *grid, dtype=torch.float64)
    feats_ref = feats.clone().requires_grad_(True)
    ref = reference_paint(feats_ref, boxes, mask, grid, stride, "mean")
    (ref * weights).sum().backward()

    on_device = [t.to(device=device, dtype=torch.float32) for t in (feats, boxes, weights)]
    feats_d, boxes_d, weights_d = on_device
    feats_d.requires_grad_(True)
    mask_d = mask.to(device)
    with _sync_checked(device):
        out = paint_tokens(feats_d, boxes_d, mask_d, grid, stride, "mean")
        (out * weights_d).sum().backward()
    assert torch.allclose(out.cpu().double(), ref, atol=1e-5)
    real = mask.bool()
    assert torch.allclose(feats_d.grad.cpu().double()[real], feats_ref.grad[real], atol=1e-4)
    assert torch.all(feats_d.grad.cpu()[~real] == 0)


# ------------------------------------------------------------------------------- modules
@TEXT_FUSION_REGISTRY.register()
class ScaledTextSum(TextFusion):
    """A user's module, as the README shows one: visual + a learned scale * text."""

    def __init__(self, cfg, channels, stride):
        super().__init__(cfg, channels, stride)
        self.scale = nn.Parameter(torch.full((channels, 1, 1), 0.5))

    def mix(self, visual, text):
        return visual + self.scale * text


def test_a_users_registered_module_is_built_from_the_config():
    cfg = fusion_cfg("MODEL.TEXT_FUSION.MODE", "ScaledTextSum", "MODEL.TEXT_FUSION.LEVELS", ["layer3", "layer7"])
    fusion = build_text_fusion(cfg, 4, {"layer3": 4, "layer5": 8, "layer7": 16, "layer11": 32})
    assert list(fusion) == ["layer3", "layer7"]
    assert isinstance(fusion["layer7"], ScaledTextSum) and fusion["layer7"].stride == 16
    visual, feats, boxes, mask = level_inputs(2, 5, 4, (3, 3), 16, seed=1)
    out = fusion["layer7"](visual, feats, boxes, mask)
    text = paint_tokens(fusion["layer7"].text_proj(feats), boxes, mask, (3, 3), 16)
    assert torch.allclose(out, visual + 0.5 * text)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("MODEL.TEXT_FUSION.MODE", "concat"), r"MODEL.TEXT_FUSION.MODE.*'add', 'gated', 'm2doc'"),
        (("MODEL.TEXT_FUSION.IMPL", "fast"), "MODEL.TEXT_FUSION.IMPL must be one of"),
    ],
)
def test_bad_fusion_settings_give_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_text_fusion(fusion_cfg(*overrides), 4, {"layer3": 4, "layer5": 8, "layer7": 16, "layer11": 32})


@pytest.mark.parametrize("off", [("MODEL.TEXT_FUSION.MODE", "none"), ("MODEL.IMAGE_ONLY", True)])
def test_no_fusion_modules_when_off(off):
    assert len(build_text_fusion(fusion_cfg(*off), 4, {"layer3": 4, "layer5": 8, "layer7": 16, "layer11": 32})) == 0


@pytest.mark.parametrize("mode", MODULES)
def test_registered_modules_shapes_start_and_gradients(mode):
    """Each built-in module: the fused map has visual's shape, dtype and layout, starts
    at (add) or close to (gated, vsr: the gate at sigmoid(3)) the visual features where
    its initialisation says so, and every parameter gets a gradient."""
    channels, stride, grid = 6, 8, (5, 7)
    fusion = build(mode, channels, stride, "MODEL.TEXT_FUSION.GATE_BIAS_INIT", 3.0)
    visual, feats, boxes, mask = level_inputs(2, 9, channels, grid, stride, seed=2)
    visual.requires_grad_(True)
    feats.requires_grad_(True)
    out = fusion(visual, feats, boxes, mask)
    assert out.shape == visual.shape and out.dtype == visual.dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    if mode == "add":
        assert torch.equal(out, visual)
    elif mode in ("gated", "vsr"):
        assert (out - visual).abs().max() < 0.1 * visual.abs().max()
    (out * torch.randn_like(out)).sum().backward()
    for name, param in fusion.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert visual.grad.abs().sum() > 0
    # add's projection starts at zero: its tokens get gradients once it has moved.
    assert (feats.grad[mask.bool()].abs().sum() > 0) == (mode != "add")
    assert torch.all(feats.grad[~mask.bool()] == 0)


@pytest.mark.parametrize("mode", MODULES)
@pytest.mark.parametrize("visual_dtype", [torch.float32, torch.bfloat16])
def test_fusion_under_autocast(mode, visual_dtype):
    """With AMP the pyramid mixes dtypes: the deconv levels come out in half precision,
    the levels fed straight from the transformer's LayerNorm in float32. CPU autocast
    (bfloat16) stands in for CUDA's float16 here."""
    fusion = build(mode, 6, 8, "MODEL.TEXT_FUSION.GATE_BIAS_INIT", 0.0)
    visual = torch.randn(2, 6, 4, 5, dtype=visual_dtype, requires_grad=True)
    feats = torch.randn(2, 3, 6, requires_grad=True)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 8.0], [8.0, 8.0, 39.0, 31.0], [30.0, 0.0, 40.0, 8.0]]).expand(2, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(visual, feats, boxes, torch.ones(2, 3))
    assert out.dtype == visual_dtype
    out.float().sum().backward()
    assert torch.isfinite(visual.grad).all() and fusion.text_proj.weight.grad.abs().sum() > 0


# Tolerances of the device check, relative to the largest magnitude of the CPU float32
# result: float16 and bfloat16 keep 11 and 8 significant bits, and float32 on CUDA
# convolves in TF32 (cuDNN's default: 11 bits, as float16). On the CPU the errors are
# at most a fifth of these.
DEVICE_TOLERANCE = {torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@pytest.mark.parametrize("mode", MODULES)
@pytest.mark.parametrize("precision", [torch.float32, torch.float16, torch.bfloat16])
def test_fusion_modules_on_device_match_the_cpu_float32_result(device, mode, precision):
    """Each module with trained weights, on the device in float32 or under autocast,
    against the CPU float32 result (`gated` there: the reference): the output and the
    gradients of the visual map, the tokens' features and every parameter."""
    if device.type == "cpu" and precision == torch.float32 and mode != "gated":
        pytest.skip("the CPU float32 result itself")
    channels, stride, grid = 8, 8, (9, 7)
    cpu_module = randomize_(build(mode, channels, stride, "MODEL.TEXT_FUSION.IMPL", "reference"), seed=3)
    inputs = level_inputs(2, 12, channels, grid, stride, seed=4)
    weights = torch.randn(2, channels, *grid, generator=torch.Generator().manual_seed(5))

    def run(module, visual, feats, boxes, mask, weights, autocast):
        visual, feats = visual.clone().requires_grad_(True), feats.clone().requires_grad_(True)
        with torch.autocast(visual.device.type, dtype=precision, enabled=autocast):
            out = module(visual, feats, boxes, mask)
        grads = torch.autograd.grad((out.float() * weights).sum(), [visual, feats, *module.parameters()])
        return [out.float().cpu(), *(grad.float().cpu() for grad in grads)]

    expected = run(cpu_module, *inputs, weights, autocast=False)
    module = build(mode, channels, stride).to(device)  # IMPL auto
    module.load_state_dict(cpu_module.state_dict())
    got = run(module, *(t.to(device) for t in inputs), weights.to(device), autocast=precision != torch.float32)
    names = ["output", "visual", "token features"] + [name for name, _ in cpu_module.named_parameters()]
    for name, a, b in zip(names, got, expected):
        assert (a - b).abs().max() <= DEVICE_TOLERANCE[precision] * b.abs().max(), name


# ---------------------------------------------------------------------- each module's form
def test_gated_fusion_starts_as_the_gate_bias_says_and_learns_from_text():
    fusion = build("gated", 6, 8, "MODEL.TEXT_FUSION.GATE_BIAS_INIT", 3.0)
    visual = torch.randn(1, 6, 4, 4)
    feats = torch.randn(1, 3, 6, requires_grad=True)
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 30.0, 30.0], [0.0, 24.0, 31.0, 31.0]]])
    out = fusion(visual, feats, boxes, torch.ones(1, 3))
    gate = torch.sigmoid(torch.tensor(3.0))
    # At initialization the gate is sigmoid(bias) everywhere: the output is mostly visual.
    text = paint_tokens(fusion.text_proj(feats), boxes, torch.ones(1, 3), (4, 4), 8, "mean")
    assert torch.allclose(out, gate * visual + (1 - gate) * text, atol=1e-6)
    out.sum().backward()
    assert fusion.gate_visual.weight.grad.abs().sum() > 0
    assert fusion.gate_text.weight.grad.abs().sum() > 0
    assert feats.grad.abs().sum() > 0


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_gate_is_not_bounded_below_by_one_half(impl):
    # The research code's sigmoid(relu(x)) never went below 0.5; ours must reach 0.
    fusion = build("gated", 2, 4, "MODEL.TEXT_FUSION.GATE_BIAS_INIT", -20.0, "MODEL.TEXT_FUSION.IMPL", impl)
    visual = torch.ones(1, 2, 2, 2)
    feats = torch.full((1, 1, 2), 5.0)
    with torch.no_grad():
        fusion.text_proj.weight.copy_(torch.eye(2))
        out = fusion(visual, feats, torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]), torch.ones(1, 1))
    assert torch.allclose(out, torch.full_like(out, 5.0), atol=1e-6)


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gated_fusion_matches_grouped_conv_definition(impl, layout, dtype):
    """With trained (non-zero) gate weights, in either memory layout of the visual map:
    g = sigmoid(conv3x3 over [visual; text], one group per channel), g*visual + (1-g)*text,
    values and gradients."""
    channels, stride, grid = 3, 8, (5, 4)
    fusion = build("gated", channels, stride, "MODEL.TEXT_FUSION.IMPL", impl).to(dtype)
    randomize_(fusion, seed=0)
    visual, feats, boxes, mask = level_inputs(2, 6, channels, grid, stride, seed=1, dtype=dtype)
    weights = torch.randn(2, channels, *grid, dtype=dtype)
    atol = 1e-10 if dtype == torch.float64 else 1e-5

    def grads(out, inputs):
        return torch.autograd.grad((out * weights).sum(), inputs)

    visual_a = visual.contiguous(memory_format=layout).requires_grad_(True)
    feats_a = feats.clone().requires_grad_(True)
    params = list(fusion.parameters())
    ours = grads(fusion(visual_a, feats_a, boxes, mask), [visual_a, feats_a, *params])

    visual_b = visual.clone().requires_grad_(True)
    feats_b = feats.clone().requires_grad_(True)
    text = paint_tokens(fusion.text_proj(feats_b), boxes, mask, grid, stride, "mean")
    pairs = torch.stack([visual_b, text], dim=2).flatten(1, 2)  # v0, t0, v1, t1, ...
    weight = torch.stack([fusion.gate_visual.weight, fusion.gate_text.weight], dim=1).flatten(1, 2)
    gate = torch.sigmoid(torch.nn.functional.conv2d(pairs, weight, fusion.gate_visual.bias, padding=1, groups=channels))
    expected = grads(gate * visual_b + (1 - gate) * text, [visual_b, feats_b, *params])
    for a, b in zip(ours, expected):
        assert torch.allclose(a, b, atol=atol)


def test_vsr_fusion_is_a_linear_map_over_the_concatenated_channels():
    """alpha = sigmoid(Linear_{2C -> C}([visual; text])) per pixel, as VSR's Weighted merge,
    with W starting as that Linear's default."""
    channels, stride, grid = 5, 8, (4, 6)
    fusion = build("vsr", channels, stride, "MODEL.TEXT_FUSION.GATE_BIAS_INIT", 0.0)
    bound = 1 / math.sqrt(2 * channels)
    for conv in (fusion.gate_visual, fusion.gate_text):
        assert conv.weight.abs().max() <= bound and conv.weight.std() > bound / 4
    randomize_(fusion, seed=6)
    visual, feats, boxes, mask = level_inputs(2, 7, channels, grid, stride, seed=7)
    out = fusion(visual, feats, boxes, mask)

    linear = nn.Linear(2 * channels, channels)
    with torch.no_grad():
        linear.weight.copy_(torch.cat([fusion.gate_visual.weight, fusion.gate_text.weight], dim=1).flatten(1))
        linear.bias.copy_(fusion.gate_visual.bias)
    text = paint_tokens(fusion.text_proj(feats), boxes, mask, grid, stride).permute(0, 2, 3, 1)
    per_pixel = visual.permute(0, 2, 3, 1)
    alpha = torch.sigmoid(linear(torch.cat([per_pixel, text], dim=-1)))
    expected = (alpha * per_pixel + (1 - alpha) * text).permute(0, 3, 1, 2)
    assert torch.allclose(out, expected, atol=1e-5)


def test_m2doc_fusion_follows_its_formula():
    """LayerNorm(visual + tanh(conv(relu(conv(text)))) * text), the norm over each cell's channels."""
    channels, stride, grid = 5, 8, (4, 6)
    fusion = randomize_(build("m2doc", channels, stride), seed=8)
    visual, feats, boxes, mask = level_inputs(2, 7, channels, grid, stride, seed=9)
    out = fusion(visual, feats, boxes, mask)

    text = paint_tokens(fusion.text_proj(feats), boxes, mask, grid, stride)
    score = torch.tanh(fusion.score(torch.relu(fusion.score_hidden(text))))
    mixed = visual + score * text
    mean = mixed.mean(1, keepdim=True)
    var = mixed.var(1, unbiased=False, keepdim=True)
    norm = fusion.norm
    expected = (mixed - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]
    assert torch.allclose(out, expected, atol=1e-5)
    # Where no token sits, the text adds nothing: the normalised visual features.
    empty = paint_tokens(torch.ones(2, 7, 1), boxes, mask, grid, stride) == 0
    plain = fusion.norm(visual.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert not torch.allclose(out, plain, atol=1e-5)
    assert torch.allclose(out.masked_select(empty), plain.masked_select(empty), atol=1e-5)


def test_gated_reference_passes_gradcheck():
    """The reference gated fusion, painting included, in float64: the visual map, the
    tokens' features and every weight."""
    channels, stride, grid = 3, 8, (4, 5)
    fusion = randomize_(build("gated", channels, stride, "MODEL.TEXT_FUSION.IMPL", "reference").double(), seed=10)
    visual, feats, boxes, mask = level_inputs(2, 6, channels, grid, stride, seed=11, dtype=torch.float64)
    names = [name for name, _ in fusion.named_parameters()]

    def fused(visual, feats, *params):
        return torch.func.functional_call(fusion, dict(zip(names, params)), (visual, feats, boxes, mask))

    inputs = [visual, feats, *(p.detach().clone() for p in fusion.parameters())]
    assert torch.autograd.gradcheck(fused, [t.requires_grad_(True) for t in inputs])


def test_gated_loads_a_checkpoint_of_the_earlier_layout():
    """The keys and shapes of a TextFusion(mode="gated") state dict from before the
    registry load unchanged, into either implementation, and compute the same fusion."""
    channels = 4
    generator = torch.Generator().manual_seed(12)
    earlier = {
        "text_proj.weight": torch.randn(channels, channels, generator=generator),
        "text_proj.bias": torch.randn(channels, generator=generator),
        "gate_visual.weight": torch.randn(channels, 1, 3, 3, generator=generator),
        "gate_visual.bias": torch.randn(channels, generator=generator),
        "gate_text.weight": torch.randn(channels, 1, 3, 3, generator=generator),
    }
    visual, feats, boxes, mask = level_inputs(2, 5, channels, (5, 4), 8, seed=13)
    text = paint_tokens(feats @ earlier["text_proj.weight"].T + earlier["text_proj.bias"], boxes, mask, (5, 4), 8)
    conv = torch.nn.functional.conv2d
    gate = torch.sigmoid(
        conv(visual, earlier["gate_visual.weight"], earlier["gate_visual.bias"], padding=1, groups=channels)
        + conv(text, earlier["gate_text.weight"], padding=1, groups=channels)
    )
    for impl in ("auto", "reference"):
        fusion = build("gated", channels, 8, "MODEL.TEXT_FUSION.IMPL", impl)
        fusion.load_state_dict(earlier)  # strict: no key missing or unexpected
        with torch.no_grad():
            assert torch.allclose(fusion(visual, feats, boxes, mask), gate * visual + (1 - gate) * text, atol=1e-5)
