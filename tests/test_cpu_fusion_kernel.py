"""The CPU kernel of the gated fusion (ditod/layers/cpu_gated_fusion.py) against the
reference (ditod/modeling/fusion.py) and the per-token loop of the definition."""

import copy
import pickle

import pytest
import torch
from test_fusion import build, check_painting_against_loop, level_inputs, random_boxes, randomize_

from ditod.layers import cpu_gated_fusion
from ditod.modeling.fusion import paint_tokens, token_cell_ranges

CPU = torch.device("cpu")


def kernel_fusion(fusion, visual, feats, boxes, mask):
    """The kernel's gated fusion with `fusion`'s weights, whether or not `auto` would
    pick it here (without oneDNN's in-place op it takes the plain convolutions)."""
    visual = visual.contiguous(memory_format=torch.channels_last)
    cells = token_cell_ranges(boxes, visual.shape[-2:], fusion.stride)
    weights = (fusion.gate_visual.weight, fusion.gate_visual.bias, fusion.gate_text.weight)
    return cpu_gated_fusion.painted_gated_mix(
        visual, fusion.text_proj(feats), cells, mask, fusion.reduce, *weights, fusion.reusable_maps
    )


def reference_fusion(fusion, visual, feats, boxes, mask):
    """The reference's gated fusion with `fusion`'s weights."""
    visual = visual.contiguous(memory_format=torch.channels_last)
    return fusion.mix(visual, fusion.paint(visual, feats, boxes, mask))


def paint_along_runs(feats, boxes, mask, grid, stride, reduce):
    """The kernel's painting, in paint_tokens' signature."""
    return cpu_gated_fusion.paint_along_runs(feats, token_cell_ranges(boxes, grid, stride), mask, grid, reduce)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("stride", [4, 8, 32])
@pytest.mark.parametrize("vertical", [False, True])
def test_painting_along_runs_matches_reference_loop(reduce, stride, vertical):
    """Horizontal lines are painted along grid rows, vertical text along columns."""
    boxes, mask, grid = check_painting_against_loop(paint_along_runs, reduce, stride, vertical)
    runs = cpu_gated_fusion.token_runs(token_cell_ranges(boxes, grid, stride), mask, grid)
    assert runs.dim == (1 if vertical else 2)


def random_case(seed):
    """A random level: shapes, padding, a page without tokens, tokens outside the grid
    and zero-size boxes (random_boxes' edge cases)."""
    generator = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 4, (), generator=generator))
    tokens = int(torch.randint(6, 30, (), generator=generator))
    channels = int(torch.randint(1, 9, (), generator=generator))
    stride = [4, 8, 16][seed % 3]
    grid = tuple(int(v) for v in torch.randint(3, 12, (2,), generator=generator))
    visual, feats, boxes, mask = level_inputs(batch, tokens, channels, grid, stride, seed)
    if batch == 3:
        mask[2] = 0  # a page without tokens
    return channels, stride, (visual, feats, boxes, mask)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_kernel_equals_reference_outputs_and_gradients(seed, reduce):
    """Same output and gradients for every input of the module: the visual map, the
    tokens' features and every weight (the projection's and the gate's)."""
    channels, stride, inputs = random_case(seed)
    fusion = randomize_(build("gated", channels, stride, "MODEL.TEXT_FUSION.REDUCE", reduce), seed)
    weights = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(seed))
    results = []
    for run in (kernel_fusion, reference_fusion):
        visual, feats = (t.clone().requires_grad_(True) for t in inputs[:2])
        out = run(fusion, visual, feats, *inputs[2:])
        grads = torch.autograd.grad((out * weights).sum(), [visual, feats, *fusion.parameters()])
        results.append([out, *grads])
    for ours, expected in zip(*results):
        assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-4)


def test_kernel_without_any_tokens():
    fusion = randomize_(build("gated", 4, 8), seed=1)
    visual = torch.randn(2, 4, 5, 6, requires_grad=True)
    feats = torch.zeros(2, 0, 4, requires_grad=True)
    args = (torch.zeros(2, 0, 4), torch.zeros(2, 0))
    out = kernel_fusion(fusion, visual, feats, *args)
    assert torch.allclose(out, reference_fusion(fusion, visual, feats, *args), atol=1e-6)
    out.sum().backward()
    assert feats.grad.shape == (2, 0, 4) and visual.grad.abs().sum() > 0


def ran_kernel(out):
    return type(out.grad_fn).__name__ == "_PaintedGatedMixBackward"


@pytest.mark.parametrize("probe_passes", [True, False])
def test_auto_runs_the_kernel_exactly_where_its_probe_passes(monkeypatch, probe_passes):
    """IMPL auto: the kernel for float32 on the CPU outside autocast where oneDNN's
    in-place convolution passes its start-up probe (on this PyTorch: as the probe says;
    forced to fail: the reference), and the same fusion either way."""
    passes = cpu_gated_fusion.onednn_conv_add_works() and probe_passes
    monkeypatch.setattr(cpu_gated_fusion, "onednn_conv_add_works", lambda: passes)
    fusion = randomize_(build("gated", 4, 8), seed=2)
    visual, feats, boxes, mask = level_inputs(2, 7, 4, (5, 6), 8, seed=3)
    visual.requires_grad_(True)
    out = fusion(visual, feats, boxes, mask)
    assert ran_kernel(out) == passes
    assert torch.allclose(out, reference_fusion(fusion, visual, feats, boxes, mask), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ran_kernel(fusion(visual, feats, boxes, mask))
    as_float64 = copy.deepcopy(fusion).double()
    assert not ran_kernel(as_float64(visual.double(), feats.double(), boxes, mask))
    reference = randomize_(build("gated", 4, 8, "MODEL.TEXT_FUSION.IMPL", "reference"), seed=2)
    assert not ran_kernel(reference(visual, feats, boxes, mask))


def test_kernel_backward_twice_with_retained_graph():
    """The backward writes gradients over the tensors it saved, and hands buffers back
    for the next step, when the graph is freed after it; with retain_graph it must not,
    so a second backward gives the same, after another step in between too."""
    fusion = randomize_(build("gated", 4, 8), seed=2)
    boxes = random_boxes(2, 7, 48, 40, torch.Generator().manual_seed(3))

    def forward():
        visual = torch.randn(2, 4, 5, 6, requires_grad=True)
        feats = torch.randn(2, 7, 4, requires_grad=True)
        out = kernel_fusion(fusion, visual, feats, boxes, torch.ones(2, 7))
        return (out * torch.randn_like(out)).sum(), [visual, feats, *fusion.parameters()]

    loss, inputs = forward()
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    other_loss, other_inputs = forward()
    torch.autograd.grad(other_loss, other_inputs)
    second = torch.autograd.grad(loss, inputs, retain_graph=True)
    last = torch.autograd.grad(loss, inputs)
    for a, b, c in zip(first, second, last):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_painted_gated_mix_passes_gradcheck(reduce):
    """The written-out backward against numerical gradients, for the visual map, the
    token values and the gate weights (float64: the plain convolutions)."""
    generator = torch.Generator().manual_seed(3)
    channels, stride, grid = 3, 8, (4, 5)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(True)

    visual = torch.randn(2, channels, *grid, generator=generator, dtype=torch.float64)
    visual = visual.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    boxes = random_boxes(2, 6, grid[1] * stride, grid[0] * stride, generator).double()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    cells = token_cell_ranges(boxes, grid, stride)
    values, runs, scale = cpu_gated_fusion._paint_inputs(leaf(2, 6, channels), cells, mask, grid, reduce)
    weights = (leaf(channels, 1, 3, 3), leaf(channels), leaf(channels, 1, 3, 3))
    inputs = (visual, values, runs, scale, *weights, cpu_gated_fusion.ReusableMaps())
    assert torch.autograd.gradcheck(cpu_gated_fusion._PaintedGatedMix.apply, inputs)


def test_kernel_with_frozen_gate_and_visual():
    """Only the inputs that need gradients get them (frozen gate convs, a visual map
    from a frozen backbone), and those equal the reference's."""
    fusion = randomize_(build("gated", 4, 8), seed=1)
    fusion.gate_visual.requires_grad_(False)
    fusion.gate_text.requires_grad_(False)
    visual, feats, boxes, mask = level_inputs(2, 7, 4, (5, 6), 8, seed=2)
    feats.requires_grad_(True)
    out = kernel_fusion(fusion, visual, feats, boxes, mask)
    (grad_feats,) = torch.autograd.grad(out.square().sum(), feats)
    (expected,) = torch.autograd.grad(reference_fusion(fusion, visual, feats, boxes, mask).square().sum(), feats)
    assert fusion.gate_visual.weight.grad is None and fusion.gate_text.weight.grad is None
    assert torch.allclose(grad_feats, expected, atol=1e-5)


def test_reusable_maps_hand_back_the_largest_buffers():
    maps = cpu_gated_fusion.ReusableMaps()
    small, large, largest = (torch.empty(n) for n in (10, 40, 60))
    maps.give(small, largest.view(3, 20), large[:5])  # whole storages are kept
    taken = maps.take((2, 3, 5), torch.float32, CPU)
    assert taken.shape == (2, 3, 5) and taken.is_contiguous()
    assert taken.data_ptr() == largest.data_ptr()
    like = torch.empty(2, 4, 2, 2).contiguous(memory_format=torch.channels_last)
    taken = maps.take_like(like)
    assert taken.data_ptr() == large.data_ptr() and taken.stride() == like.stride()
    # Nothing kept: the small one was dropped for the two largest; then a fresh tensor.
    assert maps.take((4,), torch.float32, CPU).data_ptr() not in (small.data_ptr(), large.data_ptr())
    # A kept buffer too small or of another dtype is not used.
    maps.give(small)
    assert maps.take((11,), torch.float32, CPU).data_ptr() != small.data_ptr()
    maps.give(small)
    assert maps.take((4,), torch.float64, CPU).dtype == torch.float64


def test_reusable_maps_are_not_copied():
    maps = cpu_gated_fusion.ReusableMaps()
    kept = torch.empty(100)
    maps.give(kept)
    for clone in (copy.deepcopy(maps), pickle.loads(pickle.dumps(maps))):
        assert clone.take((100,), torch.float32, CPU).data_ptr() != kept.data_ptr()
    assert maps.take((100,), torch.float32, CPU).data_ptr() == kept.data_ptr()


@pytest.mark.skipif(not cpu_gated_fusion.onednn_conv_add_works(), reason="oneDNN's in-place convolution unavailable")
def test_kernel_reuses_its_maps_across_steps_of_changing_size():
    """Training steps on pages of changing size give what the same module without kept
    maps gives, and the gate of each step whose maps fit is a buffer the previous step's
    backward handed back (the visual map's gradient is written over the gate)."""
    fusion = randomize_(build("gated", 6, 8), seed=5)
    generator = torch.Generator().manual_seed(6)
    reused = []
    for grid in [(9, 7), (9, 7), (5, 6), (10, 8), (9, 7)]:
        fusion.zero_grad()
        fresh = copy.deepcopy(fusion)  # a copy keeps no maps
        visual = torch.randn(2, 6, *grid, generator=generator).contiguous(memory_format=torch.channels_last)
        feats = torch.randn(2, 9, 6, generator=generator)
        boxes = random_boxes(2, 9, grid[1] * 8, grid[0] * 8, generator)
        weights = torch.randn(2, 6, *grid, generator=generator)
        # Held here, so that a fresh map cannot land at the address of a kept one the step drops.
        kept = list(fusion.reusable_maps._buffers)
        results = []
        for module in (fusion, fresh):
            inputs = [visual.clone().requires_grad_(True), feats.clone().requires_grad_(True)]
            out = kernel_fusion(module, *inputs, boxes, torch.ones(2, 9))
            (out * weights).sum().backward()
            results.append([out, *(tensor.grad for tensor in inputs), *(p.grad for p in module.parameters())])
        for ours, expected in zip(*results):
            assert torch.equal(ours, expected)
        reused.append(results[0][1].data_ptr() in [buffer.data_ptr() for buffer in kept])
    # Nothing kept before the first step; (10, 8) outgrows the kept maps.
    assert reused == [False, True, True, False, True]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_depthwise_conv3x3_add_adds_in_place(layout):
    """out += conv(x), in the same storage, whichever path runs (oneDNN's in-place op for
    channels-last float32 on CPU, the plain ops otherwise)."""
    generator = torch.Generator().manual_seed(4)
    out = torch.randn(2, 5, 7, 6, generator=generator).contiguous(memory_format=layout)
    x = torch.randn(2, 5, 7, 6, generator=generator).contiguous(memory_format=layout)
    weight = torch.randn(5, 1, 3, 3, generator=generator)
    expected = out + torch.nn.functional.conv2d(x, weight, padding=1, groups=5)
    result = cpu_gated_fusion._depthwise_conv3x3_add_(out, x, weight)
    assert result.data_ptr() == out.data_ptr()
    assert torch.allclose(out, expected, atol=1e-5)


def test_paint_tokens_and_painting_along_runs_agree_at_a_pages_size():
    """The two paintings on a stride-4 map of line boxes, float32: the 2D difference
    array with its two prefix sums against the runs with their one."""
    generator = torch.Generator().manual_seed(8)
    xy = torch.rand(2, 300, 2, generator=generator) * torch.tensor([300.0, 380.0])
    boxes = torch.cat([xy, xy + torch.tensor([100.0, 12.0])], dim=-1)
    feats = torch.randn(2, 300, 16, generator=generator)
    mask = torch.ones(2, 300)
    runs = paint_along_runs(feats, boxes, mask, (100, 100), 4, "mean")
    assert torch.allclose(paint_tokens(feats, boxes, mask, (100, 100), 4), runs, atol=1e-5)
