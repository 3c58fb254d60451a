"""A column-aware reading order for the OCR lines of a page (recursive XY-cut)."""

import numpy as np

__all__ = ["reading_order"]


def _gap_ends(x0, x1):
    """The x where each vertical gap (covered by no interval) ends, for intervals [x0, x1]."""
    order = np.argsort(x0, kind="stable")
    reach = np.maximum.accumulate(x1[order])[:-1]
    starts = x0[order][1:]
    return np.unique(starts[starts > reach])


def _gutters(x0, x1):
    """
    Gutters among the intervals [x0, x1]: maximal x ranges over which at most half as
    many intervals lie as over the busiest range on either side of them (so a short
    heading centred over two columns does not hide the gap between them), as
    (starts, ends) arrays sorted by x.
    """
    coords, index = np.unique(np.concatenate([x0, x1]), return_inverse=True)
    steps = np.bincount(index, weights=np.repeat([1.0, -1.0], len(x0)), minlength=len(coords))
    # cover[k]: how many intervals lie over [coords[k], coords[k + 1]).
    cover = np.cumsum(steps)[:-1]
    busiest_left = np.maximum.accumulate(cover)
    busiest_right = np.maximum.accumulate(cover[::-1])[::-1]
    low = cover <= 0.5 * np.minimum(busiest_left, busiest_right)
    edges = np.diff(np.concatenate([[0], low.astype(np.int8), [0]]))
    return coords[np.flatnonzero(edges == 1)], coords[np.flatnonzero(edges == -1)]


def _parts(group, labels):
    """`group` split into the runs of equal `labels`, in increasing label order."""
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    return np.split(group[order], np.flatnonzero(labels[1:] != labels[:-1]) + 1)


def _split(boxes, group):
    """Split `group` (indices into boxes) into parts to be read one after the other,
    or None when it reads top to bottom as it is."""
    x0, y0, x1, y1 = boxes[group].T
    # Columns: vertical gaps that no box crosses, read left to right.
    gap_ends = _gap_ends(x0, x1)
    if len(gap_ends):
        return _parts(group, np.searchsorted(gap_ends, x0, side="right"))
    # Lines spanning columns (titles, abstracts, captions over two columns) block the
    # gaps. Gutters are found among the lines narrower than half the group, as column
    # lines are; the lines crossing a gutter cut the group into bands read top to
    # bottom, each with its own columns.
    narrow = (x1 - x0) <= 0.5 * (x1.max() - x0.min())
    starts, ends = _gutters(x0[narrow], x1[narrow])
    if len(starts) == 0:
        return None
    # Gutters are disjoint and sorted: a box crosses one iff it crosses the first that
    # starts right of its x0.
    first = np.searchsorted(starts, x0, side="right")
    crosses = np.zeros(len(group), dtype=bool)
    inside = first < len(starts)
    crosses[inside] = ends[first[inside]] < x1[inside]
    if not crosses.any():
        return None
    by_height = np.argsort((y0 + y1) / 2, kind="stable")
    separator = crosses[by_height]
    # Lines after the k-th separator fall in band 2k; the k-th separator is band 2k - 1.
    return _parts(group[by_height], 2 * np.cumsum(separator) - separator)


def _stacked(boxes, parts):
    """`parts` top to bottom when each lies entirely below another (none side by side), else as they are."""
    order = np.argsort([boxes[part, 1].min() for part in parts], kind="stable")
    tops = [boxes[parts[i], 1].min() for i in order[1:]]
    bottoms = [boxes[parts[i], 3].max() for i in order[:-1]]
    return [parts[i] for i in order] if all(b <= t for b, t in zip(bottoms, tops)) else parts


def reading_order(boxes, stack_disjoint=False):
    """
    Indices of the lines with `boxes` (N, 4: x0, y0, x1, y1) in a column-aware reading
    order: columns (separated by vertical gaps that no line crosses) are read left to
    right, each top to bottom; lines spanning several columns cut the page into bands
    read top to bottom, so a title above two columns comes first and a two-column
    block under it is read column by column. Recursive XY-cut, done iteratively.

    With `stack_disjoint`, parts that a vertical gap separates but that are not side by
    side (each lies entirely below the one before) are read top to bottom: what layout
    regions need, where a short heading at the left margin above a centred block is no
    column.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = []
    pending = [np.arange(len(boxes))]
    while pending:
        group = pending.pop()
        parts = _split(boxes, group) if len(group) > 1 else None
        if parts is not None and stack_disjoint:
            parts = _stacked(boxes, parts)
        if parts is None:
            order.extend(group[np.lexsort((boxes[group, 0], boxes[group, 1]))])
        else:
            pending.extend(reversed(parts))
    return np.asarray(order, dtype=np.int64)
