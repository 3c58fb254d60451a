"""What a page's columns hold, in reading order: paragraphs, headings, figures and tables with
their captions, equations and references.

In hard-text mode, paragraphs are often as short as captions and references, and a third of the
captions stand among the paragraphs rather than next to their figure or table.
"""

from .equations import build_equation
from .figures import build_figure
from .tables import build_table
from .text import TextBlock


class Numbering:
    """Running numbers of figures, tables, equations and references on a page."""

    def __init__(self, rng):
        self.counts = {kind: rng.randint(1, 8) for kind in ("figure", "table", "equation")}
        self.counts["reference"] = rng.randint(1, 40)

    def next(self, kind):
        self.counts[kind] += 1
        return self.counts[kind] - 1


def _paragraph_words(rng, hard_text):
    # Hard mode has many short paragraphs, as long as captions and references, so length says nothing.
    short = rng.random() < (0.4 if hard_text else 0.25)
    return rng.randint(8, 35) if short else rng.randint(40, 110)


def _with_caption(rng, item, caption, hard_text, pending, caption_first):
    """Caption above or below its item; in hard mode a third of them go to `pending` instead."""
    roll = rng.random()
    if hard_text:
        if roll < 1 / 3:
            pending.append(caption)
            return [item]
        caption_first = 0.5
        roll = (roll - 1 / 3) * 1.5
    return [caption, item] if roll < caption_first else [item, caption]


def _figure_group(rng, writer, style, width, numbers, hard_text, pending):
    figure = build_figure(rng, writer, width, style.label, style.block_gap)
    caption = TextBlock.of(
        "Figure caption", writer.figure_caption(numbers.next("figure"), rng.randint(6, 30)), style.caption, width
    )
    return _with_caption(rng, figure, caption, hard_text, pending, caption_first=0.15)


def _table_group(rng, writer, style, width, numbers, hard_text, pending):
    table = build_table(rng, writer, style.table, style.table_header, width, style.block_gap)
    if table is None:
        return None
    caption = TextBlock.of(
        "Table caption", writer.table_caption(numbers.next("table"), rng.randint(6, 30)), style.caption, width
    )
    return _with_caption(rng, table, caption, hard_text, pending, caption_first=0.8)


def _references(writer, style, width, numbers):
    yield [TextBlock.of("Title", writer.references_heading(), style.title, width)]
    while True:
        yield [TextBlock.of("Reference", writer.reference(numbers.next("reference")), style.reference, width)]


def page_content(rng, writer, style, width, hard_text):
    """Groups of blocks `width` wide, without end; each group goes into one column."""
    numbers = Numbering(rng)
    pending = []  # captions standing alone, placed after the next paragraph
    if rng.random() < 0.05:  # a page that continues the bibliography
        yield from _references(writer, style, width, numbers)
    while True:
        roll = rng.random()
        if roll < 0.55:
            text = writer.paragraph(_paragraph_words(rng, hard_text))
            group = [TextBlock.of("Text", text, style.text, width, splittable=True)]
            if roll < 0.12:  # a heading stays with the start of its first paragraph
                group.insert(0, TextBlock.of("Title", writer.heading(), style.title, width))
            yield group
            if pending:
                yield [pending.pop(0)]
        elif roll < 0.7:
            yield _figure_group(rng, writer, style, width, numbers, hard_text, pending)
        elif roll < 0.83:
            group = _table_group(rng, writer, style, width, numbers, hard_text, pending)
            if group:
                yield group
        elif roll < 0.98:
            yield [build_equation(rng, style.equation, width, numbers.next("equation"), style.block_gap)]
        else:
            yield from _references(writer, style, width, numbers)
