#!/usr/bin/env python
"""Convert DocLayNet's text cells (the JSON/ folder of DocLayNet_extra) to OCR jsons.

    python datasets/doclaynet_to_ocr.py --json-dir datasets/doclaynet/JSON --out datasets/doclaynet/ocr

DocLayNet pages are born-digital: their text cells come from the PDF, so no OCR is
needed. What this assumes of a DocLayNet_extra page json:

    {"metadata": {"page_hash": "...", "coco_width": 1025, "coco_height": 1025,
                  "original_filename": "...", ...},
     "cells": [{"bbox": [x, y, w, h], "text": "...", "font": {...}}, ...]}

with cell boxes in pixels of the page's PNG (coco_width x coco_height). Boxes are
read as [x, y, w, h]; a file whose boxes only make sense as [x0, y0, x1, y1] (read
as x, y, w, h some would leave the page, read as corners all are proper boxes on
it) is read that way, and counted in the summary (--bbox-format forces either).

Each page becomes <out>/<page_hash>.json (the name of its PNG; the json's stem when
there is no page_hash) with one OCR "word" per non-empty cell, boxes clipped to the
page. Cells without usable box are left out and counted; a page json that cannot be
read is reported at the end and the exit status is 1.
"""
import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ditod.data.ocr import PageOCR, save_ocr

# Slack for boxes that overshoot the page by rounding.
PAGE_TOLERANCE = 1.0


class PageError(ValueError):
    pass


def _page_size(metadata):
    width, height = metadata.get("coco_width"), metadata.get("coco_height")
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in (width, height)):
        raise PageError(f"metadata coco_width/coco_height must be positive numbers, got {width!r}/{height!r}")
    return int(width), int(height)


def _cells(data):
    """Texts and raw 4-number boxes of the cells with text and a numeric box; and how many had none."""
    texts, boxes, bad = [], [], 0
    for cell in data.get("cells") or []:
        text = str(cell.get("text") or "").strip() if isinstance(cell, dict) else ""
        bbox = cell.get("bbox") if isinstance(cell, dict) else None
        if not text:
            continue
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        ):
            bad += 1
            continue
        texts.append(text)
        boxes.append(bbox)
    return texts, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), bad


def bbox_format(boxes, width, height):
    """How to read `boxes`: 'xyxy' when they only make sense as corners on a width x height
    page, else 'xywh'."""
    if len(boxes) == 0:
        return "xywh"
    ends = boxes[:, :2] + boxes[:, 2:]
    leaves_page = ((ends[:, 0] > width + PAGE_TOLERANCE) | (ends[:, 1] > height + PAGE_TOLERANCE)).any()
    proper_corners = (
        (boxes[:, 2] >= boxes[:, 0]).all()
        and (boxes[:, 3] >= boxes[:, 1]).all()
        and (boxes[:, 2] <= width + PAGE_TOLERANCE).all()
        and (boxes[:, 3] <= height + PAGE_TOLERANCE).all()
    )
    return "xyxy" if leaves_page and proper_corners else "xywh"


def convert_page(path, bbox_format_name="auto"):
    """
    Returns:
        (output stem, PageOCR, the box format used, number of cells left out).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PageError(f"not a UTF-8 json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metadata"), dict):
        raise PageError("no 'metadata' object (not a DocLayNet_extra page json?)")
    width, height = _page_size(data["metadata"])
    texts, boxes, bad = _cells(data)
    used = bbox_format(boxes, width, height) if bbox_format_name == "auto" else bbox_format_name
    if used == "xyxy":
        boxes = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    x0y0 = boxes[:, :2].clip(0, [width, height])
    x1y1 = (boxes[:, :2] + boxes[:, 2:]).clip(0, [width, height])
    keep = (boxes[:, 2:] >= 0).all(axis=1)
    xywh = np.concatenate([x0y0, x1y1 - x0y0], axis=1)[keep]
    page = PageOCR(width, height, [t for t, k in zip(texts, keep) if k], xywh)
    stem = str(data["metadata"].get("page_hash") or Path(path).stem)
    return stem, page, used, bad + int((~keep).sum())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json-dir", required=True, help="DocLayNet_extra's JSON/ folder")
    parser.add_argument("--out", required=True, help="folder of the OCR jsons (the OCR root of the PNG folder)")
    parser.add_argument(
        "--bbox-format",
        choices=("auto", "xywh", "xyxy"),
        default="auto",
        help="how cell boxes are read (default: x, y, w, h unless only corners make sense)",
    )
    args = parser.parse_args(argv)

    files = sorted(Path(args.json_dir).rglob("*.json"))
    out = Path(args.out)
    formats, failures, cells_left_out, lines = Counter(), [], 0, 0
    for path in tqdm(files, desc="DocLayNet pages", unit="page"):
        try:
            stem, page, used, left_out = convert_page(path, args.bbox_format)
        except (OSError, PageError) as e:
            failures.append((path, str(e)))
            continue
        save_ocr(out / f"{stem}.json", page)
        formats[used] += 1
        cells_left_out += left_out
        lines += len(page)
    pages = sum(formats.values())
    print(
        f"Wrote {pages} OCR jsons ({lines} text cells) to {out}; boxes read as "
        f"{', '.join(f'{name}: {n} pages' for name, n in sorted(formats.items())) or 'nothing'}; "
        f"{cells_left_out} cell(s) without usable box left out; {len(failures)} page(s) failed"
    )
    for path, problem in failures:
        print(f"  {path}: {problem}")
    if not files:
        print(f"No json under {args.json_dir}", file=sys.stderr)
    return 1 if failures or not files else 0


if __name__ == "__main__":
    sys.exit(main())
