#!/usr/bin/env python
"""Convert CDLA's labelme annotations (one json per page image) to one COCO instances json.

    python datasets/cdla_to_coco.py --labelme-dir datasets/cdla/train/images --out datasets/cdla/train.json

Each labelme json has "imagePath" (relative to the json), "imageWidth",
"imageHeight" and "shapes": {"label", "points": [[x, y], ...], "shape_type"}
("polygon", or "rectangle" with two corners). Every shape becomes an annotation
with its polygon as segmentation, the polygon's bounding box as bbox and the
polygon's area, clipped to the page. Categories are CDLA's 10 classes, ids 1-10
in CDLA's order; labels are matched without regard to case.

Image file names in the COCO json are relative to --labelme-dir (use that folder
as the dataset's image root). A page whose json cannot be read, or whose image is
missing, is left out; a shape with an unknown label or no area is left out. All
are counted in the summary; the exit status is 1 when a page was left out.
"""
import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ditod.data.datasets import CDLA_CLASSES
from ditod.data.ocr import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class PageError(ValueError):
    pass


def _image_file(json_path, data, root):
    """The page image, relative to `root`: labelme's imagePath, else an image named like the json."""
    image_path = str(data.get("imagePath") or "").replace("\\", "/")
    candidates = [json_path.parent / image_path] if image_path else []
    candidates += [json_path.with_suffix(suffix) for suffix in IMAGE_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return Path(os.path.relpath(candidate, root)).as_posix()
    raise PageError(f"image {image_path or json_path.stem} not found next to the json")


def _page_size(data):
    width, height = data.get("imageWidth"), data.get("imageHeight")
    if not all(isinstance(v, int) and v > 0 for v in (width, height)):
        raise PageError(f"imageWidth/imageHeight must be positive integers, got {width!r}/{height!r}")
    return width, height


def shape_polygon(shape, width, height):
    """The shape's polygon as an (K, 2) array clipped to the page, or None when it has no area."""
    try:
        points = np.asarray(shape["points"], dtype=np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError):
        return None
    if shape.get("shape_type") == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    if len(points) < 3 or not np.isfinite(points).all():
        return None
    points = points.clip(0, [width, height])
    lo, hi = points.min(axis=0), points.max(axis=0)
    return points if (hi > lo).all() else None


def polygon_area(points):
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def convert(labelme_dir):
    """
    Returns:
        the COCO dict, a list of (json path, problem) for the pages left out, and a
        Counter of the shapes left out by reason.
    """
    root = Path(labelme_dir)
    class_ids = {name.lower(): i + 1 for i, name in enumerate(CDLA_CLASSES)}
    images, annotations, failures, skipped = [], [], [], Counter()
    for json_path in tqdm(sorted(root.rglob("*.json")), desc="CDLA pages", unit="page"):
        try:
            data = json.loads(json_path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
                raise PageError("not a labelme json (no 'shapes' list)")
            width, height = _page_size(data)
            file_name = _image_file(json_path, data, root)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, PageError) as e:
            failures.append((json_path, str(e)))
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for shape in data["shapes"]:
            label = str(shape.get("label", "")).strip()
            if label.lower() not in class_ids:
                skipped[f"unknown label {label!r}"] += 1
                continue
            points = shape_polygon(shape, width, height)
            if points is None:
                skipped["no area"] += 1
                continue
            (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_ids[label.lower()],
                    "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                    "segmentation": [np.round(points, 2).reshape(-1).tolist()],
                    "area": round(polygon_area(points), 2),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(CDLA_CLASSES)]
    return {"images": images, "annotations": annotations, "categories": categories}, failures, skipped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelme-dir", required=True, help="folder of CDLA page images and their labelme jsons")
    parser.add_argument("--out", required=True, help="COCO json to write")
    args = parser.parse_args(argv)

    coco, failures, skipped = convert(args.labelme_dir)
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        json.dump(coco, f, ensure_ascii=False)
    print(
        f"Wrote {args.out}: {len(coco['images'])} pages, {len(coco['annotations'])} annotations; "
        f"{len(failures)} page(s) and {sum(skipped.values())} shape(s) left out"
    )
    for reason, count in skipped.most_common():
        print(f"  {count} shape(s): {reason}")
    for path, problem in failures:
        print(f"  page {path}: {problem}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
