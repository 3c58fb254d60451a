"""tools/bench.py's inference section: the born-digital PDF page it makes from a scanned
page, the stage shares and the comparison of two backends' detections."""

import importlib
import os
import sys

import numpy as np
import pymupdf
import pytest
from PIL import Image

from conftest import REPO
from ditod.data.ocr import PageOCR, read_pdf_page
from ditod.engine import Detection

# The tools import each other by name, as they do when run from tools/.
sys.path.insert(0, os.path.join(REPO, "tools"))
bench = importlib.import_module("bench")


def test_born_digital_pdf_page_renders_to_the_scan_and_reads_its_ocr_back(tmp_path):
    height, width = 400, 300
    image = np.full((height, width, 3), 255, np.uint8)
    figure = (40, 220, 200, 120)  # x, y, w, h
    x, y, w, h = figure
    image[y : y + h, x : x + w] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    Image.fromarray(image).save(tmp_path / "scan.png")
    ocr = PageOCR(
        width, height, ["1. Introduction", "Layout analysis finds regions"], [[30, 40, 150, 16], [30, 70, 240, 12]]
    )

    path = bench.born_digital_pdf([(tmp_path / "scan.png", ocr, [figure])], tmp_path / "page.pdf")

    with pymupdf.open(path) as document:
        rendered = read_pdf_page(document[0], bench.PDF_DPI)
    assert rendered.source == "text layer"
    assert rendered.image.shape == image.shape
    assert rendered.ocr.words == ocr.words
    np.testing.assert_allclose(rendered.ocr.boxes, ocr.boxes, atol=1.0)
    # The figure is the scan's pixels (a JPEG of them), the text is drawn where its box is.
    crop = rendered.image[y + 2 : y + h - 2, x + 2 : x + w - 2].astype(float)
    assert np.abs(crop - image[y + 2 : y + h - 2, x + 2 : x + w - 2]).mean() < 3
    assert rendered.image[40:56, 30:180].min() < 128
    assert rendered.image[100:200].min() == 255


def test_stage_shares_put_the_unmeasured_rest_in_postprocess():
    shares = bench.stage_shares({"ocr": 3.0, "model": 1.0, "preprocess": 0.5}, 5.0)
    assert shares == pytest.approx({"ocr": 0.6, "model": 0.2, "preprocess": 0.1, "postprocess": 0.1})
    # Stages timed inside a wall time measured a little short: no negative rest.
    assert bench.stage_shares({"model": 2.0}, 1.9)["postprocess"] == 0.0


def test_detection_difference_matches_boxes_of_a_class_whatever_their_order():
    first = [
        [Detection("text", 0.5, (10, 10, 100, 40)), Detection("text", 0.4999, (10, 60, 100, 90))],
        [Detection("figure", 0.9, (0, 0, 50, 50)), Detection("title", 0.2, (0, 60, 50, 70))],
    ]
    second = [
        # The two near-equal scores came out in the other order.
        [Detection("text", 0.50002, (10, 60.25, 100, 90)), Detection("text", 0.5, (10, 10, 100.5, 40))],
        [Detection("figure", 0.9, (0, 0, 50, 50)), Detection("table", 0.2, (0, 60, 50, 70))],
    ]
    difference = bench.detection_difference(first, second)
    assert difference["max_box_px"] == pytest.approx(0.5)
    assert difference["max_score"] == pytest.approx(0.00012)
    assert difference["matched"] == 3
    assert difference["unmatched"] == 2  # the title of one side, the table of the other
