"""A page's detected regions as blocks in reading order, each with the text of its OCR
lines, and the page as Markdown. Pure functions of the detections and the page's OCR.

Reading order (`ordered_blocks`): running headers first, then the body, then running
footers (each group by `ditod.data.reading_order`, the column-aware order of the OCR
lines, applied to the region boxes):

* one-column page: regions top to bottom;
* two columns: the left column top to bottom, then the right one;
* a region across both columns (a title, an abstract, a wide figure or table) cuts the
  page into bands read top to bottom: what lies above it (column by column), the region,
  then what lies below it (column by column).

A line belongs to the region its centre falls in; when it falls in several (nested or
overlapping detections), to the smallest of them (a caption detected inside a figure
keeps its lines), the higher score breaking ties. A block's lines are in reading order;
a table's row by row, each row left to right. Lines in no region are listed apart.

Class names differ between datasets; `ROLES` maps those of the built-in ones
(PubLayNet, CDLA, DocLayNet, synthetic) to a role that decides the Markdown, and any
other name is a paragraph.
"""

from dataclasses import dataclass, field

import numpy as np

from ..data.ocr import PageOCR
from ..data.reading_order import reading_order

__all__ = ["ROLES", "Block", "Detection", "TextLine", "blocks_markdown", "ordered_blocks", "role_of"]

# Class name (lower case, "-" and "_" as spaces) -> role.
ROLES = {
    "title": "title",
    "section header": "heading",
    "text": "paragraph",
    "list": "paragraph",
    "list item": "list-item",
    "caption": "caption",
    "figure caption": "caption",
    "table caption": "caption",
    "footnote": "footnote",
    "reference": "reference",
    "figure": "figure",
    "picture": "figure",
    "table": "table",
    "equation": "equation",
    "formula": "equation",
    "header": "page-header",
    "page header": "page-header",
    "footer": "page-footer",
    "page footer": "page-footer",
}


def role_of(label: str) -> str:
    """The role of a class name (see `ROLES`); "paragraph" for names not in the table."""
    return ROLES.get(" ".join(label.lower().replace("-", " ").replace("_", " ").split()), "paragraph")


@dataclass(frozen=True)
class Detection:
    """A detected region: class name, score, box (x0, y0, x1, y1) in page pixels, COCO category id."""

    label: str
    score: float
    bbox: tuple[float, float, float, float]
    category_id: int | None = None


@dataclass(frozen=True)
class TextLine:
    """An OCR line: its text and box (x0, y0, x1, y1) in page pixels."""

    text: str
    bbox: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {"text": self.text, "bbox": [round(float(v), 2) for v in self.bbox]}


@dataclass
class Block:
    """A region in reading order (`index`, 0-based) with the OCR lines inside it, in order."""

    index: int
    detection: Detection
    role: str
    lines: list[TextLine] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The lines' text, one line per line."""
        return "\n".join(line.text for line in self.lines)

    def to_dict(self) -> dict:
        d = self.detection
        return {
            "index": self.index,
            "class": d.label,
            "category_id": d.category_id,
            "role": self.role,
            "score": round(float(d.score), 4),
            "bbox": [round(float(v), 2) for v in d.bbox],
            "text": self.text,
        }


def _table_rows(boxes):
    """The lines of a table (boxes N x 4) as rows, top to bottom, each left to right: a line
    starts a new row when its vertical centre is below the first line of the current row."""
    centre = (boxes[:, 1] + boxes[:, 3]) / 2
    rows, bottom = [], -np.inf
    for i in np.argsort(centre, kind="stable"):
        if centre[i] > bottom:
            rows.append([])
            bottom = boxes[i, 3]
        rows[-1].append(int(i))
    return [sorted(row, key=lambda i: boxes[i, 0]) for row in rows]


def ordered_blocks(detections, ocr: PageOCR | None = None) -> tuple[list[Block], list[TextLine]]:
    """
    The detections as blocks in reading order with their lines (see the module's docstring),
    and the OCR lines that fall in no block, in reading order.
    """
    detections = list(detections)
    roles = [role_of(d.label) for d in detections]
    boxes = np.asarray([d.bbox for d in detections], dtype=np.float64).reshape(-1, 4)
    furniture = ("page-header", "page-footer")
    groups = [
        [i for i, role in enumerate(roles) if role == "page-header"],
        [i for i, role in enumerate(roles) if role not in furniture],
        [i for i, role in enumerate(roles) if role == "page-footer"],
    ]
    order = np.concatenate(
        [np.asarray(g, dtype=np.int64)[reading_order(boxes[g], stack_disjoint=True)] for g in groups]
    )
    blocks = [Block(index, detections[i], roles[i]) for index, i in enumerate(order)]
    if ocr is None or not len(ocr):
        return blocks, []

    lines = ocr.boxes_xyxy()
    owner = np.full(len(lines), -1)  # the block of each line (its position in `blocks`)
    if blocks:
        ordered = boxes[order]
        centre_x = (lines[:, 0:1] + lines[:, 2:3]) / 2
        centre_y = (lines[:, 1:2] + lines[:, 3:4]) / 2
        inside = (
            (centre_x >= ordered[:, 0])
            & (centre_x <= ordered[:, 2])
            & (centre_y >= ordered[:, 1])
            & (centre_y <= ordered[:, 3])
        )
        # Blocks ranked smallest first, the higher score first among equal areas: a line goes
        # to the best-ranked block it is in.
        area = (ordered[:, 2] - ordered[:, 0]) * (ordered[:, 3] - ordered[:, 1])
        scores = np.asarray([block.detection.score for block in blocks], dtype=np.float64)
        rank = np.empty(len(blocks), dtype=np.int64)
        rank[np.lexsort((-scores, area))] = np.arange(len(blocks))
        ranked = np.where(inside, rank, len(blocks))
        best = ranked.argmin(axis=1)
        found = inside[np.arange(len(lines)), best]
        owner[found] = best[found]
    for b, block in enumerate(blocks):
        members = np.flatnonzero(owner == b)
        if block.role == "table":
            within = np.asarray([i for row in _table_rows(lines[members]) for i in row], dtype=np.int64)
        else:
            within = reading_order(lines[members])
        block.lines = [TextLine(ocr.words[i], tuple(lines[i])) for i in members[within]]
    outside = np.flatnonzero(owner < 0)
    return blocks, [TextLine(ocr.words[i], tuple(lines[i])) for i in outside[reading_order(lines[outside])]]


def _block_markdown(block):
    """A block as Markdown, or None when it is left out (see `blocks_markdown`)."""
    text = " ".join(line.text.strip() for line in block.lines)
    role = block.role
    if role in ("page-header", "page-footer"):
        return None
    if role == "figure":
        return "[Figure]"
    if role == "table":
        rows = _table_rows(np.asarray([line.bbox for line in block.lines]).reshape(-1, 4))
        return "\n".join(["[Table]", *(" | ".join(block.lines[i].text for i in row) for row in rows)])
    if role == "equation":
        return "\n".join(["[Equation]", *(line.text for line in block.lines)])
    if not text:
        return None
    prefix = {"title": "# ", "heading": "## ", "list-item": "- "}.get(role, "")
    return f"*{text}*" if role == "caption" else prefix + text


def blocks_markdown(blocks) -> str:
    """
    The blocks as Markdown, in their order, separated by blank lines: a title as ``#``, a
    section header as ``##``, a list item as ``-``, a caption in italics, paragraphs,
    footnotes and references as text; a figure as the placeholder ``[Figure]`` (its caption
    is the block next to it), a table as ``[Table]`` followed by its rows (cells
    separated by `` | ``), an equation as ``[Equation]`` followed by its lines. Running headers and footers, text blocks without
    lines, and lines outside every block are left out.
    """
    parts = [text for text in map(_block_markdown, blocks) if text]
    return "\n\n".join(parts) + "\n" if parts else ""
