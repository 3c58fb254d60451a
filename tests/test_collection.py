"""A collection's outputs: per-page files, drawings of bounded size, results.jsonl that
survives a killed run and the COCO results.json made from it."""

import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from ditod.data import PageOCR
from ditod.data.pages import LoadedPage, Page
from ditod.engine import Detection, PagePrediction, PageWriter, ResultsLog, ordered_blocks
from ditod.engine.collection import draw_blocks

CLASSES = ["Text", "Title", "Figure"]


def prediction(width, height):
    """A page with a title and a paragraph (both with a line) and a figure."""
    s = width / 300
    detections = [
        Detection("Figure", 0.8, (20 * s, 120 * s, 280 * s, 190 * s), 30),
        Detection("Title", 0.9, (20 * s, 10 * s, 280 * s, 30 * s), 20),
        Detection("Text", 0.7, (20 * s, 40 * s, 280 * s, 100 * s), 10),
    ]
    boxes = np.array([[25, 12, 100, 15], [25, 50, 200, 12], [5, 195, 20, 4]]) * s
    ocr = PageOCR(width, height, ["A Title", "Some text.", "stray"], boxes)
    blocks, outside = ordered_blocks(detections, ocr)
    return PagePrediction(width, height, detections, blocks, outside, ocr, "given")


def page_image(width, height):
    image = np.full((height, width, 3), 255, np.uint8)
    image[height // 2 :, : width // 2] = (200, 30, 30)
    return image


def test_drawing_is_bounded_and_shows_the_blocks():
    image = page_image(1500, 1000)
    drawn = draw_blocks(image, prediction(1500, 1000), CLASSES, max_size=300)
    assert drawn.shape == (200, 300, 3)
    full = draw_blocks(image, prediction(1500, 1000), CLASSES, max_size=0)
    assert full.shape == image.shape
    # The title's top edge where it is: y 50 on the page, 10 on the drawing, x 100 to 1400 (20 to 280).
    plain = np.asarray(Image.fromarray(image).resize((300, 200)))
    assert (np.abs(drawn.astype(int) - plain).max(axis=2)[8:13, 40:260].max(axis=0) > 60).all()
    assert (np.abs(full.astype(int) - image).max(axis=2)[47:54, 150:1300].max(axis=0) > 60).all()
    assert (drawn[75:90, 200:260] == plain[75:90, 200:260]).all()  # nothing drawn inside the paragraph


def test_writer_and_results_log(tmp_path):
    writer = PageWriter(tmp_path, CLASSES, formats=("json", "markdown"), draw_size=200)
    log = ResultsLog(tmp_path)
    pdf_page = Page("sub/report_p0002", tmp_path / "report.pdf", index=1)
    image = page_image(300, 210)
    loaded = LoadedPage(image, prediction(300, 210).ocr, "text layer", None)
    record = writer.write(pdf_page, loaded, prediction(300, 210))
    log.append(record)
    assert record == json.loads((tmp_path / "sub" / "report_p0002.json").read_text())
    assert record["name"] == "sub/report_p0002" and record["page"] == 2 and record["ocr"] == "text layer"
    assert record["image"] == str(tmp_path / "pages" / "sub" / "report_p0002.png")
    with Image.open(record["image"]) as rendered:
        np.testing.assert_array_equal(np.asarray(rendered), image)  # the rendering, as rendered
    assert (tmp_path / "ocr" / "sub" / "report_p0002.json").exists()  # OCR made here is kept
    with Image.open(tmp_path / "sub" / "report_p0002.png") as drawing:
        assert drawing.size == (200, 140)
    assert [(b["index"], b["class"], b["text"]) for b in record["blocks"]] == [
        (0, "Title", "A Title"),
        (1, "Text", "Some text."),
        (2, "Figure", ""),
    ]
    assert record["blocks"][0] == {
        "index": 0,
        "class": "Title",
        "category_id": 20,
        "role": "title",
        "score": 0.9,
        "bbox": [20.0, 10.0, 280.0, 30.0],
        "text": "A Title",
    }
    assert record["lines_outside_blocks"] == [{"text": "stray", "bbox": [5.0, 195.0, 25.0, 199.0]}]
    assert (tmp_path / "sub" / "report_p0002.md").read_text() == "# A Title\n\nSome text.\n\n[Figure]\n"

    image_page = Page("scan", tmp_path / "scan.png")
    record = writer.write(
        image_page, LoadedPage(image, None, "ocr json", str(tmp_path / "scan.png")), prediction(300, 210)
    )
    assert record["image"] == str(tmp_path / "scan.png") and not (tmp_path / "ocr" / "scan.json").exists()
    log.append(record)
    # A run killed while appending leaves a torn line: dropped, that page is done again.
    with open(log.path, "a", encoding="utf-8") as f:
        f.write('{"name": "third", "blocks": [')
    log = ResultsLog(tmp_path)
    assert log.finished == {"sub/report_p0002", "scan"}
    log.write_coco(CLASSES, [10, 20, 30])
    coco = COCO(str(tmp_path / "results.json"))
    assert [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)] == [
        str(tmp_path / "pages" / "sub" / "report_p0002.png"),
        str(tmp_path / "scan.png"),
    ]
    assert [c["name"] for c in coco.loadCats([10, 20, 30])] == CLASSES
    title = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[1])) if a["category_id"] == 20]
    assert title[0]["bbox"] == [20.0, 10.0, 260.0, 20.0] and title[0]["score"] == 0.9
    assert len(coco.anns) == 6
    assert ResultsLog(tmp_path, fresh=True).finished == set()
