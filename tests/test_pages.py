"""Page collection (folders, PDFs, names, shards), PDF checks, and reading a page once with its OCR."""

import logging

import numpy as np
import pymupdf
import pytest
from PIL import Image

from detectron2.data.detection_utils import read_image

from ditod.data import PageOCR, UnreadableImageError, save_ocr
from ditod.data.ocr import OCREngine, read_pdf_page
from ditod.data.pages import (
    OnTheFlyOCR,
    Page,
    collect_pages,
    in_shard,
    load_page,
    pdf_page_count,
    read_rgb_image,
)


def make_pdf(path, pages=1, invisible=False):
    with pymupdf.open() as document:
        for number in range(pages):
            page = document.new_page(width=200, height=100)
            page.insert_text((20, 50), f"Page {number + 1}", fontsize=12, render_mode=3 if invisible else 0)
        document.save(path)
    return path


def zero_page_pdf(path):
    # PyMuPDF refuses to save a document without pages: written by hand.
    path.write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )
    return path


def test_collect_folders_files_and_pdfs_with_names_keys_and_failures(tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(folder / "a.png")
    Image.new("RGB", (40, 30), "white").save(folder / "sub" / "b.JPG")
    make_pdf(folder / "sub" / "report.pdf", pages=2)
    (folder / "notes.txt").write_text("not a page")  # found in no folder, but given as a file
    zero_page_pdf(folder / "empty.pdf")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 nothing else")
    with pymupdf.open() as document:
        document.new_page()
        document.save(folder / "secret.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    single = tmp_path / "single.tif"
    Image.new("RGB", (10, 10)).save(single)

    pages, failures = collect_pages([folder, single, folder / "notes.txt"], ocr_dir=tmp_path / "ocr")
    assert [(p.name, p.key, p.index) for p in pages] == [
        ("a", "a.png", None),
        ("sub/b", "sub/b.JPG", None),
        ("sub/report_p0001", "sub/report_p0001.png", 0),
        ("sub/report_p0002", "sub/report_p0002.png", 1),
        ("single", "single.tif", None),
    ]
    assert pages[1].ocr_file == tmp_path / "ocr" / "sub" / "b.json" and pages[2].ocr_file is None
    reasons = dict(failures)
    assert reasons[str(folder / "empty.pdf")] == "the PDF has no pages"
    assert reasons[str(folder / "broken.pdf")].startswith("cannot open PDF")
    assert reasons[str(folder / "secret.pdf")] == "cannot open PDF: it is encrypted (needs a password)"
    assert reasons[str(folder / "notes.txt")].startswith("not an image (.bmp, .jpeg")
    assert len(failures) == 4

    with pytest.raises(FileNotFoundError, match="nowhere.png does not exist"):
        collect_pages([tmp_path / "nowhere.png"])
    Image.new("RGB", (10, 10)).save(folder / "a.jpg")  # a.png and a.jpg: one name
    with pytest.raises(ValueError, match="a.jpg and a.png would both be written as a; rename one"):
        collect_pages([folder])


def test_truncated_pdf_is_reported(tmp_path, caplog):
    data = make_pdf(tmp_path / "full.pdf", pages=3).read_bytes()
    (tmp_path / "cut.pdf").write_bytes(data[: int(len(data) * 0.8)])
    with caplog.at_level(logging.WARNING):
        assert pdf_page_count(tmp_path / "cut.pdf") == 3
    assert "cut.pdf: damaged PDF (truncated?), repaired by PyMuPDF" in caplog.text
    (tmp_path / "cut.pdf").write_bytes(data[: len(data) // 10])
    with pytest.raises(ValueError, match="cannot open PDF"):
        pdf_page_count(tmp_path / "cut.pdf")


def test_page_that_renders_blank_despite_its_text_is_an_error(tmp_path):
    make_pdf(tmp_path / "ghost.pdf", invisible=True)
    with (
        pymupdf.open(tmp_path / "ghost.pdf") as document,
        pytest.raises(ValueError, match="page 1 renders blank although it has text"),
    ):
        read_pdf_page(document[0])
    with pytest.raises(ValueError, match="renders blank"):
        load_page(Page("ghost_p0001", tmp_path / "ghost.pdf", index=0))
    # A blank page without content is a page like any other.
    with pymupdf.open() as document:
        document.new_page()
        document.save(tmp_path / "blank.pdf")
    loaded = load_page(Page("blank_p0001", tmp_path / "blank.pdf", index=0))
    assert loaded.ocr is None and loaded.ocr_source == "none" and loaded.file_name is None


def test_shards_split_keys_without_overlap():
    keys = [f"dir{i % 7}/page_{i:05d}.png" for i in range(3000)]
    shards = [{k for k in keys if in_shard(k, (s, 3))} for s in range(3)]
    assert set().union(*shards) == set(keys)
    assert sum(map(len, shards)) == len(keys)
    assert all(800 < len(s) < 1200 for s in shards)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK"])
def test_read_rgb_image_gives_the_pixels_of_detectron2s_reader(tmp_path, mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("page.jpg" if mode in ("L", "CMYK") else "page.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated
    image.save(path, exif=exif)
    read = read_rgb_image(path)
    assert read.shape == (40, 30, 3)
    np.testing.assert_array_equal(read, read_image(str(path), "RGB"))


class WordPerPage(OCREngine):
    """An engine that reads one word: what OnTheFlyOCR gives a page without OCR."""

    def recognize(self, image_bgr):
        height, width = image_bgr.shape[:2]
        return PageOCR(width, height, ["recognized"], [[1, 1, width - 2, height - 2]])


def test_load_page_takes_ocr_json_text_layer_or_ocr_on_the_fly(tmp_path, caplog):
    Image.new("RGB", (60, 40), "white").save(tmp_path / "a.png")
    save_ocr(tmp_path / "ocr" / "a.json", PageOCR(120, 80, ["from json"], [[10, 10, 40, 20]]))
    make_pdf(tmp_path / "doc.pdf")
    engine = OnTheFlyOCR(WordPerPage())

    loaded = load_page(Page("a", tmp_path / "a.png", ocr_file=tmp_path / "ocr" / "a.json"), ocr=engine)
    assert loaded.ocr_source == "ocr json" and loaded.file_name == str(tmp_path / "a.png")
    assert (loaded.ocr.width, loaded.ocr.height) == (60, 40)  # rescaled to the image
    np.testing.assert_allclose(loaded.ocr.boxes, [[5, 5, 20, 10]])
    assert loaded.image.shape == (40, 60, 3) and set(loaded.seconds) == {"load"}

    with caplog.at_level(logging.WARNING):
        loaded = load_page(Page("a", tmp_path / "a.png", ocr_file=tmp_path / "none.json"), ocr=engine)
    assert "a: no OCR json" in caplog.text
    assert loaded.ocr_source == "WordPerPage" and loaded.ocr.words == ["recognized"] and "ocr" in loaded.seconds

    loaded = load_page(Page("doc_p0001", tmp_path / "doc.pdf", index=0), dpi=144, ocr=engine)
    assert loaded.ocr_source == "text layer" and loaded.ocr.words == ["Page 1"]
    assert loaded.image.shape == (200, 400, 3) and loaded.file_name is None
    # An image-only model reads no OCR.
    loaded = load_page(Page("doc_p0001", tmp_path / "doc.pdf", index=0), ocr=engine, with_text=False)
    assert loaded.ocr is None and loaded.ocr_source == "none"

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(UnreadableImageError, match="broken.png: cannot read the image"):
        load_page(Page("broken", tmp_path / "broken.png"))
