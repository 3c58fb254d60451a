"""Pages in: OCR, tokens, the vision-language dataset mapper and COCO datasets.

Names are imported on first use (`ditod._lazy`), so that OCR and tokens need no
detectron2. The built-in datasets are registered when `ditod.data.datasets` is imported
(`ditod.config` imports it; see `datasets.register_all_builtin`).
"""

from .._lazy import lazy_exports

# Imported now: the function has its module's name, and importing the module later
# (tokens does) would otherwise make `ditod.data.reading_order` the module.
from .reading_order import reading_order

_EXPORTS = {
    "datasets": [
        "COCOFormatError",
        "check_datasets",
        "load_vl_coco_json",
        "register_all_builtin",
        "register_from_config",
        "register_vl_coco",
    ],
    "loader": ["build_resumable_train_loader"],
    "mapper": [
        "UnreadableDatasetError",
        "UnreadableImageError",
        "VLDatasetMapper",
        "build_vl_augmentation",
    ],
    "ocr": ["OCRFormatError", "PageOCR", "load_ocr", "save_ocr"],
    "pages": ["LoadedPage", "Page", "collect_pages", "load_page"],
    "tokens": ["OCRTokenizer", "train_tokenizer", "transform_ocr_boxes"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["reading_order"] + [name for names in _EXPORTS.values() for name in names]
