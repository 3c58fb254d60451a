"""Blocks in reading order with their text, and the page as Markdown: on synthetic pages with
their ground-truth boxes as the detections, and on hand-made layouts."""

import numpy as np
import pytest

from ditod.data import PageOCR, reading_order
from ditod.data.datasets import CDLA_CLASSES, DOCLAYNET_CLASSES, PUBLAYNET_CLASSES
from ditod.data.synthetic import CATEGORIES, SyntheticOptions, render_page
from ditod.engine.blocks import ROLES, Detection, blocks_markdown, ordered_blocks, role_of


def generator_order(detections):
    """The generator draws running headers and footers first, then the page top down,
    column after column: its reading order has the footers last."""
    labels = [d.label for d in detections]
    headers = [i for i, label in enumerate(labels) if label == "Header"]
    footers = [i for i, label in enumerate(labels) if label == "Footer"]
    return headers + [i for i in range(len(labels)) if i not in headers + footers] + footers


def lines_drawn_in(box, ocr):
    """The OCR lines lying wholly inside `box`, in the order they were drawn."""
    lines = ocr.boxes_xyxy()
    x0, y0, x1, y1 = box
    inside = (lines[:, 0] >= x0) & (lines[:, 1] >= y0) & (lines[:, 2] <= x1) & (lines[:, 3] <= y1)
    return [ocr.words[i] for i in np.flatnonzero(inside)]


@pytest.mark.parametrize("hard_text", [False, True])
def test_synthetic_pages_come_back_in_the_generators_order_with_their_lines(hard_text):
    layouts = set()
    for index in range(30):
        page = render_page(7, "blocks", index, SyntheticOptions(height=800, hard_text=hard_text))
        detections = [
            Detection(CATEGORIES[c - 1], 0.9, (x, y, x + w, y + h), c) for c, (x, y, w, h) in page.annotations
        ]
        blocks, outside = ordered_blocks(detections, page.ocr)

        assert [detections.index(b.detection) for b in blocks] == generator_order(detections), index
        assert [b.index for b in blocks] == list(range(len(blocks)))
        assert outside == []  # every drawn line is in a block
        for block in blocks:
            expected = lines_drawn_in(block.detection.bbox, page.ocr)
            got = [line.text for line in block.lines]
            if block.detection.label == "Figure":  # axis labels and legends: no reading order
                assert sorted(got) == sorted(expected)
            else:  # paragraphs, captions, equations and tables (row by row) as drawn
                assert got == expected, (index, block.detection.label)
                assert block.text == "\n".join(expected)
        middle = page.image.width / 2
        body = [b.detection.bbox for b in blocks if b.role not in ("page-header", "page-footer")]
        right = [y0 for x0, y0, _, _ in body if x0 > middle]
        across = [y1 for x0, _, x1, y1 in body if x0 < middle < x1]
        layouts.add("two columns" if right else "one column")
        if right and across and min(across) < min(right):
            layouts.add("a region across two columns")
    assert layouts == {"one column", "two columns", "a region across two columns"}


def box(x0, y0, x1, y1):
    return (float(x0), float(y0), float(x1), float(y1))


# A two-column page (columns 50-290 and 310-550) with a title and a figure across both
# columns, a running header and a page number: (label, box), in reading order.
TWO_COLUMNS = [
    ("Header", box(50, 10, 200, 20)),
    ("Header", box(400, 10, 550, 20)),
    ("Title", box(150, 40, 450, 70)),
    ("Text", box(50, 90, 290, 200)),
    ("Text", box(50, 210, 290, 300)),
    ("Text", box(310, 90, 550, 300)),
    ("Figure", box(50, 320, 550, 500)),
    ("Figure caption", box(50, 505, 550, 525)),
    ("Text", box(50, 540, 290, 760)),
    ("Table", box(310, 540, 550, 700)),
    ("Footer", box(280, 780, 320, 790)),
]


def test_two_columns_with_full_width_title_and_figure():
    # Detections come in score order, not reading order.
    shuffled = [TWO_COLUMNS[i] for i in (7, 3, 10, 0, 9, 5, 2, 8, 6, 1, 4)]
    detections = [Detection(label, 0.5 + 0.01 * i, b) for i, (label, b) in enumerate(shuffled)]
    blocks, _ = ordered_blocks(detections)
    assert [(b.detection.label, b.detection.bbox) for b in blocks] == TWO_COLUMNS


def test_one_column_page_reads_top_down_with_a_heading_left_of_a_centred_block():
    # A centred author line, then a short heading at the left margin: no columns.
    layout = [
        ("Title", box(100, 40, 500, 80)),
        ("Text", box(200, 90, 400, 110)),
        ("Title", box(50, 130, 120, 145)),
        ("Text", box(50, 150, 550, 300)),
        ("Table", box(150, 320, 450, 500)),
        ("Text", box(50, 520, 550, 700)),
    ]
    detections = [Detection(label, 0.9, b) for label, b in reversed(layout)]
    assert [(b.detection.label, b.detection.bbox) for b in ordered_blocks(detections)[0]] == layout
    # As lines, reading_order takes the left-hand heading for a column (the tokenizer's order).
    boxes = [b for _, b in layout[1:3]]
    assert reading_order(boxes).tolist() == [1, 0]
    assert reading_order(boxes, stack_disjoint=True).tolist() == [0, 1]


def test_lines_go_to_the_smallest_region_and_the_others_are_listed_apart():
    detections = [
        Detection("Figure", 0.99, box(0, 0, 400, 300)),
        Detection("Figure caption", 0.6, box(0, 260, 400, 300)),  # detected inside the figure
        Detection("Text", 0.7, box(0, 320, 400, 400)),
        Detection("Title", 0.5, box(0, 320, 400, 400)),  # the same box, lower score
    ]
    words = ["axis", "Figure 1: a caption", "second line", "first line", "lost line", "a note"]
    boxes = [[10, 10, 50, 20], [10, 270, 200, 20], [10, 360, 300, 20], [10, 330, 300, 20], [10, 420, 100, 20]]
    boxes.append([300, 500, 50, 20])
    ocr = PageOCR(600, 600, words, boxes)
    blocks, outside = ordered_blocks(detections, ocr)
    texts = {b.detection.label: b.text for b in blocks}
    assert texts == {
        "Figure": "axis",
        "Figure caption": "Figure 1: a caption",
        "Text": "first line\nsecond line",
        "Title": "",
    }
    assert [line.text for line in outside] == ["lost line", "a note"]
    assert outside[0].to_dict() == {"text": "lost line", "bbox": [10.0, 420.0, 110.0, 440.0]}


def test_every_class_of_the_built_in_datasets_has_a_role():
    normalized = {" ".join(name.lower().replace("-", " ").split()) for name in ROLES}
    assert normalized == set(ROLES)
    for name in {*PUBLAYNET_CLASSES, *CDLA_CLASSES, *DOCLAYNET_CLASSES, *CATEGORIES}:
        assert " ".join(name.lower().replace("-", " ").split()) in ROLES, name
    assert role_of("Section-header") == role_of("section_header") == "heading"
    assert role_of("Page-footer") == role_of("Footer") == "page-footer"
    assert role_of("Sidebar") == "paragraph"  # a class of no built-in dataset


def test_markdown_of_a_page():
    detections = [
        Detection("Header", 0.9, box(0, 0, 600, 20)),
        Detection("Title", 0.9, box(0, 30, 600, 60)),
        Detection("Section-header", 0.9, box(0, 70, 600, 90)),
        Detection("Text", 0.9, box(0, 100, 600, 150)),
        Detection("List-item", 0.9, box(0, 160, 600, 180)),
        Detection("Figure", 0.9, box(0, 190, 600, 300)),
        Detection("Figure caption", 0.9, box(0, 310, 600, 330)),
        Detection("table", 0.9, box(0, 340, 600, 400)),
        Detection("Equation", 0.9, box(0, 410, 600, 430)),
        Detection("Reference", 0.9, box(0, 440, 600, 460)),
        Detection("Text", 0.9, box(0, 470, 600, 490)),  # no text: left out
        Detection("Page-footer", 0.9, box(0, 580, 600, 595)),
    ]
    lines = [
        ("Journal of Layouts", (0, 2)),
        ("Reading Pages", (0, 35)),
        ("1. Introduction", (0, 72)),
        ("Layout analysis finds", (0, 102)),
        ("the regions of a page.", (0, 125)),
        ("an item", (0, 162)),
        ("12", (10, 200)),
        ("Figure 1: regions.", (0, 312)),
        ("Model", (10, 342)),
        ("AP", (300, 342)),
        ("ours", (10, 370)),
        ("61.2", (300, 370)),
        ("E = mc2", (200, 412)),
        ("[1] A. Author. A paper.", (0, 442)),
        ("page 3", (280, 582)),
    ]
    ocr = PageOCR(600, 600, [t for t, _ in lines], [[x, y, 100, 10] for _, (x, y) in lines])
    blocks, _ = ordered_blocks(detections, ocr)
    assert blocks_markdown(blocks) == (
        "# Reading Pages\n\n"
        "## 1. Introduction\n\n"
        "Layout analysis finds the regions of a page.\n\n"
        "- an item\n\n"
        "[Figure]\n\n"
        "*Figure 1: regions.*\n\n"
        "[Table]\nModel | AP\nours | 61.2\n\n"
        "[Equation]\nE = mc2\n\n"
        "[1] A. Author. A paper.\n"
    )
    assert blocks_markdown([]) == ""
