"""Text features painted onto a feature map, and the modules that mix them in.

`paint_tokens` turns per-token features into a (B, C, H, W) map by adding each
token's feature to every grid cell its box covers. Both directions are integral
images: forward scatters four signed corner updates per token into a difference
array (O(T*C)) and takes two cumulative sums over the grid (O(H*W*C)); backward
takes the integral image of the incoming gradient and reads each token's box sum
from four corners. No Python loop over tokens, no device-to-host copy, and the
large buffers are summed in place (fresh allocations are what costs on CPU).

The gated mix, painting included, has its backward written out (`_PaintedGatedMix`) for
the same reason; on CPU its convolutions add into buffers it already has, and the maps
its backward is done with serve the next step (`ReusableMaps`).
"""
import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["paint_tokens", "token_cell_ranges", "TextFusion", "build_text_fusion"]

logger = logging.getLogger(__name__)


def token_cell_ranges(token_boxes, grid, stride):
    """
    The grid cells each box covers, as inclusive index ranges.

    Cell (i, j) spans pixels [j*s, (j+1)*s) x [i*s, (i+1)*s). A box covers the cells
    it overlaps with positive area; a box of zero width (height) covers the one
    column (row) that contains it. Ranges are clipped to the grid.

    Returns:
        x0, y0, x1, y1: LongTensors shaped like token_boxes[..., 0].
    """
    height, width = grid
    boxes = token_boxes.detach()
    x0 = torch.floor(boxes[..., 0] / stride)
    y0 = torch.floor(boxes[..., 1] / stride)
    x1 = torch.maximum(torch.ceil(boxes[..., 2] / stride) - 1, x0)
    y1 = torch.maximum(torch.ceil(boxes[..., 3] / stride) - 1, y0)
    x0, x1 = (v.clamp(0, width - 1).long() for v in (x0, x1))
    y0, y1 = (v.clamp(0, height - 1).long() for v in (y0, y1))
    return x0, y0, x1, y1


def _corners(x0, y0, x1, y1):
    """Rows, columns and signs of the corners (y0, x0), (y0, x1 + 1), (y1 + 1, x0),
    (y1 + 1, x1 + 1) of each range, each (B, T * 4)."""
    rows = torch.stack([y0, y0, y1 + 1, y1 + 1], dim=-1).flatten(1)
    cols = torch.stack([x0, x1 + 1, x0, x1 + 1], dim=-1).flatten(1)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], device=x0.device).repeat(x0.shape[-1])
    return rows, cols, signs.expand_as(rows)


def _difference_corners(rows, cols, signs, grid):
    """The corners as flat positions in an H x W difference array. A corner on row H or
    column W changes only cells past the grid: it is dropped (sign 0), so the painted
    map is the whole array, with no border to cut off and copy."""
    height, width = grid
    inside = (rows < height) & (cols < width)
    return torch.where(inside, rows * width + cols, 0), signs * inside


# The grids below are (B, H, W, C): channels last, so each token's C features are one
# contiguous row (scatter and gather move whole rows) and the painted map comes out in
# the layout of the pyramid's visual features, which the gate convs need.


def _prefix_sum_(grid, dim):
    """In-place cumulative sum of `grid` along `dim`. On CPU, one vectorized add per
    row: torch.cumsum scans each of the other H*C or W*C positions one at a time, about
    4x slower on a stride-4 grid. Elsewhere torch.cumsum (one kernel, not one per row)."""
    if grid.device.type != "cpu":
        return grid.cumsum_(dim)
    for i in range(1, grid.shape[dim]):
        grid.select(dim, i).add_(grid.select(dim, i - 1))
    return grid


def _paint_sum(values, positions, signs, grid, maps=None):
    """Sum of each token's `values` (B, T, C) over its cells, as a (B, C, H, W)
    channels-last tensor; `positions` and `signs` from `_difference_corners`. The map
    comes from `maps` (a `ReusableMaps`) when given."""
    batch, num_tokens, channels = values.shape
    height, width = grid
    updates = (values.unsqueeze(2) * signs.view(batch, num_tokens, 4, 1).to(values.dtype)).flatten(1, 2)
    shape = (batch, height * width, channels)
    diff = values.new_zeros(shape) if maps is None else maps.take(shape, values.dtype, values.device).zero_()
    diff.scatter_add_(1, positions.unsqueeze(-1).expand(-1, -1, channels), updates)
    integral = _prefix_sum_(_prefix_sum_(diff.view(batch, height, width, channels), 1), 2)
    return integral.permute(0, 3, 1, 2)


def _paint(values, rows, cols, signs, scale, grid, maps=None):
    """scale * (sum of each token's values over its cells), (B, C, H, W) channels-last."""
    return _paint_sum(values, *_difference_corners(rows, cols, signs, grid), grid, maps).mul_(scale)


def _box_sums(maps, scale, rows, cols, signs, overwrite=False):
    """
    For each token, the sum of `maps * scale` (B, C, H, W) over its cells, as (B, T, C):
    the gradient of `_paint`. With overwrite=True, `maps` is a buffer of the caller's
    that nothing else reads, and is used as the integral image (no fresh map).
    """
    batch, channels, height, width = maps.shape
    cells = maps.permute(0, 2, 3, 1)
    scale = scale.permute(0, 2, 3, 1)
    if overwrite and cells.is_contiguous():
        integral = cells.mul_(scale)
    else:
        integral = torch.mul(cells, scale, out=maps.new_empty(batch, height, width, channels))
    _prefix_sum_(_prefix_sum_(integral, 1), 2)
    # integral[y, x] sums rows <= y and columns <= x, so a box's sum is the signed sum of
    # the integral one row and column before the four corners the forward pass
    # scattered to; there is nothing before row or column 0.
    inside = (rows > 0) & (cols > 0)
    positions = torch.where(inside, (rows - 1) * width + cols - 1, 0).unsqueeze(-1).expand(-1, -1, channels)
    cells = integral.reshape(batch, -1, channels).gather(1, positions)
    return (cells * (signs * inside).unsqueeze(-1).to(cells.dtype)).view(batch, -1, 4, channels).sum(2)


class _PaintTokens(torch.autograd.Function):
    """`_paint`, with gradients for the values."""

    @staticmethod
    def forward(ctx, values, rows, cols, signs, scale, grid):
        ctx.save_for_backward(rows, cols, signs, scale)
        return _paint(values, rows, cols, signs, scale, grid)

    @staticmethod
    def backward(ctx, grad_out):
        rows, cols, signs, scale = ctx.saved_tensors
        return _box_sums(grad_out, scale, rows, cols, signs), None, None, None, None, None


def _paint_inputs(token_feats, token_boxes, mask, grid, stride, reduce):
    """What `_paint` needs: the tokens' values (padding zeroed, at least float32), the
    corners of their cell ranges with signs, and the per-cell scale of `reduce`."""
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    keep = mask.bool()
    # Sums accumulate in at least float32, whatever the autocast dtype.
    dtype = torch.promote_types(token_feats.dtype, torch.float32)
    values = torch.where(keep.unsqueeze(-1), token_feats, 0).to(dtype)
    rows, cols, signs = _corners(*token_cell_ranges(token_boxes, grid, stride))
    # Tokens per cell: small integers, exact in floating point, so empty cells are found
    # exactly and forced to 0 (the painted sums there can hold rounding residue).
    count = _paint_sum(keep.to(dtype).unsqueeze(-1), *_difference_corners(rows, cols, signs, grid), grid).round()
    if reduce == "mean":
        scale = torch.where(count > 0, 1 / count.clamp(min=1), 0)
    else:
        scale = (count > 0).to(dtype)
    return values, rows, cols, signs, scale


def paint_tokens(token_feats, token_boxes, mask, grid, stride, reduce="mean"):
    """
    Paint token features onto a feature grid where the tokens sit on the page.

    Args:
        token_feats: (B, T, C) features of the tokens.
        token_boxes: (B, T, 4) x0, y0, x1, y1 in pixels of the padded image.
        mask: (B, T), nonzero for real tokens; padding tokens paint nothing.
        grid: (H, W) of the target map.
        stride: pixels per cell.
        reduce: "sum" adds the features of the tokens on a cell; "mean" divides
            by their number (cells without tokens stay 0).

    Returns:
        (B, C, H, W) text map in the dtype of token_feats, channels-last in memory.
    """
    grid = tuple(grid)
    inputs = _paint_inputs(token_feats, token_boxes, mask, grid, stride, reduce)
    return _PaintTokens.apply(*inputs, grid).to(token_feats.dtype)


def _onednn_conv_add_(out, x, weight):
    """oneDNN's convolution with a fused in-place add, a private op of PyTorch's CPU
    build (the one torch.compile's CPU code uses)."""
    channels = x.shape[1]
    return torch.ops.mkldnn._convolution_pointwise_(
        out, x, weight, None, [1, 1], [1, 1], [1, 1], channels, "add", 1.0, None, [], None
    )


@functools.cache
def _onednn_conv_add_works():
    """Whether `_onednn_conv_add_` is there and adds the convolution into its first
    argument: checked once, on a small input, against F.conv2d. Private ops can change
    between PyTorch releases; where it fails, the plain ops are used."""
    generator = torch.Generator().manual_seed(0)
    out, x = (
        torch.randn(2, 3, 5, 4, generator=generator).contiguous(memory_format=torch.channels_last) for _ in range(2)
    )
    weight = torch.randn(3, 1, 3, 3, generator=generator)
    expected = out + F.conv2d(x, weight, padding=1, groups=3)
    try:
        result = _onednn_conv_add_(out, x, weight)
    except (AttributeError, RuntimeError) as error:
        logger.info("oneDNN's in-place convolution is not available (%s); the gate uses plain ops", error)
        return False
    works = result.data_ptr() == out.data_ptr() and torch.allclose(out, expected, atol=1e-5)
    if not works:
        logger.info("oneDNN's in-place convolution gave another result; the gate uses plain ops")
    return works


def _onednn_conv_add_applies(out, x, weight):
    """Whether `_onednn_conv_add_` takes these: float32 channels-last maps on CPU."""
    return (
        x.device.type == "cpu"
        and out.dtype == x.dtype == weight.dtype == torch.float32
        and out.is_contiguous(memory_format=torch.channels_last)
        and x.is_contiguous(memory_format=torch.channels_last)
        and torch.backends.mkldnn.enabled
        and _onednn_conv_add_works()
    )


def _depthwise_conv3x3_add_(out, x, weight):
    """
    out += the depthwise 3x3 convolution of x (padding 1, no bias), in place.

    For float32 channels-last maps on CPU, oneDNN writes the convolution into `out`:
    about 20 ms at a page's stride-4 map, against about 55 ms for a convolution into a
    fresh map (its page faults) plus the add.
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
    Map-sized CPU buffers that a `TextFusion`'s backward pass is done with (the painted
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
    The gated mix of `TextFusion`, painting included:
        text = _paint(values, ...),
        g = sigmoid(dwconv3x3(visual, weight_visual, bias) + dwconv3x3(text, weight_text)),
        out = lerp(text, visual, g) = g * visual + (1 - g) * text.

    The function autograd would differentiate from `paint_tokens` and the ops, with the
    backward written out: autograd's makes about ten fresh map-sized tensors (lerp's
    three partial products, 1 - g, visual - text, the sigmoid's gradient, the sums of
    the two paths into visual and text, the text map's integral image). Fresh map-sized
    tensors are the cost on CPU: each page-faults. Here the forward makes the ones it
    keeps or returns (text, g, out) and the backward one, the gate's gradient. The input
    gradients of visual and text are written over g and text, which are no longer
    needed once the graph is freed (a fresh map each when it is kept), and the
    convolutions' input gradients are added into them in place (a stride-1
    convolution's input gradient is the convolution of the output gradient with the
    kernel flipped). On CPU, text and g come from `maps`, to which the backward hands
    back the gate's gradient and text's buffer: of the four maps, only the two that
    leave (out, and g as visual's gradient) are fresh each step.
    """

    @staticmethod
    def forward(ctx, visual, values, rows, cols, signs, scale, weight_visual, bias, weight_text, maps):
        channels = visual.shape[1]
        ctx.maps = maps
        text = _paint(values, rows, cols, signs, scale, visual.shape[-2:], maps).to(visual.dtype)
        if _onednn_conv_add_applies(visual, visual, weight_visual):
            # Into a kept buffer, in visual's layout: no fresh map to fault in.
            g = maps.take_like(visual).copy_(bias.view(1, channels, 1, 1).expand_as(visual))
            _onednn_conv_add_(g, visual, weight_visual)
        else:
            g = F.conv2d(visual, weight_visual, bias, padding=1, groups=channels)
        _depthwise_conv3x3_add_(g, text, weight_text).sigmoid_()
        ctx.save_for_backward(visual, text, g, rows, cols, signs, scale, weight_visual, weight_text)
        return torch.lerp(text, visual, g)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        visual, text, g, rows, cols, signs, scale, weight_visual, weight_text = ctx.saved_tensors
        needs = ctx.needs_input_grad
        channels = visual.shape[1]
        # d out / d g = visual - text; then through the sigmoid, in place.
        grad_pre = torch.sub(visual, text).mul_(grad)
        torch.ops.aten.sigmoid_backward.grad_input(grad_pre, g, grad_input=grad_pre)
        conv = ([1, 1], [1, 1], [1, 1], False, [0, 0], channels)  # stride, padding, dilation, transposed
        _, grad_weight_visual, grad_bias = torch.ops.aten.convolution_backward(
            grad_pre, visual, weight_visual, [channels], *conv, [False, needs[6], needs[7]]
        )
        _, grad_weight_text, _ = torch.ops.aten.convolution_backward(
            grad_pre, text, weight_text, None, *conv, [False, needs[8], False]
        )
        kept = _graph_kept()
        grad_visual = grad_values = None
        if needs[1]:
            # d out / d text = 1 - g, plus the text convolution's input gradient; g is
            # still intact, text no longer needed.
            grad_text = torch.addcmul(grad, grad, g, value=-1, out=torch.empty_like(g) if kept else text)
            _depthwise_conv3x3_add_(grad_text, grad_pre, weight_text.flip(-1, -2))
            grad_values = _box_sums(grad_text.to(scale.dtype), scale, rows, cols, signs, overwrite=True)
        if needs[0]:
            grad_visual = torch.mul(grad, g, out=torch.empty_like(g) if kept else g)
            _depthwise_conv3x3_add_(grad_visual, grad_pre, weight_visual.flip(-1, -2))
        ctx.maps.give(grad_pre, *([] if kept else [text]))
        return grad_visual, grad_values, None, None, None, None, grad_weight_visual, grad_bias, grad_weight_text, None


class TextFusion(nn.Module):
    """
    Mixes painted text features into one level's visual features.

    Token features are first projected by a per-level linear map (cheap: it acts on
    T tokens, not on H*W cells) so that text can enter the visual feature space of
    that level, then painted onto the level's grid.

    mode "gated": g = sigmoid(conv3x3([visual; text])) per pixel and channel, where
    gate channel c sees visual and text channel c in a 3x3 neighbourhood (a conv with
    one group per channel: a full 2C -> C conv would cost more than the transformer at
    stride 4). It is computed as the sum of two depthwise convs, one over visual with
    the bias and one over text: the same function, without the interleaved 2C-channel
    input whose grouped-conv backward is very slow on CPU. out = g * visual +
    (1 - g) * text. The convs start at zero and the bias at `gate_bias_init`, so g
    starts at sigmoid(gate_bias_init) everywhere and the output starts close to the
    visual features.
    mode "add": out = visual + text, with the projection starting at zero (so the
    output starts equal to the visual features).
    """

    def __init__(self, channels, stride, mode="gated", reduce="mean", gate_bias_init=3.0):
        super().__init__()
        if mode not in ("gated", "add"):
            raise ValueError(f"TextFusion mode must be 'gated' or 'add', got {mode!r}")
        self.stride = stride
        self.mode = mode
        self.reduce = reduce
        self.text_proj = nn.Linear(channels, channels)
        if mode == "add":
            nn.init.zeros_(self.text_proj.weight)
        else:
            nn.init.normal_(self.text_proj.weight, std=0.02)
        nn.init.zeros_(self.text_proj.bias)
        if mode == "gated":
            self.gate_visual = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)
            self.gate_text = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False)
            nn.init.zeros_(self.gate_visual.weight)
            nn.init.zeros_(self.gate_text.weight)
            nn.init.constant_(self.gate_visual.bias, gate_bias_init)
            self.reusable_maps = ReusableMaps()

    def forward(self, visual, token_feats, token_boxes, mask):
        # The pyramid's visual maps are channels-last already (the ViT's tokens are rows
        # of C features); keeping every operand in that layout avoids layout conversions
        # inside each op, and depthwise convs are fastest in it on CPU.
        visual = visual.contiguous(memory_format=torch.channels_last)
        grid = tuple(visual.shape[-2:])
        token_feats = self.text_proj(token_feats)
        if self.mode == "gated" and not torch.is_autocast_enabled(visual.device.type):
            inputs = _paint_inputs(token_feats, token_boxes, mask, grid, self.stride, self.reduce)
            weights = (self.gate_visual.weight, self.gate_visual.bias, self.gate_text.weight)
            return _PaintedGatedMix.apply(visual, *inputs, *weights, self.reusable_maps)
        text = paint_tokens(token_feats, token_boxes, mask, grid, self.stride, self.reduce).to(visual.dtype)
        if self.mode == "add":
            return visual + text
        # Autocast picks each op's precision (half for the convs, while a level fed by a
        # LayerNorm, layer7 and layer11, stays float32): left to autograd.
        g = self.gate_visual(visual).add_(self.gate_text(text)).sigmoid_()
        return torch.lerp(text, visual, g.to(visual.dtype))


def build_text_fusion(cfg, channels, strides):
    """
    One TextFusion per fused level.

    Args:
        strides: dict level name -> stride of that level.

    Returns:
        nn.ModuleDict level name -> TextFusion (empty when fusion is off).
    """
    mode = cfg.MODEL.TEXT_FUSION.MODE
    if mode not in ("gated", "add", "none"):
        raise ValueError(f"MODEL.TEXT_FUSION.MODE must be gated, add or none, got {mode!r}")
    levels = [] if (cfg.MODEL.IMAGE_ONLY or mode == "none") else list(cfg.MODEL.TEXT_FUSION.LEVELS)
    unknown = [name for name in levels if name not in strides]
    if unknown:
        raise ValueError(
            f"MODEL.TEXT_FUSION.LEVELS {unknown} are not among MODEL.VIT.OUT_FEATURES {list(strides)}"
        )
    return nn.ModuleDict(
        {
            name: TextFusion(
                channels,
                strides[name],
                mode=mode,
                reduce=cfg.MODEL.TEXT_FUSION.REDUCE,
                gate_bias_init=cfg.MODEL.TEXT_FUSION.GATE_BIAS_INIT,
            )
            for name in levels
        }
    )
