"""datasets/cdla_to_coco.py and datasets/doclaynet_to_ocr.py on small files in the real formats."""

import importlib.util
import json
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from ditod.data.datasets import CDLA_CLASSES, register_vl_coco
from ditod.data.ocr import load_ocr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "datasets", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def labelme(image_path, width, height, shapes):
    return {
        "version": "4.5.6",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": height,
        "imageWidth": width,
    }


def shape(label, points, shape_type="polygon"):
    return {"label": label, "points": points, "group_id": None, "shape_type": shape_type, "flags": {}}


@pytest.fixture
def cdla_dir(tmp_path):
    """CDLA-style folder: page images with their labelme jsons, plus a broken page."""
    root = tmp_path / "cdla" / "train" / "images"
    root.mkdir(parents=True)
    Image.new("RGB", (400, 600), "white").save(root / "train_0001.jpg")
    Image.new("RGB", (300, 500), "white").save(root / "train_0002.jpg")
    pages = {
        "train_0001.json": labelme(
            "train_0001.jpg",
            400,
            600,
            [
                shape("Text", [[10, 20], [210, 20], [210, 120], [10, 120]]),
                shape("title", [[50, 5], [350, 5], [350, 15], [50, 15]]),  # label case differs
                shape("Figure caption", [[0, 300], [100, 300], [50, 400]]),  # a triangle
                shape("Table", [[380, 500], [450, 650]], "rectangle"),  # runs off the page
                shape("Stamp", [[1, 1], [2, 1], [2, 2]]),  # not a CDLA class
                shape("Equation", [[5, 5], [5, 5], [5, 5]]),  # no area
            ],
        ),
        "train_0002.json": labelme(
            "train_0002.jpg",
            300,
            500,
            [
                shape("Reference", [[10, 10], [290, 10], [290, 40], [10, 40]]),
            ],
        ),
        "train_0003.json": labelme("train_0003.jpg", 300, 500, []),  # image missing
    }
    for name, data in pages.items():
        (root / name).write_text(json.dumps(data))
    (root / "train_0004.json").write_text('{"shapes": [')
    return tmp_path, root


def test_cdla_to_coco(cdla_dir, capsys):
    tmp_path, root = cdla_dir
    converter = load_script("cdla_to_coco")
    out = tmp_path / "cdla" / "train.json"
    assert converter.main(["--labelme-dir", str(root), "--out", str(out)]) == 1  # two pages left out
    summary = capsys.readouterr().out
    assert "2 pages, 5 annotations" in summary and "2 page(s) and 2 shape(s) left out" in summary
    assert "train_0003.json" in summary and "train_0004.json" in summary and "'Stamp'" in summary

    coco = json.loads(out.read_text())
    assert [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == CDLA_CLASSES
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        ("train_0001.jpg", 400, 600),
        ("train_0002.jpg", 300, 500),
    ]
    by_class = {CDLA_CLASSES[a["category_id"] - 1]: a for a in coco["annotations"]}
    assert set(by_class) == {"Text", "Title", "Figure caption", "Table", "Reference"}
    assert by_class["Text"]["bbox"] == [10, 20, 200, 100] and by_class["Text"]["area"] == 20000
    assert by_class["Text"]["segmentation"] == [[10, 20, 210, 20, 210, 120, 10, 120]]
    assert by_class["Figure caption"]["bbox"] == [0, 300, 100, 100] and by_class["Figure caption"]["area"] == 5000
    assert by_class["Table"]["bbox"] == [380, 500, 20, 100]  # clipped to the 400 x 600 page
    assert by_class["Reference"]["image_id"] == coco["images"][1]["id"]

    # The result registers as the built-in CDLA datasets expect.
    name = f"cdla_{uuid.uuid4().hex[:8]}"
    register_vl_coco(name, str(out), str(root), thing_classes=CDLA_CLASSES)
    records = DatasetCatalog.get(name)
    assert records[0]["ocr_file"] == str(tmp_path / "cdla" / "train" / "ocr" / "train_0001.json")
    assert MetadataCatalog.get(name).thing_classes == CDLA_CLASSES


def test_cdla_to_coco_leaves_out_malformed_shapes(tmp_path, capsys):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGB", (100, 100), "white").save(root / "p.jpg")
    shapes = [
        "oops",  # not an object
        shape("Text", [[1, 1], [2, 2], [3, 3]]),  # collinear: no area
        shape("Text", [[0, 0, 1], [5, 0, 2]]),  # 3-D points
        shape("Text", [[0, 0], [50, 0], [50, float("nan")]]),
        shape("Text", [[0, 0], [True, 50], [50, 50]]),
        shape("Text", "10,10,20,20"),
        shape("Table", [[-50, -50], [-10, -50], [-10, -10], [-50, -10]]),  # off the page: clipped to a point
        shape("Title", [[10, 10], [60, 10], [60, 40], [10, 40]]),
    ]
    (root / "p.json").write_text(json.dumps(labelme("p.jpg", 100, 100, shapes)))
    out = tmp_path / "train.json"
    assert load_script("cdla_to_coco").main(["--labelme-dir", str(root), "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "1 pages, 1 annotations; 0 page(s) and 7 shape(s) left out" in summary
    assert "1 shape(s): not an object" in summary
    assert "4 shape(s): points are not [x, y] pairs of finite numbers" in summary
    assert "2 shape(s): no area" in summary
    (annotation,) = json.loads(out.read_text())["annotations"]
    assert annotation["bbox"] == [10, 10, 50, 30] and annotation["area"] == 1500


def test_cdla_to_coco_reports_a_json_that_is_not_utf8(cdla_dir, capsys):
    tmp_path, root = cdla_dir
    Image.new("RGB", (300, 500), "white").save(root / "train_0005.jpg")
    page = labelme("train_0005.jpg", 300, 500, [shape("文本", [[10, 10], [90, 10], [90, 40]])])
    (root / "train_0005.json").write_bytes(json.dumps(page, ensure_ascii=False).encode("gbk"))
    out = tmp_path / "train.json"
    assert load_script("cdla_to_coco").main(["--labelme-dir", str(root), "--out", str(out)]) == 1
    summary = capsys.readouterr().out
    assert "3 page(s) and 2 shape(s) left out" in summary
    assert f"page {root / 'train_0005.json'}: not UTF-8 (" in summary
    assert "codec" not in summary


@pytest.mark.parametrize("folder", ["missing", "empty", "a file"])
def test_cdla_to_coco_without_labelme_jsons_is_an_error(tmp_path, capsys, folder):
    labelme_dir = tmp_path / "images"
    if folder == "empty":
        labelme_dir.mkdir()
        Image.new("RGB", (10, 10), "white").save(labelme_dir / "p.jpg")
    elif folder == "a file":
        labelme_dir.write_text("{}")
    out = tmp_path / "train.json"
    assert load_script("cdla_to_coco").main(["--labelme-dir", str(labelme_dir), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"No json under {labelme_dir}") and captured.err.count("\n") == 1
    assert "Wrote" not in captured.out and not out.exists()


def doclaynet_page(page_hash, cells, width=1025, height=1025):
    return {
        "metadata": {
            "page_hash": page_hash,
            "original_filename": "report.pdf",
            "page_no": 3,
            "num_pages": 9,
            "original_width": 612,
            "original_height": 792,
            "coco_width": width,
            "coco_height": height,
            "collection": "ann_reports_00_04_fancy",
            "doc_category": "financial_reports",
        },
        "cells": cells,
    }


def cell(text, bbox):
    return {"bbox": bbox, "text": text, "font": {"color": [0, 0, 0, 255], "name": "Helvetica", "size": 1.0}}


def test_doclaynet_to_ocr(tmp_path, capsys):
    json_dir = tmp_path / "JSON"
    json_dir.mkdir()
    xywh_cells = [
        cell("Annual report 2003", [100.5, 50.25, 300, 20]),
        cell("   ", [10, 10, 5, 5]),  # no text
        cell("Revenue grew by 5 %", [100, 100, 400, 12]),
        cell("broken", [1, 2, "x", 4]),
        cell("Footnote", [1000, 1010, 40, 30]),  # overshoots the page: clipped
    ]
    (json_dir / "aaa.json").write_text(json.dumps(doclaynet_page("aaa", xywh_cells)))
    corner_cells = [cell("Left", [100, 100, 500, 120]), cell("Right", [600, 800, 900, 830])]
    (json_dir / "bbb.json").write_text(json.dumps(doclaynet_page("bbb", corner_cells)))
    (json_dir / "ccc.json").write_text("{not json")
    (json_dir / "ddd.json").write_text(json.dumps({"cells": []}))

    converter = load_script("doclaynet_to_ocr")
    out = tmp_path / "ocr"
    assert converter.main(["--json-dir", str(json_dir), "--out", str(out)]) == 1
    summary = capsys.readouterr().out
    assert "Wrote 2 OCR jsons" in summary and "xyxy: 1 pages" in summary and "xywh: 1 pages" in summary
    assert "1 cell(s) without usable box" in summary and "2 page(s) failed" in summary
    assert "ccc.json" in summary and "ddd.json" in summary

    page = load_ocr(out / "aaa.json")
    assert (page.width, page.height) == (1025, 1025)
    assert page.words == ["Annual report 2003", "Revenue grew by 5 %", "Footnote"]
    np.testing.assert_allclose(page.boxes, [[100.5, 50.25, 300, 20], [100, 100, 400, 12], [1000, 1010, 25, 15]])
    page = load_ocr(out / "bbb.json")
    np.testing.assert_allclose(page.boxes, [[100, 100, 400, 20], [600, 800, 300, 30]])

    # Forced: the same file read as x, y, w, h.
    assert converter.main(["--json-dir", str(json_dir), "--out", str(out), "--bbox-format", "xywh"]) == 1
    np.testing.assert_allclose(load_ocr(out / "bbb.json").boxes, [[100, 100, 500, 120], [600, 800, 425, 225]])
