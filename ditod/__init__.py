"""ditod: multimodal (page image + OCR text) document layout detection for Detectron2.

Names are imported on first use (`ditod._lazy`): `import ditod` alone imports no
detectron2. The config side (`ditod.config`: `add_vit_config`, `load_config`) registers
the backbone and meta-architecture with detectron2 and the built-in dataset names
(publaynet_*, cdla_*, doclaynet_*, synthetic_*).
"""

from ._lazy import lazy_exports

_EXPORTS = {
    "config": ["add_vit_config", "load_config"],
    "modeling": ["LayoutLMv3Backbone", "VLGeneralizedRCNN", "build_vit_fpn_backbone"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
