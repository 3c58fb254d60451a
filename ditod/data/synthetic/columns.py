"""Placing groups of blocks down the columns of a page, a paragraph continuing in the next column."""


class ColumnFlow:
    """Stacks groups of blocks down one column after the other.

    A block has `height`, `gap` (space above it), `splittable`, `draw(canvas, x, y, width)`
    and, when splittable, `split(max_height)`.
    """

    def __init__(self, columns, top, bottom):
        self.columns, self.top, self.bottom = columns, top, bottom
        self.index, self.y = 0, top

    @property
    def full(self):
        return self.index >= len(self.columns)

    @property
    def width(self):
        x0, x1 = self.columns[0]
        return x1 - x0

    def _next_column(self):
        self.index, self.y = self.index + 1, self.top

    def _draw(self, canvas, group):
        x0, x1 = self.columns[self.index]
        for i, block in enumerate(group):
            if i or self.y > self.top:
                self.y += block.gap
            block.draw(canvas, x0, self.y, x1 - x0)
            self.y += block.height

    def place(self, canvas, group):
        """Draw the group in this column or the next; False when it was left out."""
        while not self.full:
            at_top = self.y == self.top
            room = self.bottom - self.y - (0 if at_top else group[0].gap)
            needed = sum(b.height for b in group) + sum(b.gap for b in group[1:])
            if needed <= room:
                self._draw(canvas, group)
                return True
            last = group[-1]
            parts = last.split(room - needed + last.height) if last.splittable else None
            if parts:  # the last paragraph continues at the top of the next column
                self._draw(canvas, group[:-1] + [parts[0]])
                self._next_column()
                group = [parts[1]]
                continue
            if at_top or room > 0.3 * (self.bottom - self.top):
                return False  # too tall for any column, or the room is kept for smaller blocks
            self._next_column()
        return False

    def fill(self, canvas, groups, patience=4):
        """Place groups until the columns are full or `patience` groups in a row did not fit."""
        misses = 0
        for group in groups:
            if self.full or misses >= patience:
                return
            misses = 0 if self.place(canvas, group) else misses + 1
