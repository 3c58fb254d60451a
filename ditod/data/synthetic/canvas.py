"""The page being drawn, with the annotated blocks and the OCR lines drawn on it so far."""

import math

from PIL import Image, ImageDraw


class Canvas:
    def __init__(self, width, height, paper, ink, grayscale=False):
        self.width, self.height, self.ink, self.grayscale = width, height, ink, grayscale
        self.image = Image.new("RGB", (width, height), paper)
        self.draw = ImageDraw.Draw(self.image)
        self.blocks = []  # (category, (x0, y0, x1, y1))
        self.lines = []  # (text, (x0, y0, x1, y1))

    def write(self, x, y, text, face, width=None):
        """Draw one line of text with its top-left at (x, y); record it as an OCR line."""
        x, y = round(x), round(y)
        self.draw.text((x, y), text, font=face.font, fill=self.ink)
        width = face.width(text) if width is None else width
        box = (x, y, x + math.ceil(width), y + face.line_height)
        self.lines.append((text, box))
        return box

    def add_block(self, category, box):
        self.blocks.append((category, tuple(int(v) for v in box)))


def union(boxes):
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
