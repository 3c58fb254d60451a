"""The part of a page's text that English and Chinese share: templates filled from word lists."""

import re


def words(text):
    return tuple(text.split())


# Papers name their datasets the same way in every language.
DATASETS = words("PubLayNet DocBank CDLA DocLayNet FUNSD RVL-CDIP IIT-CDIP TableBank")
_SLOT = re.compile(r"\{(\w+)\}")


class Writer:
    """Plausible words for every kind of block, in one language, drawn from the page's generator.

    A language gives its word lists as class attributes, the fillers of its own template slots
    (`word_slots`), and paragraph, references_heading, paper_title, authors, affiliation,
    caption_body, reference, header_items and footer_items.
    """

    templates = ()  # sentences with {slot}s
    sections = ()  # heading names
    xref_kinds = ()  # what "{xref}" points at: figure, table, ...
    figure_labels = ()  # "Figure {}: "; the number goes in the braces
    table_labels = ()
    table_corners = ()  # top-left cell of a results table
    metrics = ()  # results table columns
    methods = ()  # results table rows
    axes = ()
    box_names = ()  # diagram boxes and bar chart groups
    series = ()  # plot legends

    def __init__(self, rng):
        self.rng = rng
        self.reference_style = rng.randrange(3)  # one bibliography style per page
        self._slots = {
            **self.word_slots(),
            "dataset": lambda: rng.choice(DATASETS),
            "pct": lambda: f"{rng.uniform(0.2, 9.9):.1f}%",
            "cite": lambda: str(rng.randint(1, 60)),
            "int": lambda: str(rng.randint(2, 300)),
            "float": lambda: f"{rng.uniform(0.0001, 0.5):.4f}",
            "xref": lambda: rng.choice(self.xref_kinds) + f" {rng.randint(1, 9)}",
        }

    def word_slots(self):
        """Slot name -> function drawing a word of this language."""
        raise NotImplementedError

    def sentence(self):
        return _SLOT.sub(lambda m: self._slots[m.group(1)](), self.rng.choice(self.templates))

    def heading(self):
        name = self.rng.choice(self.sections)
        number = str(self.rng.randint(1, 6))
        if self.rng.random() < 0.4:
            number += f".{self.rng.randint(1, 5)}"
        return name if self.rng.random() < 0.15 else f"{number} {name}"

    def figure_caption(self, number, num_words):
        return self.rng.choice(self.figure_labels).format(number) + self.caption_body(num_words)

    def table_caption(self, number, num_words):
        return self.rng.choice(self.table_labels).format(number) + self.caption_body(num_words)

    def table_rows(self, num_rows, num_cols):
        """A header row of metrics, then one row of scores per method."""
        rng = self.rng
        header = [rng.choice(self.table_corners)] + rng.sample(self.metrics, num_cols - 1)
        names = rng.sample(self.methods, num_rows - 1)
        decimals = [rng.choice((1, 2, 3)) for _ in header[1:]]
        rows = [[name] + [f"{rng.uniform(0, 100 if d == 1 else 1):.{d}f}" for d in decimals] for name in names]
        return [header] + rows

    def axis_label(self):
        return self.rng.choice(self.axes)

    def box_labels(self, count):
        return self.rng.sample(self.box_names, count)

    def series_names(self, count):
        return self.rng.sample(self.series, count)
