import math

import pytest
import torch

from ditod.modeling.fusion import TextFusion, paint_tokens


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


@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("stride", [4, 8, 32])
@pytest.mark.parametrize("vertical", [False, True])
def test_paint_tokens_matches_reference_loop(reduce, stride, vertical):
    """Horizontal lines are painted along grid rows, vertical text along columns."""
    from ditod.modeling.fusion import _token_runs

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
    out = paint_tokens(feats_a, boxes, mask, grid, stride, reduce)
    ref = reference_paint(feats_b, boxes, mask, grid, stride, reduce)
    assert _token_runs(boxes, mask, grid, stride).dim == (1 if vertical else 2)
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


def test_gated_fusion_starts_close_to_visual_and_learns_from_text():
    torch.manual_seed(0)
    fusion = TextFusion(channels=6, stride=8, mode="gated", gate_bias_init=3.0)
    visual = torch.randn(1, 6, 4, 4)
    feats = torch.randn(1, 3, 6, requires_grad=True)
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [8.0, 8.0, 30.0, 30.0], [0.0, 24.0, 31.0, 31.0]]])
    out = fusion(visual, feats, boxes, torch.ones(1, 3))
    gate = torch.sigmoid(torch.tensor(3.0))
    # At initialization the gate is sigmoid(bias) everywhere: the output is mostly visual.
    text = paint_tokens(fusion.text_proj(feats), boxes, torch.ones(1, 3), (4, 4), 8, "mean")
    assert torch.allclose(out, gate * visual + (1 - gate) * text, atol=1e-6)
    assert (out - visual).abs().max() < 0.1 * visual.abs().max()
    out.sum().backward()
    assert fusion.gate_visual.weight.grad.abs().sum() > 0
    assert fusion.gate_text.weight.grad.abs().sum() > 0
    assert feats.grad.abs().sum() > 0


def test_gate_is_not_bounded_below_by_one_half():
    # The research code's sigmoid(relu(x)) never went below 0.5; ours must reach 0.
    fusion = TextFusion(channels=2, stride=4, mode="gated", gate_bias_init=-20.0)
    visual = torch.ones(1, 2, 2, 2)
    feats = torch.full((1, 1, 2), 5.0)
    with torch.no_grad():
        fusion.text_proj.weight.copy_(torch.eye(2))
        out = fusion(visual, feats, torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]), torch.ones(1, 1))
    assert torch.allclose(out, torch.full_like(out, 5.0), atol=1e-6)


def test_add_fusion_starts_equal_to_visual():
    fusion = TextFusion(channels=4, stride=8, mode="add")
    visual = torch.randn(2, 4, 3, 3)
    out = fusion(visual, torch.randn(2, 5, 4), torch.rand(2, 5, 4) * 24, torch.ones(2, 5))
    assert torch.equal(out, visual)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gated_fusion_matches_grouped_conv_definition(layout, dtype):
    """With trained (non-zero) gate weights, in either memory layout of the visual map:
    g = sigmoid(conv3x3 over [visual; text], one group per channel), g*visual + (1-g)*text,
    values and gradients. float32 takes oneDNN's in-place convolutions on CPU."""
    torch.manual_seed(0)
    channels, stride, grid = 3, 8, (5, 4)
    fusion = TextFusion(channels, stride, mode="gated", gate_bias_init=0.5).to(dtype)
    with torch.no_grad():
        for conv in (fusion.gate_visual, fusion.gate_text):
            conv.weight.normal_()
    visual = torch.randn(2, channels, *grid, dtype=dtype)
    feats = torch.randn(2, 6, channels, dtype=dtype)
    boxes = random_boxes(2, 6, grid[1] * stride, grid[0] * stride, torch.Generator().manual_seed(1)).to(dtype)
    mask = torch.ones(2, 6)
    weights = torch.randn(2, channels, *grid, dtype=dtype)
    atol = 1e-10 if dtype == torch.float64 else 1e-5

    def grads(out, inputs):
        return torch.autograd.grad((out * weights).sum(), inputs)

    visual_a = visual.contiguous(memory_format=layout).requires_grad_(True)
    feats_a = feats.clone().requires_grad_(True)
    out = fusion(visual_a, feats_a, boxes, mask)
    params = [fusion.gate_visual.weight, fusion.gate_visual.bias, fusion.gate_text.weight]
    ours = grads(out, [visual_a, feats_a, *params])

    visual_b = visual.clone().requires_grad_(True)
    feats_b = feats.clone().requires_grad_(True)
    text = paint_tokens(fusion.text_proj(feats_b), boxes, mask, grid, stride, "mean")
    pairs = torch.stack([visual_b, text], dim=2).flatten(1, 2)  # v0, t0, v1, t1, ...
    weight = torch.stack([fusion.gate_visual.weight, fusion.gate_text.weight], dim=1).flatten(1, 2)
    gate = torch.sigmoid(torch.nn.functional.conv2d(pairs, weight, fusion.gate_visual.bias, padding=1, groups=channels))
    ref = gate * visual_b + (1 - gate) * text
    expected = grads(ref, [visual_b, feats_b, *params])

    assert torch.allclose(out, ref, atol=atol / 100)
    for a, b in zip(ours, expected):
        assert torch.allclose(a, b, atol=atol)


def test_gated_fusion_backward_twice_with_retained_graph():
    """The backward writes gradients over the tensors it saved, and hands buffers back
    for the next step, when the graph is freed after it; with retain_graph it must not,
    so a second backward gives the same, after another step in between too."""
    torch.manual_seed(2)
    fusion = TextFusion(4, 8, mode="gated", gate_bias_init=0.3)
    with torch.no_grad():
        fusion.gate_visual.weight.normal_()
        fusion.gate_text.weight.normal_()
    boxes = random_boxes(2, 7, 48, 40, torch.Generator().manual_seed(3))

    def forward():
        visual = torch.randn(2, 4, 5, 6, requires_grad=True)
        feats = torch.randn(2, 7, 4, requires_grad=True)
        out = fusion(visual, feats, boxes, torch.ones(2, 7))
        return (out * torch.randn_like(out)).sum(), [visual, feats, *fusion.parameters()]

    loss, inputs = forward()
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    other_loss, other_inputs = forward()
    torch.autograd.grad(other_loss, other_inputs)
    second = torch.autograd.grad(loss, inputs, retain_graph=True)
    last = torch.autograd.grad(loss, inputs)
    for a, b, c in zip(first, second, last):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_reusable_maps_hand_back_the_largest_buffers():
    from ditod.modeling.fusion import ReusableMaps

    maps = ReusableMaps()
    small, large, largest = (torch.empty(n) for n in (10, 40, 60))
    maps.give(small, largest.view(3, 20), large[:5])  # whole storages are kept
    taken = maps.take((2, 3, 5), torch.float32, torch.device("cpu"))
    assert taken.shape == (2, 3, 5) and taken.is_contiguous()
    assert taken.data_ptr() == largest.data_ptr()
    like = torch.empty(2, 4, 2, 2).contiguous(memory_format=torch.channels_last)
    taken = maps.take_like(like)
    assert taken.data_ptr() == large.data_ptr() and taken.stride() == like.stride()
    # Nothing kept: the small one was dropped for the two largest; then a fresh tensor.
    assert maps.take((4,), torch.float32, torch.device("cpu")).data_ptr() not in (small.data_ptr(), large.data_ptr())
    # A kept buffer too small or of another dtype is not used.
    maps.give(small)
    assert maps.take((11,), torch.float32, torch.device("cpu")).data_ptr() != small.data_ptr()
    maps.give(small)
    assert maps.take((4,), torch.float64, torch.device("cpu")).dtype == torch.float64


def test_reusable_maps_are_not_copied():
    import copy
    import pickle

    from ditod.modeling.fusion import ReusableMaps

    maps = ReusableMaps()
    kept = torch.empty(100)
    maps.give(kept)
    for clone in (copy.deepcopy(maps), pickle.loads(pickle.dumps(maps))):
        assert clone.take((100,), torch.float32, torch.device("cpu")).data_ptr() != kept.data_ptr()
    assert maps.take((100,), torch.float32, torch.device("cpu")).data_ptr() == kept.data_ptr()


def test_gated_fusion_reuses_its_maps_across_steps_of_changing_size():
    """Training steps (float32, channels-last: oneDNN's path on CPU) on pages of changing
    size give what the same module without kept maps gives, and the gate of a step is
    a buffer the previous step's backward handed back."""
    import copy

    torch.manual_seed(5)
    fusion = TextFusion(6, 8, mode="gated", gate_bias_init=0.2)
    with torch.no_grad():
        fusion.gate_visual.weight.normal_()
        fusion.gate_text.weight.normal_()
    generator = torch.Generator().manual_seed(6)
    for grid in [(9, 7), (9, 7), (5, 6), (10, 8), (9, 7)]:
        fusion.zero_grad()
        fresh = copy.deepcopy(fusion)  # a copy keeps no maps
        visual = torch.randn(2, 6, *grid, generator=generator).contiguous(memory_format=torch.channels_last)
        feats = torch.randn(2, 9, 6, generator=generator)
        boxes = random_boxes(2, 9, grid[1] * 8, grid[0] * 8, generator)
        weights = torch.randn(2, 6, *grid, generator=generator)
        kept = [buffer.data_ptr() for buffer in fusion.reusable_maps._buffers]
        results = []
        for module in (fusion, fresh):
            inputs = [visual.clone().requires_grad_(True), feats.clone().requires_grad_(True)]
            out = module(*inputs, boxes, torch.ones(2, 9))
            (out * weights).sum().backward()
            results.append([out, *(tensor.grad for tensor in inputs), *(p.grad for p in module.parameters())])
        for ours, expected in zip(*results):
            assert torch.equal(ours, expected)
        if kept and grid != (10, 8):  # (10, 8) outgrows the kept maps
            # The visual map's gradient is written over the gate.
            assert results[0][1].data_ptr() in kept


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_depthwise_conv3x3_add_adds_in_place(layout):
    """out += conv(x), in the same storage, whichever path runs (oneDNN's in-place op for
    channels-last float32 on CPU, the plain ops otherwise)."""
    from ditod.modeling.fusion import _depthwise_conv3x3_add_

    generator = torch.Generator().manual_seed(4)
    out = torch.randn(2, 5, 7, 6, generator=generator).contiguous(memory_format=layout)
    x = torch.randn(2, 5, 7, 6, generator=generator).contiguous(memory_format=layout)
    weight = torch.randn(5, 1, 3, 3, generator=generator)
    expected = out + torch.nn.functional.conv2d(x, weight, padding=1, groups=5)
    result = _depthwise_conv3x3_add_(out, x, weight)
    assert result.data_ptr() == out.data_ptr()
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
def test_onednn_in_place_convolution_is_used_where_built():
    """The probe accepts oneDNN's in-place convolution on this PyTorch, so the gate's
    fast CPU path is not silently lost when PyTorch changes."""
    from ditod.modeling.fusion import _onednn_conv_add_works

    assert _onednn_conv_add_works()


@pytest.mark.parametrize("mode", ["gated", "add"])
@pytest.mark.parametrize("visual_dtype", [torch.float32, torch.bfloat16])
def test_fusion_under_autocast(mode, visual_dtype):
    """With AMP the pyramid mixes dtypes: the deconv levels come out in half precision,
    the levels fed straight from the transformer's LayerNorm in float32. CPU autocast
    (bfloat16) stands in for CUDA's float16 here."""
    fusion = TextFusion(6, 8, mode=mode, gate_bias_init=0.0)
    visual = torch.randn(2, 6, 4, 5, dtype=visual_dtype, requires_grad=True)
    feats = torch.randn(2, 3, 6, requires_grad=True)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 8.0], [8.0, 8.0, 39.0, 31.0], [30.0, 0.0, 40.0, 8.0]]).expand(2, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(visual, feats, boxes, torch.ones(2, 3))
    assert out.dtype == visual_dtype
    out.float().sum().backward()
    assert torch.isfinite(visual.grad).all() and fusion.text_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_painted_gated_mix_passes_gradcheck(reduce):
    """The written-out backward against numerical gradients, for the visual map, the
    token values and the gate weights."""
    from ditod.modeling.fusion import ReusableMaps, _paint_inputs, _PaintedGatedMix

    generator = torch.Generator().manual_seed(3)
    channels, stride, grid = 3, 8, (4, 5)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(True)

    visual = torch.randn(2, channels, *grid, generator=generator, dtype=torch.float64)
    visual = visual.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    boxes = random_boxes(2, 6, grid[1] * stride, grid[0] * stride, generator).double()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    values, runs, scale = _paint_inputs(leaf(2, 6, channels), boxes, mask, grid, stride, reduce)
    weights = (leaf(channels, 1, 3, 3), leaf(channels), leaf(channels, 1, 3, 3))
    inputs = (visual, values, runs, scale, *weights, ReusableMaps())
    assert torch.autograd.gradcheck(_PaintedGatedMix.apply, inputs)


def test_gated_fusion_with_frozen_gate_and_visual():
    """Only the inputs that need gradients get them (frozen gate convs, a visual map
    from a frozen backbone), and those equal autograd's on the same formula."""
    torch.manual_seed(1)
    fusion = TextFusion(4, 8, mode="gated", gate_bias_init=0.2)
    with torch.no_grad():
        fusion.gate_visual.weight.normal_()
        fusion.gate_text.weight.normal_()
    fusion.gate_visual.requires_grad_(False)
    fusion.gate_text.requires_grad_(False)
    visual = torch.randn(2, 4, 5, 6)
    feats = torch.randn(2, 7, 4, requires_grad=True)
    boxes = random_boxes(2, 7, 48, 40, torch.Generator().manual_seed(2))
    mask = torch.ones(2, 7)
    out = fusion(visual, feats, boxes, mask)
    (grad_feats,) = torch.autograd.grad(out.square().sum(), feats)

    text = paint_tokens(fusion.text_proj(feats), boxes, mask, (5, 6), 8, "mean")
    gate = torch.sigmoid(fusion.gate_visual(visual) + fusion.gate_text(text))
    (expected,) = torch.autograd.grad(torch.lerp(text, visual, gate).square().sum(), feats)
    assert fusion.gate_visual.weight.grad is None and fusion.gate_text.weight.grad is None
    assert torch.allclose(grad_feats, expected, atol=1e-5)
