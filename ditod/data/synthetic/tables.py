"""Results tables: a ruled grid of cell text, centered in its column."""

import math
from dataclasses import dataclass
from typing import ClassVar

from .fonts import Face


@dataclass
class TableBlock:
    """Booktabs rules or a full grid around the cells."""

    rows: list  # the first row is the header
    face: Face
    header_face: Face
    col_widths: list
    pad: int  # around cell text
    full_grid: bool
    gap: int
    category: ClassVar[str] = "Table"
    splittable: ClassVar[bool] = False

    @property
    def row_height(self):
        return self.face.line_height + self.pad

    @property
    def width(self):
        return sum(self.col_widths)

    @property
    def height(self):
        return self.row_height * len(self.rows) + 2

    def draw(self, canvas, x, y, width):
        left = round(x + (width - self.width) / 2)
        right, bottom = left + self.width, y + self.height - 1
        draw, ink = canvas.draw, canvas.ink
        for r, row in enumerate(self.rows):
            face = self.header_face if r == 0 else self.face
            cell_x = left
            for c, text in enumerate(row):
                # row names left aligned, the other cells centered
                text_x = cell_x + (self.pad if c == 0 else (self.col_widths[c] - face.width(text)) / 2)
                canvas.write(text_x, y + 1 + r * self.row_height + self.pad / 2, text, face)
                cell_x += self.col_widths[c]
        rules = range(len(self.rows) + 1) if self.full_grid else (0, 1, len(self.rows))
        for r in rules:
            line_y = min(y + r * self.row_height + (1 if r else 0), bottom)
            draw.line([(left, line_y), (right, line_y)], fill=ink, width=1 if self.full_grid or r == 1 else 2)
        if self.full_grid:
            cell_x = left
            for col_width in [0] + self.col_widths:
                cell_x += col_width
                draw.line([(min(cell_x, right), y), (min(cell_x, right), bottom)], fill=ink, width=1)
        canvas.add_block(self.category, (left, y, right + 1, bottom + 1))


def build_table(rng, writer, face, header_face, width, gap):
    """A random table, its last columns dropped until it fits in `width`; None if two columns don't."""
    pad = max(3, face.line_height // 2)
    rows = writer.table_rows(rng.randint(3, 9), rng.randint(3, 6))
    full_grid = rng.random() < 0.4
    while len(rows[0]) >= 2:
        col_widths = [
            math.ceil(max((header_face if r == 0 else face).width(row[c]) for r, row in enumerate(rows))) + 2 * pad
            for c in range(len(rows[0]))
        ]
        if sum(col_widths) <= width:
            return TableBlock(rows, face, header_face, col_widths, pad, full_grid, gap)
        rows = [row[:-1] for row in rows]
    return None
