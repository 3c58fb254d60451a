"""
Text features painted onto the pyramid, and the modules that mix them in: the
reference, in plain differentiable PyTorch ops that behave the same on any device, in
float32 and under autocast, without a host-device synchronisation.

`paint_tokens` turns per-token features into a (B, C, H, W) map by adding each
token's feature to every grid cell its box covers. The fusion modules are registered
in `TEXT_FUSION_REGISTRY`; MODEL.TEXT_FUSION.MODE names one, and `build_text_fusion`
builds one per fused level as `cls(cfg, channels, stride)`. `TextFusion` is their
base: it projects the tokens' features and paints them; a subclass writes `mix`.

The CPU kernel of `gated` (the same function with its backward written out and CPU
memory reused) lives apart, in ditod/layers/cpu_gated_fusion.py (MODEL.TEXT_FUSION.IMPL).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.utils.registry import Registry

from ..layers import cpu_gated_fusion

__all__ = [
    "TEXT_FUSION_REGISTRY",
    "TextFusion",
    "GatedFusion",
    "AddFusion",
    "VSRFusion",
    "M2DocFusion",
    "paint_tokens",
    "token_cell_ranges",
    "build_text_fusion",
]

TEXT_FUSION_REGISTRY = Registry("TEXT_FUSION")
TEXT_FUSION_REGISTRY.__doc__ = """
Modules that mix a level's painted text map into its visual map, named by
MODEL.TEXT_FUSION.MODE and called as `cls(cfg, channels, stride)`: usually a
`TextFusion` subclass.
"""

IMPLEMENTATIONS = ("auto", "reference")


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


def _sum_over_cells(values, cells, grid):
    """
    The sum of the tokens' `values` (B, T, K) over each one's cells, as (B, H, W, K).

    A 2D difference array: each token adds its values at the top-left corner of its
    cell range, takes them away right of it and below it, and adds them back below
    right; two cumulative sums then spread them over the range. Every token writes 4
    rows (a padding token: zeros), so all shapes are fixed by the inputs' shapes and
    no step waits on the device.
    """
    batch, _, size = values.shape
    height, width = grid
    x0, y0, x1, y1 = cells
    # One more row and column, for the corners past the grid's last cell.
    rows, cols = height + 1, width + 1
    page = torch.arange(batch, device=values.device)[:, None] * (rows * cols)
    corners = torch.stack([y0 * cols + x0, y0 * cols + x1 + 1, (y1 + 1) * cols + x0, (y1 + 1) * cols + x1 + 1])
    signed = torch.stack([values, -values, -values, values])
    index, signed = (page + corners).flatten(), signed.reshape(-1, size)
    if torch.onnx.is_in_onnx_export():
        # The exporter writes index_add_ as a scatter that keeps one of the values written
        # to a place; scatter_add_ becomes ScatterElements with reduction "add".
        diff = values.new_zeros(batch * rows * cols, size).scatter_add_(0, index[:, None].expand(-1, size), signed)
    else:
        diff = values.new_zeros(batch * rows * cols, size).index_add_(0, index, signed)
    return diff.view(batch, rows, cols, size).cumsum(1).cumsum(2)[:, :height, :width]


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
        (B, C, H, W) text map in the dtype of token_feats, channels-last in memory
        (the layout of the pyramid's visual maps).
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    grid = tuple(grid)
    cells = token_cell_ranges(token_boxes, grid, stride)
    real = mask.bool()[..., None]
    # Sums accumulate in at least float32, whatever the autocast dtype; padding tokens
    # (their features may be anything, NaN included) add zeros.
    dtype = torch.promote_types(token_feats.dtype, torch.float32)
    values = torch.where(real, token_feats.to(dtype), 0)
    total = _sum_over_cells(values, cells, grid)
    # Tokens per cell: small integers, exact in floating point, so empty cells are found
    # exactly and forced to 0 (the painted sums there can hold rounding residue).
    count = _sum_over_cells(real.to(dtype), cells, grid)
    if reduce == "mean":
        scale = torch.where(count > 0, 1 / count.clamp(min=1), 0)
    else:
        scale = (count > 0).to(dtype)
    return (total * scale).permute(0, 3, 1, 2).to(token_feats.dtype)


class TextFusion(nn.Module):
    """
    Base of the fusion modules: mixes painted text features into one level's visual
    features.

    The tokens' features are first projected by a per-level linear map (cheap: it acts
    on T tokens, not on H*W cells) so that text can enter the visual feature space of
    that level, then painted onto the level's grid (`paint_tokens`, MODEL.TEXT_FUSION.
    REDUCE). A subclass writes `mix(visual, text)`; it is built as
    `cls(cfg, channels, stride)`.

    Mind the cost of a mix at stride 4: an 800x608 page's map has 30,400 cells there,
    and a full 2C -> C 3x3 convolution over them (C = 768) takes about 320 G
    multiply-adds, as much as the whole base transformer's forward (about 310 G). The
    modules below use depthwise 3x3 convolutions (`gated`) or 1x1 ones (`vsr`, `m2doc`).
    """

    def __init__(self, cfg, channels, stride):
        super().__init__()
        self.stride = stride
        self.reduce = cfg.MODEL.TEXT_FUSION.REDUCE
        self.text_proj = nn.Linear(channels, channels)
        nn.init.normal_(self.text_proj.weight, std=0.02)
        nn.init.zeros_(self.text_proj.bias)

    def paint(self, visual, token_feats, token_boxes, mask):
        """The level's text map: the tokens' features projected and painted on visual's
        grid, in visual's dtype and layout."""
        text = paint_tokens(self.text_proj(token_feats), token_boxes, mask, visual.shape[-2:], self.stride, self.reduce)
        return text.to(visual.dtype)

    def mix(self, visual, text):
        """
        Args:
            visual: (B, C, H, W) channels-last visual map.
            text: (B, C, H, W) painted text map (0 where no token sits), same dtype and layout.

        Returns:
            the fused (B, C, H, W) map.
        """
        raise NotImplementedError

    def forward(self, visual, token_feats, token_boxes, mask):
        """
        Args:
            visual: (B, C, H, W) the level's visual map.
            token_feats: (B, T, C) the text tokens' hidden states.
            token_boxes: (B, T, 4) the tokens' boxes in pixels of the padded image.
            mask: (B, T), nonzero for real tokens.

        Returns:
            the fused (B, C, H, W) map, in visual's dtype.
        """
        # The pyramid's visual maps are channels-last already (the ViT's tokens are rows
        # of C features); keeping every operand in that layout avoids layout conversions
        # inside each op, and depthwise convs are fastest in it on CPU.
        visual = visual.contiguous(memory_format=torch.channels_last)
        text = self.paint(visual, token_feats, token_boxes, mask)
        return self.mix(visual, text).to(visual.dtype)


def _register(name):
    """Registers a built-in module under its MODEL.TEXT_FUSION.MODE name (a user's module
    goes under its class name, with `TEXT_FUSION_REGISTRY.register()`)."""

    def register(cls):
        TEXT_FUSION_REGISTRY._do_register(name, cls)
        return cls

    return register


@_register("gated")
class GatedFusion(TextFusion):
    """
    g = sigmoid(conv3x3([visual; text])) per pixel and channel, out = g * visual +
    (1 - g) * text. The gated fusion of the research code this project grew from (its
    "AF2": a 3x3 convolution and a sigmoid gate over the text-added map), with a gate
    that can close (the research code's sigmoid(relu(x)) never went below 0.5).

    Gate channel c sees visual and text channel c in a 3x3 neighbourhood (a conv with
    one group per channel), computed as the sum of two depthwise convs, one over visual
    with the bias and one over text: the same function, without an interleaved
    2C-channel input. The convs start at zero and the bias at GATE_BIAS_INIT, so g
    starts at sigmoid(GATE_BIAS_INIT) everywhere (0.95 by default: the output starts
    close to the visual features of a pretrained backbone).

    MODEL.TEXT_FUSION.IMPL "auto" runs the CPU kernel (ditod/layers/cpu_gated_fusion.py)
    where it applies: float32 on the CPU outside autocast.
    """

    def __init__(self, cfg, channels, stride):
        super().__init__(cfg, channels, stride)
        self.impl = cfg.MODEL.TEXT_FUSION.IMPL
        if self.impl not in IMPLEMENTATIONS:
            raise ValueError(f"MODEL.TEXT_FUSION.IMPL must be one of {IMPLEMENTATIONS}, got {self.impl!r}")
        self.gate_visual = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.gate_text = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False)
        nn.init.zeros_(self.gate_visual.weight)
        nn.init.zeros_(self.gate_text.weight)
        nn.init.constant_(self.gate_visual.bias, cfg.MODEL.TEXT_FUSION.GATE_BIAS_INIT)
        self.reusable_maps = cpu_gated_fusion.ReusableMaps()

    def mix(self, visual, text):
        # Under autocast, autocast picks each op's precision (half for the convs, while a
        # level fed by a LayerNorm stays float32).
        g = self.gate_visual(visual).add_(self.gate_text(text)).sigmoid_()
        if torch.onnx.is_in_onnx_export():
            # The exporter writes lerp as both of its formulas and a Where between them:
            # eight passes over the map where this takes three.
            return text + g * (visual - text)
        return torch.lerp(text, visual, g.to(visual.dtype))

    def forward(self, visual, token_feats, token_boxes, mask):
        weights = (self.gate_visual.weight, self.gate_visual.bias, self.gate_text.weight)
        if self.impl == "auto" and cpu_gated_fusion.applies(visual, *weights):
            visual = visual.contiguous(memory_format=torch.channels_last)
            cells = token_cell_ranges(token_boxes, visual.shape[-2:], self.stride)
            token_feats = self.text_proj(token_feats)
            return cpu_gated_fusion.painted_gated_mix(
                visual, token_feats, cells, mask, self.reduce, *weights, self.reusable_maps
            )
        return super().forward(visual, token_feats, token_boxes, mask)


@_register("add")
class AddFusion(TextFusion):
    """
    out = visual + text: VGT's fusion (ICCV 2023), a plain sum of the visual and the
    text pyramids. The projection starts at zero, so the output starts equal to the
    visual features.
    """

    def __init__(self, cfg, channels, stride):
        super().__init__(cfg, channels, stride)
        nn.init.zeros_(self.text_proj.weight)

    def mix(self, visual, text):
        return visual + text


@_register("vsr")
class VSRFusion(TextFusion):
    """
    VSR's weighted fusion (Zhang et al., ICDAR 2021; DAVAR-Lab-OCR's VSRFeatureMerge,
    merge_type "Weighted", as in its layout configs: no extra projections, no shortcut):
    alpha = sigmoid(W [visual; text] + b) per pixel, a linear map over the concatenated
    channels, out = alpha * visual + (1 - alpha) * text.

    W is written as two 1x1 convs, over visual (with b) and over text, which sum to
    the same function without a 2C-channel map at stride 4. It is 1x1, as VSR's (a
    Linear per pixel): 2C * C multiply-adds per cell, about 48 G over the four levels of
    an 800x608 page at C = 768, 15% of the base transformer's forward (a 3x3 would cost
    nine times as much). W starts as VSR's (PyTorch's default for a
    Linear of 2C inputs: uniform in +-1/sqrt(2C)); b at GATE_BIAS_INIT, like `gated`'s,
    so alpha starts near sigmoid(GATE_BIAS_INIT) (VSR's bias starts near 0: alpha near
    0.5, as with GATE_BIAS_INIT 0).
    """

    def __init__(self, cfg, channels, stride):
        super().__init__(cfg, channels, stride)
        self.gate_visual = nn.Conv2d(channels, channels, kernel_size=1)
        self.gate_text = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        bound = 1 / math.sqrt(2 * channels)
        nn.init.uniform_(self.gate_visual.weight, -bound, bound)
        nn.init.uniform_(self.gate_text.weight, -bound, bound)
        nn.init.constant_(self.gate_visual.bias, cfg.MODEL.TEXT_FUSION.GATE_BIAS_INIT)

    def mix(self, visual, text):
        alpha = torch.sigmoid(self.gate_visual(visual) + self.gate_text(text))
        return torch.lerp(text, visual, alpha.to(visual.dtype))


@_register("m2doc")
class M2DocFusion(TextFusion):
    """
    M2Doc's early fusion (Zhang et al., AAAI 2024; its ResNet-with-early-fusion
    backbone): out = LayerNorm(visual + tanh(conv(relu(conv(text)))) * text), two 1x1
    convs C -> C (2C * C multiply-adds per cell, like `vsr`) and a LayerNorm over each
    cell's channels, as the formula says (the public code's `.view(-1, C)` of an NCHW
    map normalises runs of C positions of one channel instead). Initialised as
    M2Doc's: PyTorch's defaults for the convs, the LayerNorm at identity scale. The LayerNorm renormalises the visual features, so the
    output does not start at them.
    """

    def __init__(self, cfg, channels, stride):
        super().__init__(cfg, channels, stride)
        self.score_hidden = nn.Conv2d(channels, channels, kernel_size=1)
        self.score = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm = nn.LayerNorm(channels)

    def mix(self, visual, text):
        score = torch.tanh(self.score(F.relu(self.score_hidden(text))))
        mixed = visual + score.to(text.dtype) * text
        # LayerNorm over the channels of each cell: on the channels-last map's (B, H, W, C) view.
        return self.norm(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def build_text_fusion(cfg, channels, strides):
    """
    The fusion module of MODEL.TEXT_FUSION.MODE for each level of MODEL.TEXT_FUSION.LEVELS.

    Args:
        strides: dict level name -> stride of that level.

    Returns:
        nn.ModuleDict level name -> module (empty when MODE is "none" or MODEL.IMAGE_ONLY).
    """
    mode = cfg.MODEL.TEXT_FUSION.MODE
    if mode != "none" and mode not in TEXT_FUSION_REGISTRY:
        names = sorted(name for name, _ in TEXT_FUSION_REGISTRY)
        raise ValueError(f"MODEL.TEXT_FUSION.MODE must be 'none' or a registered fusion module {names}, got {mode!r}")
    levels = [] if (cfg.MODEL.IMAGE_ONLY or mode == "none") else list(cfg.MODEL.TEXT_FUSION.LEVELS or strides)
    unknown = [name for name in levels if name not in strides]
    if unknown:
        raise ValueError(f"MODEL.TEXT_FUSION.LEVELS {unknown} are not among MODEL.VIT.OUT_FEATURES {list(strides)}")
    fusion = TEXT_FUSION_REGISTRY.get(mode) if levels else None
    return nn.ModuleDict({name: fusion(cfg, channels, strides[name]) for name in levels})
