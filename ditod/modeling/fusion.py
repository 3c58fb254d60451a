"""Text features painted onto a feature map, and the modules that mix them in.

`paint_tokens` turns per-token features into a (B, C, H, W) map by adding each
token's feature to every grid cell its box covers, with 2D prefix sums: four
corner updates per token (a scatter, O(T*C)) and two cumulative sums over the
grid (O(H*W*C)). No Python loop over tokens, no device-to-host copy.
"""
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["paint_tokens", "token_cell_ranges", "TextFusion", "build_text_fusion"]


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


def _box_sum(values, x0, y0, x1, y1, grid):
    """Sum of `values` (B, T, C) over the inclusive cell ranges, as (B, H, W, C)."""
    batch, num_tokens, channels = values.shape
    height, width = grid
    # Corner updates of a 2D difference array with one spare row and column.
    rows = torch.stack([y0, y0, y1 + 1, y1 + 1], dim=-1)
    cols = torch.stack([x0, x1 + 1, x0, x1 + 1], dim=-1)
    signs = values.new_tensor([1.0, -1.0, -1.0, 1.0])
    image = torch.arange(batch, device=values.device).view(batch, 1, 1)
    flat_index = ((image * (height + 1) + rows) * (width + 1) + cols).reshape(-1)
    corner_values = (values.unsqueeze(2) * signs.view(1, 1, 4, 1)).reshape(-1, channels)
    diff = values.new_zeros(batch * (height + 1) * (width + 1), channels)
    diff = diff.index_add(0, flat_index, corner_values)
    diff = diff.view(batch, height + 1, width + 1, channels)
    return diff.cumsum(1).cumsum(2)[:, :height, :width]


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
        (B, C, H, W) text map in the dtype of token_feats.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    keep = mask.bool().unsqueeze(-1)
    # Prefix sums accumulate in at least float32, whatever the autocast dtype.
    feats = torch.where(keep, token_feats, 0)
    feats = feats.to(torch.promote_types(feats.dtype, torch.float32))
    x0, y0, x1, y1 = token_cell_ranges(token_boxes, grid, stride)
    # The token count rides along as one more channel of the same prefix sum; counts
    # are small integers, exact in float32, so empty cells are found exactly and set
    # to 0 (the float sums there can hold rounding residue).
    summed = _box_sum(torch.cat([feats, keep.to(feats.dtype)], dim=-1), x0, y0, x1, y1, grid)
    summed, count = summed[..., :-1], summed[..., -1:].round()
    if reduce == "mean":
        summed = summed / count.clamp(min=1)
    summed = torch.where(count > 0, summed, 0)
    return summed.permute(0, 3, 1, 2).to(token_feats.dtype)


class TextFusion(nn.Module):
    """
    Mixes painted text features into one level's visual features.

    Token features are first projected by a per-level linear map (cheap: it acts on
    T tokens, not on H*W cells) so that text can enter the visual feature space of
    that level, then painted onto the level's grid.

    mode "gated": g = sigmoid(conv3x3([visual; text])) per pixel and channel, computed
    by a grouped convolution that sees each channel's visual and text values in a 3x3
    neighbourhood; out = g * visual + (1 - g) * text. The conv starts at zero and its
    bias at `gate_bias_init`, so g starts at sigmoid(gate_bias_init) everywhere and the
    output starts close to the visual features.
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
            self.gate = nn.Conv2d(2 * channels, channels, kernel_size=3, padding=1, groups=channels)
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, gate_bias_init)

    def forward(self, visual, token_feats, token_boxes, mask):
        text = paint_tokens(
            self.text_proj(token_feats), token_boxes, mask, visual.shape[-2:], self.stride, self.reduce
        ).to(visual.dtype)
        if self.mode == "add":
            return visual + text
        # Interleave channels as (v0, t0, v1, t1, ...) so group c sees visual and text channel c.
        pairs = torch.stack([visual, text], dim=2).flatten(1, 2)
        g = torch.sigmoid(self.gate(pairs))
        return g * visual + (1 - g) * text


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
