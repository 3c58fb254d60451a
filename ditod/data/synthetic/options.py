"""The layout classes a page is annotated with, and the options of the generated pages."""

from dataclasses import dataclass

from ..datasets import CDLA_CLASSES

# The generator annotates its pages with CDLA's classes.
CATEGORIES = tuple(CDLA_CLASSES)
CATEGORY_IDS = {name: index + 1 for index, name in enumerate(CATEGORIES)}
LANGUAGES = ("en", "zh", "mixed")


@dataclass(frozen=True)
class SyntheticOptions:
    """How pages look and how noisy their OCR is.

    lang: "mixed" makes each page English or Chinese at random. hard_text: see the package docstring.
    ocr_drop: probability that an OCR line is missing; ocr_swap: probability that a character
    is misread; ocr_jitter: standard deviation of box edge noise, as a fraction of line height.
    """

    height: int = 1000
    lang: str = "en"
    hard_text: bool = False
    ocr_drop: float = 0.0
    ocr_swap: float = 0.0
    ocr_jitter: float = 0.0

    def __post_init__(self):
        if self.height < 400:
            raise ValueError(f"page height must be at least 400 px for legible text, got {self.height}")
        if self.lang not in LANGUAGES:
            raise ValueError(f"lang must be one of {LANGUAGES}, got {self.lang!r}")
        for name in ("ocr_drop", "ocr_swap"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        if self.ocr_jitter < 0:
            raise ValueError(f"ocr_jitter must be >= 0, got {self.ocr_jitter}")
