"""Figures: line, bar and scatter plots, method diagrams, and shapes standing in for pictures."""

import random
from dataclasses import dataclass
from typing import ClassVar

from .fonts import Face

PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def _axes(canvas, rng, box, face, x_ticks, x_label):
    """Axes with y ticks 0..top and the given x tick labels; returns the plot area."""
    x0, y0, x1, y1 = box
    top = rng.choice((1.0, 100, 50, 10))
    y_ticks = [f"{top * i / 4:g}" for i in range(5)]
    gap = max(2, face.line_height // 4)
    px0 = x0 + max(face.width(t) for t in y_ticks) + 2 * gap
    px1, py0 = x1 - gap, y0 + face.line_height / 2 + 1  # room for half of the top tick label
    py1 = y1 - face.line_height * (2 if x_label else 1) - 2 * gap
    draw, ink = canvas.draw, canvas.ink
    grid = rng.random() < 0.5
    for i, tick in enumerate(y_ticks):
        ty = py1 - i * (py1 - py0) / 4
        if grid and i:
            draw.line([(px0, ty), (px1, ty)], fill=(215, 215, 215))
        draw.line([(px0 - gap, ty), (px0, ty)], fill=ink)
        canvas.write(px0 - gap - face.width(tick) - 1, ty - face.line_height / 2, tick, face)
    step = (px1 - px0) / len(x_ticks)
    for i, tick in enumerate(x_ticks):
        if face.width(tick) < step:  # labels wider than their slot would run into each other
            canvas.write(px0 + (i + 0.5) * step - face.width(tick) / 2, py1 + gap, tick, face)
    if x_label and face.width(x_label) < px1 - px0:
        canvas.write((px0 + px1 - face.width(x_label)) / 2, py1 + gap + face.line_height, x_label, face)
    draw.line([(px0, py0), (px0, py1), (px1, py1)], fill=ink, width=1)
    return px0, py0, px1, py1


def _legend(canvas, area, face, names, colors):
    x1, y0 = area[2], area[1]
    swatch = face.line_height
    left = x1 - max(face.width(n) for n in names) - swatch - 8
    if left < area[0] or len(names) * face.line_height > area[3] - y0:
        return  # no room for a legend in so small a plot
    for i, (name, color) in enumerate(zip(names, colors)):
        ty = y0 + 4 + i * face.line_height
        canvas.draw.line([(left, ty + swatch / 2), (left + swatch - 3, ty + swatch / 2)], fill=color, width=2)
        canvas.write(left + swatch, ty, name, face)


def _line_plot(canvas, rng, box, face, writer):
    ticks = [str(v) for v in range(0, rng.randint(4, 7) * 10, 10)]
    area = _axes(canvas, rng, box, face, ticks, writer.axis_label())
    x0, y0, x1, y1 = area
    series = rng.randint(1, 3)
    colors = rng.sample(PALETTE, series)
    for color in colors:
        n, level = rng.randint(6, 20), rng.uniform(0.1, 0.5)
        values = []
        for _ in range(n):
            level = min(0.95, max(0.05, level + rng.uniform(-0.08, 0.15)))
            values.append(level)
        points = [(x0 + (x1 - x0) * i / (n - 1), y1 - (y1 - y0) * v) for i, v in enumerate(values)]
        canvas.draw.line(points, fill=color, width=2)
    if series > 1:
        _legend(canvas, area, face, writer.series_names(series), colors)


def _bar_chart(canvas, rng, box, face, writer):
    groups, per_group = rng.randint(3, 6), rng.randint(1, 3)
    names = writer.box_labels(groups) if rng.random() < 0.5 else [str(2016 + i) for i in range(groups)]
    area = _axes(canvas, rng, box, face, names, writer.axis_label() if rng.random() < 0.5 else None)
    x0, y0, x1, y1 = area
    colors = rng.sample(PALETTE, per_group)
    slot = (x1 - x0) / groups
    bar = slot * 0.7 / per_group
    for g in range(groups):
        for b, color in enumerate(colors):
            left = x0 + g * slot + slot * 0.15 + b * bar
            canvas.draw.rectangle([left, y1 - (y1 - y0) * rng.uniform(0.1, 0.9), left + bar - 1, y1], fill=color)


def _scatter_plot(canvas, rng, box, face, writer):
    ticks = [f"{v / 10:g}" for v in range(rng.randint(4, 7))]
    x0, y0, x1, y1 = _axes(canvas, rng, box, face, ticks, writer.axis_label())
    radius = max(2, face.line_height // 6)
    for color in rng.sample(PALETTE, rng.randint(1, 3)):
        cx, cy, spread = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.08, 0.2)
        for _ in range(rng.randint(15, 50)):
            px = x0 + radius + (x1 - x0 - 2 * radius) * min(1.0, max(0.0, rng.gauss(cx, spread)))
            py = y1 - radius - (y1 - y0 - 2 * radius) * min(1.0, max(0.0, rng.gauss(cy, spread)))
            canvas.draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=color)


def _diagram(canvas, rng, box, face, writer):
    """Labelled boxes joined by arrows, like a method overview."""
    x0, y0, x1, y1 = box
    count = rng.randint(3, 5)
    arrow = max(10, (x1 - x0) // 20)
    box_width = (x1 - x0 - (count - 1) * arrow) / count
    top, box_height = y0, y1 - y0 - 1
    fill = rng.choice(((230, 240, 250), (250, 235, 215), (235, 245, 230), (255, 255, 255)))
    draw, ink = canvas.draw, canvas.ink
    for i, label in enumerate(writer.box_labels(count)):
        left = x0 + i * (box_width + arrow)
        draw.rectangle([left, top, left + box_width, top + box_height], fill=fill, outline=ink, width=1)
        if face.width(label) < box_width - 4:
            label_x = left + (box_width - face.width(label)) / 2
            canvas.write(label_x, top + (box_height - face.line_height) / 2, label, face)
        if i < count - 1:
            mid, tip = top + box_height / 2, left + box_width + arrow - 1
            draw.line([(left + box_width + 1, mid), (tip - 4, mid)], fill=ink, width=1)
            draw.polygon([(tip, mid), (tip - 5, mid - 3), (tip - 5, mid + 3)], fill=ink)


def _picture(canvas, rng, box, face, writer):
    """Flat shapes on a colored background, standing in for a photograph or illustration."""
    x0, y0, x1, y1 = box
    draw = canvas.draw
    draw.rectangle(box, fill=tuple(rng.randint(150, 240) for _ in range(3)))
    for _ in range(rng.randint(4, 12)):
        color = tuple(rng.randint(20, 230) for _ in range(3))
        ax, bx = sorted(rng.uniform(x0, x1) for _ in range(2))
        ay, by = sorted(rng.uniform(y0, y1) for _ in range(2))
        shape = rng.randrange(3)
        if shape == 0:
            draw.ellipse([ax, ay, bx, by], fill=color)
        elif shape == 1:
            draw.rectangle([ax, ay, bx, by], fill=color)
        else:
            draw.polygon([(ax, by), ((ax + bx) / 2, ay), (bx, by)], fill=color)


FIGURE_KINDS = (_line_plot, _bar_chart, _scatter_plot, _diagram, _picture)


@dataclass
class FigureBlock:
    """A figure centered in its column. It carries its own seed so that drawing it consumes
    nothing from the page's generator."""

    kind: object  # one of FIGURE_KINDS
    width: int
    height: int
    seed: int
    writer: object
    label_face: Face
    gap: int
    category: ClassVar[str] = "Figure"
    splittable: ClassVar[bool] = False

    def draw(self, canvas, x, y, width):
        left = round(x + (width - self.width) / 2)
        box = (left, y, left + self.width, y + self.height)
        self.kind(canvas, random.Random(self.seed), box, self.label_face, self.writer)
        canvas.add_block(self.category, box)


def build_figure(rng, writer, width, label_face, gap):
    """A figure of a random kind, at most `width` wide."""
    kind = rng.choice(FIGURE_KINDS)
    figure_width = round(width * rng.uniform(0.6, 1.0))
    if kind is _diagram:  # a single row of boxes
        figure_height = max(3 * label_face.line_height, round(figure_width * rng.uniform(0.12, 0.25)))
    else:
        figure_height = round(figure_width * rng.uniform(0.45, 0.75))
    return FigureBlock(kind, figure_width, figure_height, rng.getrandbits(32), writer, label_face, gap)
