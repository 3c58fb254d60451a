from .backbone import LayoutLMv3Backbone, build_vit_fpn_backbone
from .fusion import TextFusion, paint_tokens
from .rcnn_vl import VLGeneralizedRCNN

__all__ = [
    "LayoutLMv3Backbone",
    "TextFusion",
    "VLGeneralizedRCNN",
    "build_vit_fpn_backbone",
    "paint_tokens",
]
