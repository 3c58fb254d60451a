"""One synthetic page: paper, running header and footer, title block, columns of content, OCR."""

import hashlib
import math
import random
from dataclasses import dataclass

from PIL import Image

from ..ocr import PageOCR
from .canvas import Canvas
from .chinese import ChineseWriter
from .columns import ColumnFlow
from .content import page_content
from .english import EnglishWriter
from .fonts import NO_CJK_FONT, find_cjk_font, get_face
from .noise import noisy_ocr
from .options import CATEGORY_IDS, SyntheticOptions
from .style import page_style
from .text import TextBlock, TextStyle, wrap


@dataclass
class SyntheticPage:
    image: Image.Image
    annotations: list  # [(category_id, [x, y, w, h])], in drawing order
    ocr: PageOCR


def _page_rng(seed, split, index, purpose):
    digest = hashlib.sha256(f"{seed}/{split}/{index}/{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _paper(rng, width, height):
    """Paper colour, ink colour, black-and-white or colour print and, on some pages, specks of dust."""
    tint = rng.randint(0, 10) if rng.random() < 0.4 else 0
    paper = (255 - tint, 255 - tint, 255 - round(tint * 1.8))
    ink = (rng.randint(0, 40),) * 3
    canvas = Canvas(width, height, paper, ink, grayscale=rng.random() < 0.5)
    if rng.random() < 0.3:
        specks = [(rng.randrange(width), rng.randrange(height)) for _ in range(rng.randint(50, 600))]
        canvas.draw.point(specks, fill=(170, 170, 170))
    return canvas


def _running_line(canvas, style, items, y, left, right):
    """A header or footer line: item at the left and/or right margin (or one centered)."""
    boxes = []
    first, second = items
    if second is None:
        boxes.append(canvas.write((left + right - style.small.width(first)) / 2, y, first, style.small))
    else:
        if style.small.width(first) + style.small.width(second) + 20 < right - left:
            boxes.append(canvas.write(left, y, first, style.small))
        boxes.append(canvas.write(right - style.small.width(second), y, second, style.small))
    return boxes


def _front_matter(canvas, rng, writer, style, left, right, top, scale):
    """Paper title, authors and affiliation across the full width; returns where the body starts."""
    inner = (right - left) * 0.9
    title_face = get_face(style.title.face.font.path, max(8, round(rng.randint(18, 24) * scale)))
    title = TextBlock.of(
        "Title",
        writer.paper_title(),
        TextStyle(title_face, round(title_face.line_height * 1.15), 0, center=True),
        inner,
    )
    people = TextBlock.of(
        "Text", writer.authors(), TextStyle(style.small, round(style.small.line_height * 1.2), 0, center=True), inner
    )
    people.lines += wrap(writer.affiliation(), style.small, inner)
    y = top
    for block in (title, people):
        block.draw(canvas, left + (right - left - inner) / 2, y, inner)
        y += block.height + style.text.leading
    return y + style.block_gap


def _compose(rng, options):
    height = options.height
    width = round(height / math.sqrt(2))
    scale = height / 1000
    lang = options.lang
    if lang == "mixed":
        lang = "zh" if rng.random() < 0.5 and find_cjk_font() else "en"
    writer = (ChineseWriter if lang == "zh" else EnglishWriter)(rng)
    style = page_style(rng, lang, scale, options.hard_text)
    canvas = _paper(rng, width, height)

    margin = round(width * rng.uniform(0.07, 0.11))
    left, right = margin, width - margin
    top = round(height * rng.uniform(0.065, 0.09))
    bottom = height - round(height * rng.uniform(0.06, 0.09))
    page_number = rng.randint(1, 400)
    if rng.random() < 0.85:
        header_y = top - style.small.line_height - round(style.text.leading * rng.uniform(0.8, 1.6))
        items = writer.header_items(page_number)
        for box in _running_line(
            canvas, style, items if rng.random() < 0.7 else (items[0], None), header_y, left, right
        ):
            canvas.add_block("Header", box)
        if rng.random() < 0.4:
            rule_y = header_y + style.small.line_height + 2
            canvas.draw.line([(left, rule_y), (right, rule_y)], fill=canvas.ink, width=1)
    if rng.random() < 0.85:
        footer_y = bottom + round(style.text.leading * rng.uniform(0.8, 1.6))
        items = writer.footer_items(page_number)
        for box in _running_line(
            canvas, style, items if rng.random() < 0.5 else (items[1], None), footer_y, left, right
        ):
            canvas.add_block("Footer", box)

    if rng.random() < 0.2:
        top = _front_matter(canvas, rng, writer, style, left, right, top, scale)
    columns = [(left, right)]
    if rng.random() < 0.55:
        gutter = round(width * rng.uniform(0.03, 0.05))
        middle = (left + right) // 2
        columns = [(left, middle - gutter // 2), (middle + gutter - gutter // 2, right)]
    flow = ColumnFlow(columns, top, bottom)
    flow.fill(canvas, page_content(rng, writer, style, flow.width, options.hard_text))
    return canvas


def render_page(seed, split, index, options=SyntheticOptions()):
    """Page `index` of `split`: a function of (seed, split, index, options) only."""
    if options.lang == "zh" and find_cjk_font() is None:
        raise RuntimeError(NO_CJK_FONT)
    canvas = _compose(_page_rng(seed, split, index, "page"), options)
    annotations = []
    for category, (x0, y0, x1, y1) in canvas.blocks:
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, canvas.width), min(y1, canvas.height)
        annotations.append((CATEGORY_IDS[category], [x0, y0, x1 - x0, y1 - y0]))
    # OCR noise has its own generator: switching it on leaves the page itself unchanged.
    ocr = noisy_ocr(canvas, options, _page_rng(seed, split, index, "ocr"))
    # Grey pages are also half as long to encode as PNG.
    image = canvas.image.convert("L") if canvas.grayscale else canvas.image
    return SyntheticPage(image, annotations, ocr)
