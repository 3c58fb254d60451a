"""Synthetic document pages with the 10 CDLA layout classes, their COCO boxes and their OCR.

Each page is composed from its own random generator, derived from (seed, split, index),
so a page is the same whatever the number of workers. A split is written as

    <out>/<split>.json               COCO boxes of every block (category ids 1..10, CATEGORIES order)
    <out>/<split>/images/<name>.png  the page
    <out>/<split>/ocr/<name>.json    line-level OCR of every text line drawn on the page

which `register_vl_coco(name, "<out>/<split>.json", "<out>/<split>/images")` reads as it is.

In `hard_text` mode, Text, Figure caption, Table caption and Reference blocks are drawn in
the same font, size, indent and spacing, captions are not always next to their figure or
table, and Text has short paragraphs too: only the words tell those classes apart.

Modules, from the bottom up: options (classes, SyntheticOptions), fonts, writer / english /
chinese (the words), canvas, text, equations, tables, figures (the blocks), style (fonts and
spacing of a page), columns (block placement), content (what a page holds), noise (OCR noise),
page (render_page), split (generate_split).
"""

from .fonts import find_cjk_font
from .options import CATEGORIES, SyntheticOptions
from .page import SyntheticPage, render_page
from .split import SplitSummary, generate_split

__all__ = [
    "CATEGORIES",
    "SplitSummary",
    "SyntheticOptions",
    "SyntheticPage",
    "find_cjk_font",
    "generate_split",
    "render_page",
]
