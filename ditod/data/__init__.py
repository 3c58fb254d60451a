"""Pages in: OCR, tokens, the vision-language dataset mapper and COCO datasets.

Importing it registers the built-in datasets (see `datasets.register_all_builtin`).
"""

from .datasets import (
    COCOFormatError,
    check_datasets,
    load_vl_coco_json,
    register_all_builtin,
    register_from_config,
    register_vl_coco,
)
from .loader import build_resumable_train_loader
from .mapper import (
    UnreadableDatasetError,
    UnreadableImageError,
    VLDatasetMapper,
    build_vl_augmentation,
    transform_ocr_boxes,
)
from .ocr import OCRFormatError, PageOCR, load_ocr, save_ocr
from .pages import LoadedPage, Page, collect_pages, load_page
from .reading_order import reading_order
from .tokens import OCRTokenizer, train_tokenizer

__all__ = [
    "COCOFormatError",
    "OCRFormatError",
    "OCRTokenizer",
    "LoadedPage",
    "Page",
    "PageOCR",
    "UnreadableDatasetError",
    "UnreadableImageError",
    "VLDatasetMapper",
    "build_resumable_train_loader",
    "build_vl_augmentation",
    "check_datasets",
    "collect_pages",
    "load_ocr",
    "load_page",
    "load_vl_coco_json",
    "reading_order",
    "register_all_builtin",
    "register_from_config",
    "register_vl_coco",
    "save_ocr",
    "train_tokenizer",
    "transform_ocr_boxes",
]
