"""Writing a split: the pages, their OCR and the COCO json, in one process or a pool of them."""

import functools
import json
import logging
import multiprocessing
import os
import re
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from ..files import atomic_write
from ..ocr import save_ocr
from .fonts import NO_CJK_FONT, find_cjk_font
from .options import CATEGORIES, CATEGORY_IDS, SyntheticOptions
from .page import render_page

logger = logging.getLogger(__name__)

# Compression level 3 is the fastest to write for mostly white pages, and still small.
PNG_COMPRESS_LEVEL = 3


@dataclass
class SplitSummary:
    split: str
    json_path: str
    image_root: str
    num_pages: int
    seconds: float
    annotations_per_class: dict = field(default_factory=dict)

    @property
    def pages_per_second(self):
        return self.num_pages / max(self.seconds, 1e-9)


def _render_and_save(job, index):
    image_dir, ocr_dir, seed, split, options = job
    page = render_page(seed, split, index, options)
    name = f"{split}_{index:06d}"
    page.image.save(os.path.join(image_dir, name + ".png"), compress_level=PNG_COMPRESS_LEVEL)
    save_ocr(os.path.join(ocr_dir, name + ".json"), page.ocr)
    return name + ".png", page.image.width, page.image.height, page.annotations


def generate_split(out_dir, split, num_pages, seed=0, options=SyntheticOptions(), workers=1, progress=False):
    """Write pages 0..num_pages-1 of `split` under out_dir (see the package docstring)."""
    if num_pages < 1:
        raise ValueError(f"num_pages must be >= 1, got {num_pages}")
    if not re.fullmatch(r"[\w.-]+", split):
        raise ValueError(f"split name must be a plain file name, got {split!r}")
    if options.lang != "en" and find_cjk_font() is None:
        if options.lang == "zh":
            raise RuntimeError(NO_CJK_FONT)
        logger.warning("No CJK font found (apt-get install fonts-wqy-microhei): mixed pages will all be English")
    image_dir, ocr_dir = os.path.join(out_dir, split, "images"), os.path.join(out_dir, split, "ocr")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ocr_dir, exist_ok=True)

    start = time.perf_counter()
    render = functools.partial(_render_and_save, (image_dir, ocr_dir, seed, split, options))
    pages = []
    with tqdm(total=num_pages, desc=f"{split} pages", unit="page", disable=not progress) as bar:
        if workers > 1:
            with multiprocessing.Pool(workers) as pool:
                chunksize = max(1, min(16, num_pages // (4 * workers)))
                for page in pool.imap(render, range(num_pages), chunksize=chunksize):
                    pages.append(page)
                    bar.update()
        else:
            for index in range(num_pages):
                pages.append(render(index))
                bar.update()

    images, annotations = [], []
    counts = dict.fromkeys(CATEGORIES, 0)
    for image_id, (file_name, width, height, blocks) in enumerate(pages, start=1):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for category_id, bbox in blocks:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
            counts[CATEGORIES[category_id - 1]] += 1
    coco = {
        "info": {"description": f"ditod synthetic pages, split {split}, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name, "supercategory": "layout"} for name, i in CATEGORY_IDS.items()],
    }
    json_path = os.path.join(out_dir, f"{split}.json")
    with atomic_write(json_path, "w", encoding="utf-8") as f:
        json.dump(coco, f, ensure_ascii=False)
    seconds = time.perf_counter() - start
    logger.info(f"Wrote {num_pages} {split} pages with {len(annotations)} blocks to {out_dir} in {seconds:.1f}s")
    return SplitSummary(split, json_path, image_dir, num_pages, seconds, counts)
