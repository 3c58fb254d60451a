"""ditod: multimodal (page image + OCR text) document layout detection for Detectron2.

Importing the package registers its backbone and meta-architecture with detectron2.
"""
from .config import add_vit_config
from .modeling import LayoutLMv3Backbone, VLGeneralizedRCNN, build_vit_fpn_backbone

__all__ = ["add_vit_config", "LayoutLMv3Backbone", "VLGeneralizedRCNN", "build_vit_fpn_backbone"]
