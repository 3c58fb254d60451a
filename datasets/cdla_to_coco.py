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
as the dataset's image root). A page whose json cannot be read (not UTF-8, not
json, not labelme), or whose image is missing, is left out; a shape that is not an
object, whose points are not [x, y] pairs of finite numbers, with an unknown label,
or with no area (fewer than 3 corners, or all on one line once clipped) is left
out. All are counted in the summary; the exit status is 1 when a page was left out,
and when --labelme-dir holds no json at all (nothing is written then).
"""
import argparse
import json
import math
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


def _is_number(value):
    # bool is an int to Python, but true/false is no coordinate.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def shape_points(shape):
    """The shape's points as a (K, 2) array, or None unless they are [x, y] pairs of finite numbers."""
    points = shape.get("points")
    if not isinstance(points, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in points
    ):
        return None
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def shape_polygon(points, shape_type, width, height):
    """The polygon of a shape's (K, 2) points clipped to the page, or None when it has no area."""
    if shape_type == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    if len(points) < 3:
        return None
    points = points.clip(0, [width, height])
    return points if polygon_area(points) > 0 else None


def polygon_area(points):
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _read_json(json_path):
    try:
        return json.loads(json_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PageError(f"not UTF-8 ({e.reason} at byte {e.start})") from None


def convert(labelme_dir, json_paths):
    """
    Args:
        labelme_dir: the image root; `json_paths` are labelme jsons under it.

    Returns:
        the COCO dict, a list of (json path, problem) for the pages left out, and a
        Counter of the shapes left out by reason.
    """
    root = Path(labelme_dir)
    class_ids = {name.lower(): i + 1 for i, name in enumerate(CDLA_CLASSES)}
    images, annotations, failures, skipped = [], [], [], Counter()
    for json_path in tqdm(json_paths, desc="CDLA pages", unit="page"):
        try:
            data = _read_json(json_path)
            if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
                raise PageError("not a labelme json (no 'shapes' list)")
            width, height = _page_size(data)
            file_name = _image_file(json_path, data, root)
        except (OSError, json.JSONDecodeError, PageError) as e:
            failures.append((json_path, str(e)))
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for shape in data["shapes"]:
            if not isinstance(shape, dict):
                skipped["not an object"] += 1
                continue
            label = str(shape.get("label", "")).strip()
            if label.lower() not in class_ids:
                skipped[f"unknown label {label!r}"] += 1
                continue
            points = shape_points(shape)
            if points is None:
                skipped["points are not [x, y] pairs of finite numbers"] += 1
                continue
            points = shape_polygon(points, shape.get("shape_type"), width, height)
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

    root = Path(args.labelme_dir)
    json_paths = sorted(root.rglob("*.json"))
    if not json_paths:
        problem = "" if root.is_dir() else " (not a folder)" if root.exists() else " (no such folder)"
        print(f"No json under {args.labelme_dir}{problem}", file=sys.stderr)
        return 1
    coco, failures, skipped = convert(root, json_paths)
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
