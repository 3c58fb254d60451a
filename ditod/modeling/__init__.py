from .backbone import LayoutLMv3Backbone, build_vit_fpn_backbone
from .fusion import TEXT_FUSION_REGISTRY, TextFusion, paint_tokens
from .rcnn_vl import VLGeneralizedRCNN

__all__ = [
    "TEXT_FUSION_REGISTRY",
    "LayoutLMv3Backbone",
    "TextFusion",
    "VLGeneralizedRCNN",
    "build_vit_fpn_backbone",
    "paint_tokens",
]
