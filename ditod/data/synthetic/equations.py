"""Numbered display equations made of random formula terms."""

import re
from dataclasses import dataclass
from typing import ClassVar

from .canvas import union
from .fonts import Face
from .writer import words

# Characters of the formulas. DejaVu has all of them; the CJK fonts lack the subscripts.
SYMBOLS = words("x y z w h u v α β γ λ μ σ φ ψ ω θ")
FUNCTIONS = words("f g h F L E p q")
TERMS = (
    "Σᵢ {s}ᵢ {s}ᵢ",
    "∫₀¹ {f}({s}) d{s}",
    "‖W{s} − b‖²",
    "exp(−{s}{s})",
    "{s}{s}²",
    "log p({s}|{s})",
    "∂{f}/∂{s}",
    "√({s}² + {s}²)",
    "Wᵀ{s}",
    "max(0, {s})",
    "(1 − {s}){s}ₜ",
    "{s}/({s} + ε)",
    "Πⱼ {s}ⱼ",
    "{f}({s}) ⊙ {s}",
    "mc²",
    "λ‖θ‖²",
    "{s}ₖ · {s}ₖ",
    "E[{s}²]",
)


@dataclass
class EquationBlock:
    """Centered formula lines with the equation number at the right edge of the column."""

    lines: list
    number: int
    face: Face
    leading: int
    gap: int
    category: ClassVar[str] = "Equation"
    splittable: ClassVar[bool] = False

    @property
    def height(self):
        return (len(self.lines) - 1) * self.leading + self.face.line_height

    def draw(self, canvas, x, y, width):
        boxes = [
            canvas.write(x + (width - self.face.width(line)) / 2, y + i * self.leading, line, self.face)
            for i, line in enumerate(self.lines)
        ]
        label = f"({self.number})"
        boxes.append(
            canvas.write(x + width - self.face.width(label), y + self.height - self.face.line_height, label, self.face)
        )
        canvas.add_block(self.category, union(boxes))


def _formula_lines(rng, face, width):
    """One or two formula lines that fit in `width`."""

    def fill(template):
        return re.sub(r"\{(\w)\}", lambda m: rng.choice(SYMBOLS if m.group(1) == "s" else FUNCTIONS), template)

    lhs = fill(rng.choice(("{f}({s})", "{s}ₜ", "L", "{f}", "p({s}|{s})", "{s}*", "∇{f}")))
    lines = []
    for prefix in [f"{lhs} = "] if rng.random() < 0.75 else [f"{lhs} = ", "    + "]:
        line = prefix + fill(rng.choice(TERMS))
        for _ in range(rng.randint(1, 3)):
            longer = f"{line} {rng.choice(('+', '−', '·'))} {fill(rng.choice(TERMS))}"
            if face.width(longer) > width:
                break
            line = longer
        lines.append(line)
    return lines


def build_equation(rng, face, width, number, gap):
    # Centered formulas stay clear of the equation number at the right edge.
    lines = _formula_lines(rng, face, width - 2.5 * face.width("(88)"))
    return EquationBlock(lines, number, face, round(face.line_height * 1.3), gap)
