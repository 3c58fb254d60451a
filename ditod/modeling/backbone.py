"""LayoutLMv3 as a detectron2 backbone: page patches and OCR tokens through one
transformer, four layers tapped into a stride-4/8/16/32 pyramid, text painted
back onto the pyramid and mixed in, then detectron2's FPN."""

import functools
import logging
import re

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers.masking_utils import create_bidirectional_mask

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from ..layoutlmv3 import build_layoutlmv3_model, get_tokenizer, max_text_tokens, tokenizer_fingerprint
from .fusion import build_text_fusion
from .stochastic_depth import add_drop_path

__all__ = ["LayoutLMv3Backbone", "build_vit_fpn_backbone"]

logger = logging.getLogger(__name__)

PYRAMID_STRIDES = (4, 8, 16, 32)


def _layer_index(name):
    match = re.fullmatch(r"layer(\d+)", name)
    if match is None:
        raise ValueError(f"MODEL.VIT.OUT_FEATURES entries must look like 'layer7', got {name!r}")
    return int(match.group(1))


def bicubic_resize_separably(maps, size):
    """
    `F.interpolate(maps, size, mode="bicubic", align_corners=False)` of (N, C, h, w) maps
    as two matrix products, the form a traced graph takes: bicubic interpolation is
    separable, and resizing the rows of an identity matrix along one axis (the other
    kept at scale 1, where the cubic weights are exactly 0, 1, 0, 0) gives that axis'
    interpolation weights. ONNX Runtime's Resize computes the taps of every output
    value of a 768-channel map one by one (0.2 s a page on 2 cores); the products
    take milliseconds. Equal to `F.interpolate` within float rounding (tested).
    """
    height, width = maps.shape[-2:]
    eye_h = torch.eye(height, dtype=maps.dtype, device=maps.device)[None, None]
    eye_w = torch.eye(width, dtype=maps.dtype, device=maps.device)[None, None]
    rows = F.interpolate(eye_h, size=(size[0], height), mode="bicubic", align_corners=False)[0, 0]
    cols = F.interpolate(eye_w, size=(size[1], width), mode="bicubic", align_corners=False)[0, 0]
    # maps, a weight in the graph, on the left: int8 export quantizes products whose
    # right operand is constant, which the position embeddings must not be.
    return rows @ (maps @ cols.T)


class LayoutLMv3Backbone(Backbone):
    """
    Bottom-up backbone: a `transformers.LayoutLMv3Model` (attribute `layoutlmv3`) reads
    the patches of the page and, unless image-only, the page's OCR tokens. The hidden
    states after the tapped layers become strides 4/8/16/32 (two transposed convs with
    norm and GELU / one transposed conv / identity / max-pool); on the fused levels the
    text tokens' hidden states of the same layer are painted where the words sit and
    mixed in by `TextFusion`. With `drop_path` > 0 the transformer layers have stochastic
    depth (`add_drop_path`, rates over all layers of the model as configured).

    `tokenizer_info` (`tokenizer_fingerprint` of the tokenizer whose ids the model reads;
    None for an image-only model) and `allow_other_tokenizer` are read by
    `VLDetectionCheckpointer`, which records the first in checkpoints and checks it
    when loading.

    forward takes one dict:
        images: (B, 3, H, W) normalized, padded to a multiple of 32.
        input_ids: (B, T) token ids (optional).
        bbox: (B, T, 4) integer boxes 0..1000 of each image's own size.
        attention_mask: (B, T), 0 for padding tokens.
        token_boxes: (B, T, 4) float boxes in pixels of the padded image.
    and returns {out_feature_name: (B, C, H/stride, W/stride)}.
    """

    def __init__(
        self,
        model,
        out_features,
        pyramid_norm="naiveSyncBN",
        text_fusion=None,
        grad_checkpoint=False,
        drop_path=0.0,
        tokenizer_info=None,
        allow_other_tokenizer=False,
    ):
        super().__init__()
        taps = [_layer_index(name) for name in out_features]
        if len(taps) != len(PYRAMID_STRIDES) or taps != sorted(set(taps)):
            raise ValueError(f"MODEL.VIT.OUT_FEATURES must name 4 increasing layers, got {out_features}")
        num_layers = model.config.num_hidden_layers
        if taps[-1] >= num_layers:
            raise ValueError(f"MODEL.VIT.OUT_FEATURES {out_features}: the model has only {num_layers} layers")
        if drop_path:
            add_drop_path(model, drop_path)
        if taps[-1] + 1 < num_layers:
            # Layers after the last tap would be parameters without gradients (which DDP rejects).
            logger.info(f"Keeping the first {taps[-1] + 1} of {num_layers} transformer layers")
            model.encoder.layer = model.encoder.layer[: taps[-1] + 1]
            model.config.num_hidden_layers = taps[-1] + 1
        self.layoutlmv3 = model
        self._taps = dict(zip(taps, out_features))
        self._out_features = list(out_features)
        channels = model.config.hidden_size
        self._out_feature_strides = dict(zip(out_features, PYRAMID_STRIDES))
        self._out_feature_channels = {name: channels for name in out_features}

        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
            get_norm(pyramid_norm, channels) or nn.Identity(),
            nn.GELU(),
            nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2))
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.text_fusion = text_fusion if text_fusion is not None else nn.ModuleDict()
        if grad_checkpoint:
            # LayoutLMv3Model does not advertise checkpointing, but its layers are
            # transformers GradientCheckpointingLayers: switching them on is their protocol.
            for layer in model.encoder.layer:
                layer.gradient_checkpointing = True
                layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
        self._pos_cache = {}
        self.tokenizer_info = tokenizer_info
        self.allow_other_tokenizer = allow_other_tokenizer

    @property
    def uses_text(self):
        return bool(self.layoutlmv3.config.text_embed)

    @property
    def pad_token_id(self):
        return self.layoutlmv3.config.pad_token_id

    @property
    def max_text_tokens(self):
        """Most text tokens one page can carry (`ditod.layoutlmv3.max_text_tokens`)."""
        return max_text_tokens(self.layoutlmv3.config)

    def patch_position_embeddings(self, grid):
        """The patch position embeddings resized (bicubic) to `grid`, as (1, C, Hp, Wp).

        Without autograd (inference) the result is cached per grid size and weight
        version; with autograd it is recomputed so that gradients reach `pos_embed`.
        """
        pos_embed = self.layoutlmv3.pos_embed
        stored = self.layoutlmv3.patch_embed.patch_shape
        key = (tuple(grid), pos_embed.device, pos_embed.dtype, pos_embed._version)
        # A trace must record the computation for its grid, never a cached constant.
        tracing = torch.jit.is_tracing()
        cacheable = not tracing and not (torch.is_grad_enabled() and pos_embed.requires_grad)
        if cacheable and key in self._pos_cache:
            return self._pos_cache[key]
        pos = pos_embed[:, 1:].reshape(1, stored[0], stored[1], -1).permute(0, 3, 1, 2)
        if tracing:
            # Resized whatever the traced page's grid, so that the graph resizes for every
            # grid (at the stored one the weights are the identity's).
            pos = bicubic_resize_separably(pos, tuple(grid))
        elif tuple(grid) != tuple(stored):
            pos = F.interpolate(pos, size=tuple(grid), mode="bicubic", align_corners=False)
        if cacheable:
            self._pos_cache = {key: pos}
        return pos

    def embed_image(self, images):
        """Patch embeddings with [CLS] in front, as LayoutLMv3Model.forward_image does,
        but with position embeddings resized to this batch's patch grid."""
        model = self.layoutlmv3
        patches = model.patch_embed.proj(images)
        grid = patches.shape[-2:]
        patches = patches + self.patch_position_embeddings(grid)
        patches = patches.flatten(2).transpose(1, 2)
        cls = (model.cls_token + model.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        embeddings = model.norm(model.pos_drop(torch.cat([cls, patches], dim=1)))
        return embeddings, grid

    def _no_text(self, batch, device):
        """Empty text inputs: the transformer then sees the image alone."""
        return {
            "input_ids": torch.empty(batch, 0, dtype=torch.long, device=device),
            "bbox": torch.empty(batch, 0, 4, dtype=torch.long, device=device),
            "attention_mask": torch.empty(batch, 0, dtype=torch.long, device=device),
            "token_boxes": torch.empty(batch, 0, 4, device=device),
        }

    def forward(self, x):
        images = x["images"]
        model = self.layoutlmv3
        visual, grid = self.embed_image(images)
        batch = images.shape[0]
        num_text = 0
        ones = torch.ones(batch, visual.shape[1], dtype=torch.long, device=images.device)
        if self.uses_text:
            text_inputs = x if x.get("input_ids") is not None else self._no_text(batch, images.device)
            num_text = text_inputs["input_ids"].shape[1]
            text = model.embeddings(input_ids=text_inputs["input_ids"], bbox=text_inputs["bbox"])
            hidden = torch.cat([text, visual], dim=1)
            mask = torch.cat([text_inputs["attention_mask"].long(), ones], dim=1)
        else:
            hidden, mask = visual, ones
        hidden = model.dropout(model.LayerNorm(hidden))
        # transformers drops a mask of all ones by looking at its values (then attention
        # takes its fused kernel), which a trace cannot do: there a single page is taken as
        # unpadded, as in the exported one-page graph, where the mask would otherwise
        # travel through every layer.
        attention = None
        if batch > 1 or not torch.jit.is_tracing():
            attention = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)

        builders = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        outputs = {}
        for index, layer in enumerate(model.encoder.layer):
            hidden = layer(hidden, attention)
            name = self._taps.get(index)
            if name is None:
                continue
            # Visual tokens are the last Hp*Wp positions (after the text and [CLS]).
            feature = hidden[:, num_text + 1 :].transpose(1, 2).reshape(batch, -1, *grid)
            feature = builders[len(outputs)](feature)
            if name in self.text_fusion:
                # Applied even without tokens (text map 0), so a page's features do not
                # depend on whether its batch-mates have text.
                feature = self.text_fusion[name](
                    feature, hidden[:, :num_text], text_inputs["token_boxes"], text_inputs["attention_mask"]
                )
            outputs[name] = feature
        return outputs

    def output_shape(self):
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_vit_fpn_backbone(cfg, input_shape):
    """detectron2's FPN (p2..p6, LastLevelMaxPool) over `LayoutLMv3Backbone`."""
    tokenizer = None if cfg.MODEL.IMAGE_ONLY else get_tokenizer(cfg)
    model = build_layoutlmv3_model(cfg, tokenizer)
    strides = dict(zip(cfg.MODEL.VIT.OUT_FEATURES, PYRAMID_STRIDES))
    bottom_up = LayoutLMv3Backbone(
        model,
        cfg.MODEL.VIT.OUT_FEATURES,
        pyramid_norm=cfg.MODEL.VIT.PYRAMID_NORM,
        text_fusion=build_text_fusion(cfg, model.config.hidden_size, strides),
        grad_checkpoint=cfg.MODEL.VIT.GRAD_CHECKPOINT,
        drop_path=cfg.MODEL.VIT.DROP_PATH,
        tokenizer_info=None if tokenizer is None else tokenizer_fingerprint(tokenizer),
        allow_other_tokenizer=cfg.MODEL.VIT.ALLOW_OTHER_TOKENIZER,
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES or cfg.MODEL.VIT.OUT_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
