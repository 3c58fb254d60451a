"""The dataset mapper of the multimodal model: page image, annotations and OCR tokens."""

import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .datasets import image_file_problem
from .ocr import OCRFormatError, PageOCR, fit_to_image, load_ocr
from .tokens import OCRTokenizer, transform_ocr_boxes

__all__ = [
    "UnreadableDatasetError",
    "UnreadableImageError",
    "VLDatasetMapper",
    "build_vl_augmentation",
    "transform_ocr_boxes",
]

logger = logging.getLogger(__name__)

# DETR's pre-crop resize, as in the LayoutLMv3 / DiT detection recipes.
DETR_PRE_CROP_SIZES = (400, 500, 600)


def build_vl_augmentation(cfg, is_train):
    """
    detectron2's augmentations (multi-scale `ResizeShortestEdge`, `RandomFlip`) with the
    crop of INPUT.CROP in training: with INPUT.CROP.DETR_STYLE, half of the pages are resized to a
    short side of 400/500/600 and cropped before the multi-scale resize (DETR's recipe);
    without it every page is cropped first, as detectron2's `DatasetMapper` does.
    """
    augmentations = utils.build_augmentation(cfg, is_train)
    if not (is_train and cfg.INPUT.CROP.ENABLED):
        return augmentations
    crop = T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE)
    if cfg.INPUT.CROP.DETR_STYLE:
        pre_crop = T.ResizeShortestEdge(list(DETR_PRE_CROP_SIZES), sample_style="choice")
        crop = T.RandomApply(T.AugmentationList([pre_crop, crop]), prob=0.5)
    return [crop] + augmentations


def _page_name(dataset_dict):
    return dataset_dict.get("file_name", "the page")


class UnreadableImageError(OSError):
    """A page image that cannot be read (missing, empty, corrupt); the message names the file."""


class UnreadableDatasetError(RuntimeError):
    """Training cannot go on: too many pages in a row could not be read; the message counts
    them and names the first."""


class VLDatasetMapper(DatasetMapper):
    """
    detectron2's `DatasetMapper` (image read with EXIF orientation, augmentations,
    annotations to `Instances`) plus the page's OCR tokens.

    A dataset dict names its OCR json under "ocr_file" (see `register_vl_coco`), or
    carries an already made `PageOCR` under "ocr" (OCR on the fly). The OCR lines are put
    in reading order on the page as it is, moved by the same transforms as the image
    (see `transform_ocr_boxes` for lines the crop cuts) and tokenized. The output adds
    "input_ids" (LongTensor T) and "token_boxes" (FloatTensor T x 4, x0, y0, x1, y1 in
    pixels of "image"); with MODEL.IMAGE_ONLY no OCR is read and these keys are absent.

    Bad input:

    * an image that cannot be read: skipped in training (logged, counted; detectron2's
      loader takes another page) until DATALOADER.MAX_CONSECUTIVE_UNREADABLE pages in a
      row (in one data-loader process) could not be read: then an `UnreadableDatasetError`
      stops training; an `UnreadableImageError` naming the file at inference (the
      evaluation leaves such a page out, see `ditod.engine.evaluation`);
    * OCR json missing or unusable (not UTF-8, not JSON, wrong fields): with
      INPUT.OCR.MISSING "error" the error names the file and the problem; with "empty"
      the page has zero tokens, counted (distinct pages, per process) and logged at the
      first and every 100th;
    * OCR made on another size of the page (W/H differ from the image): boxes rescaled
      to the image, with a warning;
    * boxes outside the page: clipped, or dropped when their centre is outside (`load_ocr`
      warns about lines off the page or far beyond it).
    """

    @configurable
    def __init__(self, is_train, *, ocr_tokenizer=None, missing_ocr="error", max_consecutive_unreadable=100, **kwargs):
        """
        Args:
            ocr_tokenizer: an `OCRTokenizer`; None for an image-only model.
            missing_ocr: "error" or "empty", what to do with a page without usable OCR.
            max_consecutive_unreadable: in training, stop when this many pages in a row
                cannot be read; 0: never.
            kwargs: the arguments of `DatasetMapper`.
        """
        super().__init__(is_train, **kwargs)
        if missing_ocr not in ("error", "empty"):
            raise ValueError(f"INPUT.OCR.MISSING must be 'error' or 'empty', got {missing_ocr!r}")
        if max_consecutive_unreadable < 0:
            raise ValueError(
                f"DATALOADER.MAX_CONSECUTIVE_UNREADABLE must be >= 0 (0: never stop), got {max_consecutive_unreadable}"
            )
        self.ocr_tokenizer = ocr_tokenizer
        self.missing_ocr = missing_ocr
        self.max_consecutive_unreadable = max_consecutive_unreadable
        # Distinct pages: each epoch maps a page again.
        self.pages_without_ocr = set()
        self.unreadable_images = 0
        # The current run of unreadable pages: its length and its first few distinct pages.
        self.consecutive_unreadable = 0
        self._run_start = []

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_vl_augmentation(cfg, is_train)
        ret["ocr_tokenizer"] = None if cfg.MODEL.IMAGE_ONLY else OCRTokenizer.from_config(cfg)
        ret["missing_ocr"] = cfg.INPUT.OCR.MISSING
        ret["max_consecutive_unreadable"] = cfg.DATALOADER.MAX_CONSECUTIVE_UNREADABLE
        return ret

    def _read_image(self, file_name):
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except (OSError, SyntaxError) as e:  # PIL reports some broken files as SyntaxError
            reason = image_file_problem(file_name) or str(e)
            if not self.is_train:
                raise UnreadableImageError(f"{file_name}: cannot read the image ({reason})") from e
            self._skip_unreadable(file_name, reason)
            return None
        self.consecutive_unreadable = 0
        self._run_start.clear()
        return image

    def _skip_unreadable(self, file_name, reason):
        self.unreadable_images += 1
        self.consecutive_unreadable += 1
        named = f"{file_name} ({reason})"
        if len(self._run_start) < 3 and named not in self._run_start:
            self._run_start.append(named)
        logger.warning(
            f"Skipping {file_name}: cannot read the image ({reason}); "
            f"{self.unreadable_images} unreadable image(s) so far"
        )
        if self.max_consecutive_unreadable and self.consecutive_unreadable >= self.max_consecutive_unreadable:
            raise UnreadableDatasetError(
                f"{self.consecutive_unreadable} pages in a row could not be read ({self.unreadable_images} in all "
                f"in this data-loader process), the first: {'; '.join(self._run_start)}. Training stops: check "
                "the image files (DATALOADER.MAX_CONSECUTIVE_UNREADABLE sets how many pages in a row stop it)"
            )

    def _read_ocr(self, dataset_dict, image_size):
        """The page's OCR at `image_size` (width, height); empty, or an error, when there
        is no usable OCR (INPUT.OCR.MISSING)."""
        page = dataset_dict.pop("ocr", None)
        if page is not None:
            if not isinstance(page, PageOCR):
                raise TypeError(f"{_page_name(dataset_dict)}: 'ocr' must be a PageOCR, got {type(page).__name__}")
            return fit_to_image(page, image_size, _page_name(dataset_dict))
        path = dataset_dict.get("ocr_file")
        try:
            if path is None:
                raise FileNotFoundError(f"{_page_name(dataset_dict)}: the dataset dict names no 'ocr_file'")
            return load_ocr(path, image_size=image_size)
        except (FileNotFoundError, OCRFormatError) as e:
            if self.missing_ocr == "error":
                raise
            known = len(self.pages_without_ocr)
            self.pages_without_ocr.add(_page_name(dataset_dict))
            if len(self.pages_without_ocr) > known and known % 100 == 0:
                logger.warning(
                    f"{len(self.pages_without_ocr)} page(s) without usable OCR so far in this process, "
                    f"mapped with zero tokens (INPUT.OCR.MISSING empty); latest: {e}"
                )
            return PageOCR.empty(*image_size)

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict: one record in detectron2's dataset format, with "ocr_file" or "ocr".

        Returns:
            detectron2's model input dict plus "input_ids" and "token_boxes"; None when
            the image cannot be read in training (the loader then takes another page).

        Raises:
            UnreadableImageError: the image cannot be read, at inference.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict["file_name"])
        if image is None:
            return None
        return self.map_image(dataset_dict, image)

    def map_image(self, dataset_dict, image):
        """
        What `__call__` does once the image is read: for a page already in memory.

        Args:
            dataset_dict: the page's record (used as it is, not copied), with "ocr" or
                "ocr_file" for a model that reads text; "file_name" names the page in
                messages when present.
            image: the page, H x W x 3 uint8 in cfg.INPUT.FORMAT, as `__call__` reads it.

        Returns:
            the model input dict, as `__call__`'s.
        """
        utils.check_image_size(dataset_dict, image)
        page = None
        if self.ocr_tokenizer is not None:
            page = self._read_ocr(dataset_dict, (image.shape[1], image.shape[0]))
        dataset_dict.pop("ocr", None)

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if page is not None:
            dataset_dict["input_ids"], dataset_dict["token_boxes"] = self.ocr_tokenizer.encode_page(
                page, transforms, image_shape
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
