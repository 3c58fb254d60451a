"""
The CPU kernel of the `gated` text fusion (`ditod.modeling.fusion.GatedFusion`).

The same function as the reference in ditod/modeling/fusion.py (painting, then
g = sigmoid(dwconv3x3(visual) + bias + dwconv3x3(text)), out = lerp(text, visual, g)),
shaped by what costs on a CPU: fresh map-sized tensors (each page-faults) and
`torch.cumsum` (it scans one position at a time). `GatedFusion` uses it with
MODEL.TEXT_FUSION.IMPL "auto" for float32 on the CPU outside autocast, where oneDNN's
in-place convolution passes its start-up probe (`applies`); tests/test_cpu_fusion_kernel.py
checks it against the reference, outputs and gradients.

- Painting along runs: a box's cells as runs, one per grid row (a text line covers a
  few rows; columns for vertical text), and both directions as prefix sums along the
  runs: forward adds each run's token at its first cell and takes it away past its last
  one, then sums along the rows once (one pass over the map where the reference's 2D
  difference array takes two); backward sums the incoming gradient along the rows and
  reads each run's sum from its two ends. The prefix sums are one vectorized add per row.
- The backward written out (`_PaintedGatedMix`), with one fresh map-sized tensor where
  autograd's makes about ten; its convolutions add into buffers it already has
  (oneDNN's in-place convolution, a private op of PyTorch's CPU build); the maps its
  backward is done with serve the next step (`ReusableMaps`); autograd's keep-graph
  query (private) tells whether the tensors it saved may be overwritten.

The runs have data-dependent shapes (`repeat_interleave`, `nonzero`): fine on a CPU,
a host-device synchronisation each on a GPU, which is one reason this is a CPU kernel.
"""

import functools
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["ReusableMaps", "applies", "paint_along_runs", "painted_gated_mix"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Runs:
    """
    The cells of the tokens' ranges as runs: one run per grid row of a range (per
    column, for ranges taller than wide in total: vertical text), R runs in all.
    Positions are flat indices into the B * H * W cells of a (B, H, W) grid.
    """

    dim: int  # the dim of a (B, H, W, C) grid that runs lie along: 2 (rows) or 1 (columns)
    step: int  # flat distance between neighbouring cells of a run: 1 or W
    tokens: int  # B * T
    token: torch.Tensor  # (R,) each run's token, an index into the B * T
    first: torch.Tensor  # (R,) each run's first cell
    last: torch.Tensor  # (R,) each run's last cell
    ended: torch.Tensor  # indices of the runs that end before the grid's edge
    started: torch.Tensor  # indices of the runs that start after the grid's edge


def token_runs(cells, mask, grid):
    """
    The `_Runs` of the real tokens' cell ranges; padding tokens have none.

    Args:
        cells: x0, y0, x1, y1, (B, T) inclusive cell ranges inside the grid
            (`ditod.modeling.fusion.token_cell_ranges`).
        mask: (B, T), nonzero for real tokens.
        grid: (H, W).
    """
    height, width = grid
    x0, y0, x1, y1 = cells
    keep = mask.bool()
    heights, widths = torch.where(keep, y1 - y0 + 1, 0), torch.where(keep, x1 - x0 + 1, 0)
    along_rows = bool(heights.sum() <= widths.sum())
    if along_rows:
        counts, across, across_step, lo, hi, step, size = heights, y0, width, x0, x1, 1, width
    else:
        counts, across, across_step, lo, hi, step, size = widths, x0, 1, y0, y1, width, height
    counts = counts.flatten()
    token = torch.repeat_interleave(counts)
    offset = torch.arange(len(token), device=token.device) - (counts.cumsum(0) - counts)[token]
    base = (token // x0.shape[-1]) * (height * width) + (across.flatten()[token] + offset) * across_step
    lo, hi = lo.flatten()[token], hi.flatten()[token]
    return _Runs(
        dim=2 if along_rows else 1,
        step=step,
        tokens=counts.numel(),
        token=token,
        first=base + lo * step,
        last=base + hi * step,
        ended=torch.nonzero(hi < size - 1).flatten(),
        started=torch.nonzero(lo > 0).flatten(),
    )


# The grids below are (B, H, W, C): channels last, so each token's C features are one
# contiguous row (index_add_ and index_select move whole rows) and the painted map comes
# out in the layout of the pyramid's visual features, which the gate convs need.


def _prefix_sum_(grid, dim):
    """In-place cumulative sum of `grid` along `dim`, one vectorized add per row:
    torch.cumsum scans each of the other H*C or W*C positions one at a time, about 4x
    slower on a stride-4 grid."""
    for i in range(1, grid.shape[dim]):
        grid.select(dim, i).add_(grid.select(dim, i - 1))
    return grid


def _paint_sum(values, runs, grid, maps=None):
    """Sum of each token's `values` (B, T, C) over its cells, as a (B, C, H, W)
    channels-last tensor: each run adds its token's values at its first cell and takes
    them away past its last one, and one prefix sum along the runs spreads them. The map
    comes from `maps` (a `ReusableMaps`) when given."""
    batch, _, channels = values.shape
    height, width = grid
    shape = (batch * height * width, channels)
    diff = values.new_zeros(shape) if maps is None else maps.take(shape, values.dtype, values.device).zero_()
    run_values = values.reshape(-1, channels)[runs.token]
    diff.index_add_(0, runs.first, run_values)
    diff.index_add_(0, runs.last[runs.ended] + runs.step, run_values[runs.ended], alpha=-1)
    return _prefix_sum_(diff.view(batch, height, width, channels), runs.dim).permute(0, 3, 1, 2)


def _paint(values, runs, scale, grid, maps=None):
    """scale * (sum of each token's values over its cells), (B, C, H, W) channels-last."""
    return _paint_sum(values, runs, grid, maps).mul_(scale)


def _box_sums(maps, scale, runs, overwrite=False):
    """
    For each token, the sum of `maps * scale` (B, C, H, W) over its cells, as (B, T, C):
    the gradient of `_paint`. With overwrite=True, `maps` is a buffer of the caller's
    that nothing else reads, and is used as the prefix sums (no fresh map).
    """
    batch, channels, height, width = maps.shape
    cells = maps.permute(0, 2, 3, 1)
    scale = scale.permute(0, 2, 3, 1)
    if overwrite and cells.is_contiguous():
        prefix = cells.mul_(scale)
    else:
        prefix = torch.mul(cells, scale, out=maps.new_empty(batch, height, width, channels))
    prefix = _prefix_sum_(prefix, runs.dim).view(-1, channels)
    # A run's sum: the prefix sum at its last cell less the one before its first cell.
    run_sums = prefix[runs.last]
    run_sums.index_add_(0, runs.started, prefix[runs.first[runs.started] - runs.step], alpha=-1)
    sums = run_sums.new_zeros(runs.tokens, channels).index_add_(0, runs.token, run_sums)
    return sums.view(batch, -1, channels)


def _paint_inputs(token_feats, cells, mask, grid, reduce):
    """What `_paint` needs: the tokens' values (at least float32), the runs of their
    cells, and the per-cell scale of `reduce` (1 / tokens on the cell for "mean", 1 for
    "sum", 0 on empty cells)."""
    # Sums accumulate in at least float32.
    dtype = torch.promote_types(token_feats.dtype, torch.float32)
    values = token_feats.to(dtype)
    runs = token_runs(cells, mask, grid)
    # Tokens per cell: small integers, exact in floating point, so empty cells are found
    # exactly and forced to 0 (the painted sums there can hold rounding residue).
    count = _paint_sum(values.new_ones(*values.shape[:2], 1), runs, grid)
    if reduce == "mean":
        scale = torch.where(count > 0, 1 / count.clamp(min=1), 0)
    else:
        scale = (count > 0).to(dtype)
    return values, runs, scale


class _PaintAlongRuns(torch.autograd.Function):
    """`_paint`, with gradients for the values."""

    @staticmethod
    def forward(ctx, values, runs, scale, grid):
        ctx.runs = runs
        ctx.save_for_backward(scale)
        return _paint(values, runs, scale, grid)

    @staticmethod
    def backward(ctx, grad_out):
        (scale,) = ctx.saved_tensors
        return _box_sums(grad_out, scale, ctx.runs), None, None, None


def paint_along_runs(token_feats, cells, mask, grid, reduce="mean"):
    """`ditod.modeling.fusion.paint_tokens` computed along runs, for `cells` (the tokens'
    `token_cell_ranges`): the kernel's painting on its own, for tests and benchmarks."""
    grid = tuple(grid)
    inputs = _paint_inputs(token_feats, cells, mask, grid, reduce)
    return _PaintAlongRuns.apply(*inputs, grid).to(token_feats.dtype)


def _onednn_conv_add_(out, x, weight):
    """oneDNN's convolution with a fused in-place add, a private op of PyTorch's CPU
    build (the one torch.compile's CPU code uses)."""
    channels = x.shape[1]
    return torch.ops.mkldnn._convolution_pointwise_(
        out, x, weight, None, [1, 1], [1, 1], [1, 1], channels, "add", 1.0, None, [], None
    )


@functools.cache
def onednn_conv_add_works():
    """The start-up probe: whether `_onednn_conv_add_` is there and adds the convolution
    into its first argument, checked once, on a small input, against F.conv2d. Private
    ops can change between PyTorch releases; where it fails, `GatedFusion` uses the
    reference."""
    generator = torch.Generator().manual_seed(0)
    out, x = (
        torch.randn(2, 3, 5, 4, generator=generator).contiguous(memory_format=torch.channels_last) for _ in range(2)
    )
    weight = torch.randn(3, 1, 3, 3, generator=generator)
    expected = out + F.conv2d(x, weight, padding=1, groups=3)
    try:
        result = _onednn_conv_add_(out, x, weight)
    except (AttributeError, RuntimeError) as error:
        logger.info("oneDNN's in-place convolution is not available (%s); the gated fusion uses the reference", error)
        return False
    works = result.data_ptr() == out.data_ptr() and torch.allclose(out, expected, atol=1e-5)
    if not works:
        logger.info("oneDNN's in-place convolution gave another result; the gated fusion uses the reference")
    return works


def applies(visual, *weights):
    """Whether `GatedFusion` (IMPL "auto") runs this kernel for these: float32 CPU
    tensors outside autocast, with oneDNN on and its in-place convolution working."""
    return (
        visual.device.type == "cpu"
        and all(tensor.dtype == torch.float32 for tensor in (visual, *weights))
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.enabled
        and onednn_conv_add_works()
    )


def _onednn_conv_add_applies(out, x, weight):
    """Whether `_onednn_conv_add_` takes these: float32 channels-last maps on CPU."""
    return (
        x.device.type == "cpu"
        and out.dtype == x.dtype == weight.dtype == torch.float32
        and out.is_contiguous(memory_format=torch.channels_last)
        and x.is_contiguous(memory_format=torch.channels_last)
        and torch.backends.mkldnn.enabled
        and onednn_conv_add_works()
    )


def _depthwise_conv3x3_add_(out, x, weight):
    """
    out += the depthwise 3x3 convolution of x (padding 1, no bias), in place.

    For float32 channels-last maps on CPU, oneDNN writes the convolution into `out`:
    about 20 ms at a page's stride-4 map, against about 55 ms for a convolution into a
    fresh map (its page faults) plus the add. Other inputs (float64 in the tests) take
    the plain ops.
    """
    if _onednn_conv_add_applies(out, x, weight):
        return _onednn_conv_add_(out, x, weight)
    return out.add_(F.conv2d(x, weight, padding=1, groups=x.shape[1]))


def _graph_kept():
    """Whether the running backward pass keeps the graph (retain_graph), so that the
    tensors saved for backward must stay intact. Asks autograd (a private call), and
    assumes so where it cannot."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep_graph is None or keep_graph()


class ReusableMaps:
    """
    Map-sized CPU buffers that a `GatedFusion`'s backward pass is done with (the painted
    text map, the gate's gradient), for its next forward pass (the text map, the gate).
    A fresh map-sized tensor on CPU costs its page faults (about 30 ms for a page's
    stride-4 map at batch 2, three passes over it); GPUs' caching allocators reuse
    memory already. Keeps the two largest buffers handed back, so that multi-scale
    training settles on its largest maps; between steps it holds what a step holds
    anyway. Copies and pickles start empty.
    """

    def __init__(self):
        self._buffers = []

    def __reduce__(self):
        return type(self), ()

    def take(self, shape, dtype, device):
        """An uninitialised contiguous tensor of `shape`: a kept buffer where one fits."""
        numel = math.prod(shape)
        if device.type == "cpu" and self._buffers:
            buffer = self._buffers.pop()
            if buffer.dtype == dtype and buffer.numel() >= numel:
                return buffer[:numel].view(shape)
        return torch.empty(shape, dtype=dtype, device=device)

    def take_like(self, tensor):
        """`take` in the shape and memory layout of a dense `tensor`."""
        return self.take((tensor.numel(),), tensor.dtype, tensor.device).as_strided(tensor.shape, tensor.stride())

    def give(self, *tensors):
        """Hands back tensors that nothing will read again; their whole storage is kept."""
        buffers = self._buffers + [
            torch.empty(0, dtype=tensor.dtype).set_(tensor.untyped_storage())
            for tensor in tensors
            if tensor.device.type == "cpu"
        ]
        self._buffers = sorted(buffers, key=torch.Tensor.numel)[-2:]


class _PaintedGatedMix(torch.autograd.Function):
    """
    The gated mix, painting included:
        text = _paint(values, ...),
        g = sigmoid(dwconv3x3(visual, weight_visual, bias) + dwconv3x3(text, weight_text)),
        out = lerp(text, visual, g) = g * visual + (1 - g) * text.

    The function autograd would differentiate from the reference, with the backward
    written out: autograd's makes about ten fresh map-sized tensors (lerp's three
    partial products, 1 - g, visual - text, the sigmoid's gradient, the sums of the two
    paths into visual and text, the text map's prefix sums). Fresh map-sized tensors are
    the cost on CPU: each page-faults. Here the forward makes the ones it keeps or
    returns (text, g, out) and the backward one, the gate's gradient. The input
    gradients of visual and text are written over g and text, which are no longer
    needed once the graph is freed (a fresh map each when it is kept), and the
    convolutions' input gradients are added into them in place (a stride-1
    convolution's input gradient is the convolution of the output gradient with the
    kernel flipped). Text and g come from `maps`, to which the backward hands back the
    gate's gradient and text's buffer: of the four maps, only the two that leave (out,
    and g as visual's gradient) are fresh each step.
    """

    @staticmethod
    def forward(ctx, visual, values, runs, scale, weight_visual, bias, weight_text, maps):
        channels = visual.shape[1]
        ctx.runs, ctx.maps = runs, maps
        text = _paint(values, runs, scale, visual.shape[-2:], maps).to(visual.dtype)
        if _onednn_conv_add_applies(visual, visual, weight_visual):
            # Into a kept buffer, in visual's layout: no fresh map to fault in.
            g = maps.take_like(visual).copy_(bias.view(1, channels, 1, 1).expand_as(visual))
            _onednn_conv_add_(g, visual, weight_visual)
        else:
            g = F.conv2d(visual, weight_visual, bias, padding=1, groups=channels)
        _depthwise_conv3x3_add_(g, text, weight_text).sigmoid_()
        ctx.save_for_backward(visual, text, g, scale, weight_visual, weight_text)
        return torch.lerp(text, visual, g)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        visual, text, g, scale, weight_visual, weight_text = ctx.saved_tensors
        needs = ctx.needs_input_grad
        channels = visual.shape[1]
        # d out / d g = visual - text; then through the sigmoid, in place.
        grad_pre = torch.sub(visual, text).mul_(grad)
        torch.ops.aten.sigmoid_backward.grad_input(grad_pre, g, grad_input=grad_pre)
        conv = ([1, 1], [1, 1], [1, 1], False, [0, 0], channels)  # stride, padding, dilation, transposed
        _, grad_weight_visual, grad_bias = torch.ops.aten.convolution_backward(
            grad_pre, visual, weight_visual, [channels], *conv, [False, needs[4], needs[5]]
        )
        _, grad_weight_text, _ = torch.ops.aten.convolution_backward(
            grad_pre, text, weight_text, None, *conv, [False, needs[6], False]
        )
        kept = _graph_kept()
        grad_visual = grad_values = None
        if needs[1]:
            # d out / d text = 1 - g, plus the text convolution's input gradient; g is
            # still intact, text no longer needed.
            grad_text = torch.addcmul(grad, grad, g, value=-1, out=torch.empty_like(g) if kept else text)
            _depthwise_conv3x3_add_(grad_text, grad_pre, weight_text.flip(-1, -2))
            grad_values = _box_sums(grad_text.to(scale.dtype), scale, ctx.runs, overwrite=True)
        if needs[0]:
            grad_visual = torch.mul(grad, g, out=torch.empty_like(g) if kept else g)
            _depthwise_conv3x3_add_(grad_visual, grad_pre, weight_visual.flip(-1, -2))
        ctx.maps.give(grad_pre, *([] if kept else [text]))
        return grad_visual, grad_values, None, None, grad_weight_visual, grad_bias, grad_weight_text, None


def painted_gated_mix(visual, token_feats, cells, mask, reduce, weight_visual, bias, weight_text, maps):
    """
    The gated mix of `GatedFusion`, painting included, with the backward written out.

    Args:
        visual: (B, C, H, W) channels-last visual map.
        token_feats: (B, T, C) the tokens' projected features.
        cells: x0, y0, x1, y1, (B, T) the tokens' cell ranges on visual's grid.
        mask: (B, T), nonzero for real tokens.
        reduce: "mean" or "sum" (see `paint_tokens`).
        weight_visual, bias, weight_text: the gate convolutions' (C, 1, 3, 3) weights
            and (C,) bias.
        maps: the module's `ReusableMaps`.
    """
    values, runs, scale = _paint_inputs(token_feats, cells, mask, tuple(visual.shape[-2:]), reduce)
    return _PaintedGatedMix.apply(visual, values, runs, scale, weight_visual, bias, weight_text, maps)
