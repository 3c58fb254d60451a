"""The synthetic page generator: determinism, COCO/OCR outputs, hard-text mode, Chinese, pixels."""

import hashlib
import importlib.util
import json
import logging
import os
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from pycocotools.coco import COCO

from ditod.data.ocr import load_ocr
from ditod.data.synthetic import (
    CATEGORIES,
    SyntheticOptions,
    find_cjk_font,
    generate_split,
    render_page,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATEGORY_ID = {name: i + 1 for i, name in enumerate(CATEGORIES)}
TEXT_LIKE = ("Text", "Figure caption", "Table caption", "Reference")
CJK = re.compile(r"[\u4e00-\u9fff]")
needs_cjk_font = pytest.mark.skipif(find_cjk_font() is None, reason="no CJK font (apt-get install fonts-wqy-microhei)")


def tree_digest(root):
    """Path -> sha256 of every file under root."""
    digests = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def pages(count, seed=0, split="test", **options):
    opts = SyntheticOptions(**options)
    return [render_page(seed, split, i, opts) for i in range(count)]


def inside(inner, outer):
    return inner[0] >= outer[0] and inner[1] >= outer[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def xyxy(box):
    x, y, w, h = box
    return (x, y, x + w, y + h)


def lines_of_blocks(page):
    """[(category name, block box, [(text, line box) of the OCR lines centered in it])]."""
    lines = [(text, xyxy(box)) for text, box in zip(page.ocr.words, page.ocr.boxes.tolist())]
    blocks = []
    for category_id, box in page.annotations:
        box = xyxy(box)
        centered = [
            (t, b) for t, b in lines if box[0] <= (b[0] + b[2]) / 2 <= box[2] and box[1] <= (b[1] + b[3]) / 2 <= box[3]
        ]
        blocks.append((CATEGORIES[category_id - 1], box, centered))
    return blocks


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate_split(str(out), "train", 8, seed=3)
    return out, summary


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    generate_split(str(tmp_path / "a"), "train", 4, seed=7)
    generate_split(str(tmp_path / "b"), "train", 4, seed=7, workers=2)
    generate_split(str(tmp_path / "c"), "train", 4, seed=8)
    a, b, c = (tree_digest(tmp_path / name) for name in "abc")
    assert len(a) == 1 + 4 + 4  # coco json, images, ocr jsons
    assert a == b
    differing = [path for path in a if a[path] != c[path]]
    assert sorted(differing) == sorted(a)


def test_page_depends_on_split_and_index_only():
    assert render_page(1, "train", 5).ocr.words == render_page(1, "train", 5).ocr.words
    assert render_page(1, "train", 5).ocr.words != render_page(1, "val", 5).ocr.words


def test_coco_json_loads_and_boxes_lie_in_their_pages(dataset):
    out, summary = dataset
    coco = COCO(str(out / "train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    assert len(coco.getImgIds()) == 8
    for image in coco.loadImgs(coco.getImgIds()):
        assert (out / "train" / "images" / image["file_name"]).is_file()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert anns
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= image["width"] and y + h <= image["height"]
            assert ann["area"] == w * h and ann["iscrowd"] == 0
    assert sum(summary.annotations_per_class.values()) == len(coco.getAnnIds())


def test_register_vl_coco_reads_the_split_with_its_ocr(dataset):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ditod.data.datasets import register_vl_coco

    out, _ = dataset
    name = f"synthetic_test_{out.name}"
    register_vl_coco(name, str(out / "train.json"), str(out / "train" / "images"))  # default OCR root
    records = DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).thing_classes == list(CATEGORIES)
    assert len(records) == 8
    for record in records:
        assert os.path.isfile(record["file_name"])
        ocr = load_ocr(record["ocr_file"], (record["width"], record["height"]))
        assert len(ocr) > 0
        assert {a["category_id"] for a in record["annotations"]} <= set(range(10))  # contiguous ids


def test_every_class_appears_over_a_few_pages():
    seen = {category_id for page in pages(30) for category_id, _ in page.annotations}
    assert seen == set(range(1, 11))
    seen_hard = {category_id for page in pages(30, hard_text=True) for category_id, _ in page.annotations}
    assert seen_hard == set(range(1, 11))


@pytest.mark.parametrize("options", [{}, {"hard_text": True}, {"height": 600}])
def test_ocr_lines_lie_in_the_page_and_in_their_block(options):
    for page in pages(10, **options):
        width, height = page.image.size
        assert (page.ocr.width, page.ocr.height) == (width, height)
        block_boxes = [xyxy(box) for _, box in page.annotations]
        for text, box in zip(page.ocr.words, page.ocr.boxes.tolist()):
            line = xyxy(box)
            assert text.strip()
            assert 0 <= line[0] < line[2] <= width and 0 <= line[1] < line[3] <= height
            # every drawn text belongs to an annotated block (figure labels to their figure, ...)
            assert any(inside(line, block) for block in block_boxes), (text, line)
        for category, box, lines in lines_of_blocks(page):
            if category in TEXT_LIKE:
                assert lines, f"{category} block without text"
                assert all(inside(line, box) for _, line in lines)


REFERENCE = re.compile(r"^(\[\d+\]|\d+\.) .*\b(19|20)\d\d\b")
FIGURE_CAPTION = re.compile(r"^(Figure \d+[:.]|Fig\. \d+\.|图 ?\d+：)")
TABLE_CAPTION = re.compile(r"^(Table \d+[:.]|TABLE \d+\.|表 ?\d+：)")


@pytest.mark.parametrize("lang", ["en", pytest.param("zh", marks=needs_cjk_font)])
def test_references_and_captions_read_like_them(lang):
    checked = defaultdict(int)
    for page in pages(25, lang=lang, hard_text=True):
        for category, _, lines in lines_of_blocks(page):
            text = " ".join(t for t, _ in lines)
            if category == "Reference":
                assert REFERENCE.match(text), text
            elif category == "Figure caption":
                assert FIGURE_CAPTION.match(text), text
            elif category == "Table caption":
                assert TABLE_CAPTION.match(text), text
            elif category == "Text":
                assert not REFERENCE.match(text) and not FIGURE_CAPTION.match(text) and not TABLE_CAPTION.match(text)
            checked[category] += 1
    assert min(checked[c] for c in TEXT_LIKE) >= 3, checked


def line_heights(page):
    """Category -> line heights of its OCR lines, and the most common height of Text lines."""
    heights = defaultdict(list)
    for category, _, lines in lines_of_blocks(page):
        if category in TEXT_LIKE:
            heights[category] += [b[3] - b[1] for _, b in lines]
    body = Counter(heights["Text"]).most_common(1)[0][0] if heights["Text"] else None
    return heights, body


def test_hard_text_captions_and_references_have_the_body_line_height():
    for page in pages(20, hard_text=True):
        heights, body = line_heights(page)
        for category in ("Figure caption", "Table caption", "Reference"):
            assert set(heights[category]) <= {body}, (category, heights)


def test_normal_mode_draws_captions_and_references_differently():
    differing = 0
    for page in pages(20):
        heights, body = line_heights(page)
        differing += any(set(heights[c]) - {body} for c in ("Figure caption", "Table caption", "Reference"))
    assert differing >= 5


def test_hard_text_length_and_position_do_not_give_classes_away():
    short_paragraphs, lone_captions = 0, 0
    for page in pages(30, hard_text=True):
        blocks = lines_of_blocks(page)
        items = [box for category, box, _ in blocks if category in ("Figure", "Table")]
        for category, box, lines in blocks:
            if category == "Text" and len(lines) <= 2:
                short_paragraphs += 1
            if category in ("Figure caption", "Table caption"):
                # a caption "next to" an item overlaps it horizontally, two line heights above or below at most
                near = 2 * (box[3] - box[1]) / len(lines)
                lone_captions += not any(
                    item[0] < box[2]
                    and box[0] < item[2]
                    and (abs(item[3] - box[1]) < near or abs(box[3] - item[1]) < near)
                    for item in items
                )
    assert short_paragraphs >= 10
    assert lone_captions >= 3


@needs_cjk_font
def test_chinese_and_mixed_pages():
    for page in pages(3, lang="zh"):
        text_lines = [t for category, _, lines in lines_of_blocks(page) if category == "Text" for t, _ in lines]
        assert sum(bool(CJK.search(line)) for line in text_lines) >= 0.9 * len(text_lines) > 0
    mixed = pages(12, lang="mixed")
    chinese = [any(CJK.search(word) for word in page.ocr.words) for page in mixed]
    assert any(chinese) and not all(chinese)


def test_options_are_checked():
    with pytest.raises(ValueError, match="lang"):
        SyntheticOptions(lang="fr")
    with pytest.raises(ValueError, match="height"):
        SyntheticOptions(height=100)
    with pytest.raises(ValueError, match="ocr_drop"):
        SyntheticOptions(ocr_drop=1.5)


def ink_mask(page):
    gray = np.asarray(page.image.convert("L"), dtype=np.int16)
    return gray < 128


def test_blocks_contain_ink_and_ink_lies_in_blocks():
    for page in pages(10):
        ink = ink_mask(page)
        covered = np.zeros_like(ink)
        for category_id, (x, y, w, h) in page.annotations:
            region = np.asarray(page.image.convert("L"), dtype=np.int16)[y : y + h, x : x + w]
            assert (region < 128).any(), CATEGORIES[category_id - 1]
            if CATEGORIES[category_id - 1] == "Figure":  # drawn, not a blank box
                assert region.std() > 10
            covered[y : y + h, x : x + w] = True
        # outside the blocks only rules and specks of dust
        assert ink[~covered].mean() < 0.005


def test_ocr_noise_changes_the_ocr_not_the_page():
    clean = pages(3)
    noisy = pages(3, ocr_drop=0.3, ocr_swap=0.05, ocr_jitter=0.2)
    for a, b in zip(clean, noisy):
        assert a.image.tobytes() == b.image.tobytes()
        assert a.annotations == b.annotations
        assert 0.5 * len(a.ocr) < len(b.ocr) < len(a.ocr)
        assert set(b.ocr.words) - set(a.ocr.words)
        assert (b.ocr.boxes[:, :2] >= 0).all()
        assert (b.ocr.boxes[:, 0] + b.ocr.boxes[:, 2] <= b.ocr.width).all()


def make_synthetic_tool():
    spec = importlib.util.spec_from_file_location("make_synthetic", os.path.join(REPO, "tools", "make_synthetic.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_make_synthetic_tool_writes_several_splits(tmp_path, capsys):
    tool = make_synthetic_tool()
    tool.main(["--out", str(tmp_path), "--splits", "train:3", "val:2", "--hard-text", "--seed", "4"])
    for split, count in (("train", 3), ("val", 2)):
        coco = json.loads((tmp_path / f"{split}.json").read_text())
        assert len(coco["images"]) == count
        assert len(list((tmp_path / split / "ocr").iterdir())) == count
    summary = capsys.readouterr().out
    assert "train: 3 pages" in summary and "val: 2 pages" in summary and "Table caption" in summary
    with pytest.raises(SystemExit):
        tool.main(["--out", str(tmp_path), "--splits", "train:x"])


def test_make_synthetic_rerun_removes_the_earlier_split(tmp_path, caplog):
    tool = make_synthetic_tool()
    tool.main(["--out", str(tmp_path), "--splits", "val:3", "train:1"])
    # What ditod.data.ocr.atomic_write leaves when a run is killed mid-write.
    (tmp_path / "val" / "ocr" / ".val_000002.json.0123abcd.tmp").write_text("{")
    train = tree_digest(tmp_path / "train")
    with caplog.at_level(logging.INFO, logger="ditod.tools.make_synthetic"):
        tool.main(["--out", str(tmp_path), "--split", "val", "--num-pages", "1"])
    assert "Removing the earlier val split" in caplog.text and "train split" not in caplog.text
    assert len(json.loads((tmp_path / "val.json").read_text())["images"]) == 1
    assert sorted(os.listdir(tmp_path / "val" / "images")) == ["val_000000.png"]
    assert sorted(os.listdir(tmp_path / "val" / "ocr")) == ["val_000000.json"]
    assert tree_digest(tmp_path / "train") == train


@pytest.mark.parametrize("foreign", ["val/notes.txt", "val/images/cover.png", "val/ocr/val_000000.txt", "train.json"])
def test_make_synthetic_refuses_to_remove_files_it_did_not_write(tmp_path, foreign):
    tool = make_synthetic_tool()
    tool.main(["--out", str(tmp_path), "--splits", "val:2"])
    (tmp_path / foreign).write_text('{"images": []}')
    before = tree_digest(tmp_path)
    with pytest.raises(SystemExit) as error:
        tool.main(["--out", str(tmp_path), "--splits", "val:1", "train:1"])
    message = str(error.value.code)
    assert message.startswith("make_synthetic.py: error: ") and "\n" not in message
    assert os.path.basename(foreign) in message or os.path.dirname(foreign) in message
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("args", [["--split", "a/b", "--num-pages", "1"], ["--splits", "..:1"]])
def test_make_synthetic_split_name_must_be_a_file_name(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as error:
        make_synthetic_tool().main(["--out", str(tmp_path), *args])
    assert error.value.code == 2
    assert "split name must be a plain file name" in capsys.readouterr().err.splitlines()[-1]
    assert not os.listdir(tmp_path)
