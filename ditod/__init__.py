"""ditod: multimodal (page image + OCR text) document layout detection for Detectron2.

Importing the package registers its backbone and meta-architecture with detectron2,
and the built-in dataset names (publaynet_*, cdla_*, doclaynet_*, synthetic_*).
"""

from . import data  # noqa: F401  (registers the built-in datasets)
from .config import add_vit_config, load_config
from .modeling import LayoutLMv3Backbone, VLGeneralizedRCNN, build_vit_fpn_backbone

__all__ = ["add_vit_config", "load_config", "LayoutLMv3Backbone", "VLGeneralizedRCNN", "build_vit_fpn_backbone"]
