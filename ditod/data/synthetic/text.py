"""Line breaking, and blocks of wrapped text: paragraphs, headings, captions, references."""

import re
from dataclasses import dataclass

from .canvas import union
from .fonts import Face

# CJK characters and punctuation wrap one by one; everything else wraps at spaces.
_CJK = "\u2e80-\u9fff\u3000-\u303f\uff00-\uffef"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+\s*|\s+")
# Chinese typesetting never starts a line with closing punctuation: it hangs at the line end instead.
_NO_LINE_START = frozenset("，。、；：！？）」》”")


def wrap(text, face, width, first_indent=0, rest_indent=0):
    """Greedy line breaking -> [(line text, indent, line width)].

    Line widths are sums of cached token widths: measuring every line again would cost more
    than drawing it, and kerning between words changes the sum by a pixel at most.
    """
    lines, tokens, used, indent = [], [], 0.0, first_indent
    end = 0.0  # width of the line without its trailing space
    for token in _TOKEN.findall(text):
        stripped = face.width(token.rstrip())
        if tokens and token not in _NO_LINE_START and indent + used + stripped > width - 1:
            lines.append(("".join(tokens).rstrip(), indent, end))
            tokens, used, indent = [], 0.0, rest_indent
        if token.isspace() and not tokens:
            continue
        tokens.append(token)
        end = used + stripped
        used += face.width(token)
    if tokens:
        lines.append(("".join(tokens).rstrip(), indent, end))
    return lines


@dataclass(frozen=True)
class TextStyle:
    face: Face
    leading: int  # top-to-top distance of consecutive lines
    gap: int  # space above a block
    first_indent: int = 0
    rest_indent: int = 0
    center: bool = False


@dataclass
class TextBlock:
    """Wrapped lines of one block."""

    category: str
    lines: list
    style: TextStyle
    splittable: bool = False

    @classmethod
    def of(cls, category, text, style, width, splittable=False):
        return cls(category, wrap(text, style.face, width, style.first_indent, style.rest_indent), style, splittable)

    @property
    def gap(self):
        return self.style.gap

    @property
    def height(self):
        return (len(self.lines) - 1) * self.style.leading + self.style.face.line_height

    def split(self, max_height):
        """(head that fits in max_height, rest), or None when fewer than two lines would fit."""
        fitting = (max_height - self.style.face.line_height) // self.style.leading + 1
        if fitting < 2 or fitting >= len(self.lines):
            return None
        return (
            TextBlock(self.category, self.lines[:fitting], self.style, True),
            TextBlock(self.category, self.lines[fitting:], self.style, True),
        )

    def draw(self, canvas, x, y, width):
        face = self.style.face
        boxes = []
        for i, (text, indent, line_width) in enumerate(self.lines):
            left = x + (width - line_width) / 2 if self.style.center else x + indent
            boxes.append(canvas.write(left, y + i * self.style.leading, text, face, line_width))
        canvas.add_block(self.category, union(boxes))
