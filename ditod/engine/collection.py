"""Detection over a collection of pages: each page read once, predicted, and its outputs
written as soon as it is done, so that a killed run keeps what it finished.

Under the output folder, per page (named as `ditod.data.pages` names it):

    <name>.json    the page (with the "json" format): where it came from, its size, its
                   OCR source, its blocks in reading order with their text, the OCR lines
                   outside every block
    <name>.md      the page as Markdown (with the "markdown" format)
    <name>.png     the page with the blocks drawn (reading-order index, class, score), its
                   long side at most `draw_size` pixels (0: the page's own size)
    pages/<name>.png, ocr/<name>.json   a rendered PDF page, and OCR made here (text
                   layer or OCR engine; reusable as an OCR folder)

and for the whole collection:

    results.jsonl  one line per finished page (its <name>.json record), appended as each
                   page finishes; a rerun skips the pages it lists
    results.json   COCO detections ("images", "categories", "annotations" with "score"),
                   made from results.jsonl at the end of a run
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..data.files import atomic_write
from ..data.ocr import save_ocr
from ..data.pages import LoadedPage, Page, load_page
from .predictor import PagePrediction, VLPredictor

__all__ = ["FORMATS", "PageOutcome", "PageWriter", "ResultsLog", "draw_blocks", "predict_and_write", "predict_pages"]

logger = logging.getLogger(__name__)

FORMATS = ("json", "markdown")


def draw_blocks(image: np.ndarray, prediction: PagePrediction, class_names, max_size: int = 2000) -> np.ndarray:
    """The page (RGB) with its blocks drawn (reading-order index, class name, score), scaled
    down so that its long side is at most `max_size` pixels (0: its own size)."""
    # Imported here: matplotlib is needed for drawing only, not by `import ditod.engine`.
    from detectron2.utils.colormap import colormap
    from detectron2.utils.visualizer import Visualizer

    height, width = image.shape[:2]
    scale = min(1.0, max_size / max(height, width)) if max_size else 1.0
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    visualizer = Visualizer(image)
    if prediction.blocks:
        palette = colormap(rgb=True, maximum=1)
        detections = [block.detection for block in prediction.blocks]
        visualizer.overlay_instances(
            boxes=np.asarray([d.bbox for d in detections]) * scale,
            labels=[f"{b.index} {b.detection.label} {b.detection.score:.0%}" for b in prediction.blocks],
            assigned_colors=[palette[class_names.index(d.label) % len(palette)] for d in detections],
        )
    return visualizer.get_output().get_image()


class PageWriter:
    """Writes a page's files under `output` (see the module's docstring) and returns its record."""

    def __init__(self, output, class_names, formats=("json",), draw_size: int = 2000):
        unknown = set(formats) - set(FORMATS)
        if unknown:
            raise ValueError(f"unknown output formats {sorted(unknown)}; choose from {FORMATS}")
        self.output = Path(output)
        self.class_names = list(class_names)
        self.formats = tuple(formats)
        self.draw_size = draw_size

    def _save_png(self, path, image):
        with atomic_write(path) as f:
            Image.fromarray(image).save(f, format="PNG")

    def write(self, page: Page, loaded: LoadedPage, prediction: PagePrediction) -> dict:
        out = self.output
        image_file = loaded.file_name
        if image_file is None:  # a rendered PDF page
            image_file = str(out / "pages" / f"{page.name}.png")
            self._save_png(image_file, loaded.image)
        if loaded.ocr_source not in ("ocr json", "none"):  # OCR made here
            save_ocr(out / "ocr" / f"{page.name}.json", loaded.ocr)
        self._save_png(
            out / f"{page.name}.png", draw_blocks(loaded.image, prediction, self.class_names, self.draw_size)
        )
        record = {
            "name": page.name,
            "input": str(page.source),
            "page": None if page.index is None else page.index + 1,
            "image": image_file,
            **prediction.to_dict(),
            "ocr": loaded.ocr_source,
        }
        if "json" in self.formats:
            with atomic_write(out / f"{page.name}.json", "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False)
        if "markdown" in self.formats:
            with atomic_write(out / f"{page.name}.md", "w", encoding="utf-8") as f:
                f.write(prediction.to_markdown())
        return record


class ResultsLog:
    """
    ``results.jsonl`` under `output`: the record of each finished page, one JSON line each,
    appended as the pages finish (`append`), and the COCO ``results.json`` made from it
    (`write_coco`). `finished` holds the names of the pages it lists; a line cut short by a
    killed run is dropped (that page is done again). `fresh` starts a new file.
    """

    def __init__(self, output, fresh: bool = False):
        self.path = Path(output) / "results.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            self.path.unlink(missing_ok=True)
        self.finished = {record["name"] for record in self.records()}

    def records(self):
        """The records of the file, in order (a torn last line is cut off the file first)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            logger.warning(f"{self.path}: its last line was cut short (a killed run); that page is done again")
            with open(self.path, "r+b") as f:
                f.truncate(end)
        for number, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{self.path}: line {number} is not JSON ({e.msg}); remove it to go on") from None

    def append(self, record: dict):
        """Add a finished page's record (opened and closed per page: a killed run loses
        at most the line being written)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.finished.add(record["name"])

    def write_coco(self, class_names, category_ids) -> Path:
        """results.json next to results.jsonl: every page listed there, in its order."""
        images, annotations = [], []
        for record in self.records():
            image_id = len(images) + 1
            images.append(
                {"id": image_id, "file_name": record["image"], "width": record["width"], "height": record["height"]}
            )
            for block in record["blocks"]:
                x0, y0, x1, y1 = block["bbox"]
                box = [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": block["category_id"],
                        "bbox": box,
                        "area": round(box[2] * box[3], 2),
                        "score": block["score"],
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i, "name": name} for i, name in zip(category_ids, class_names)]
        path = self.path.with_name("results.json")
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump({"images": images, "categories": categories, "annotations": annotations}, f, ensure_ascii=False)
        return path


@dataclass
class PageOutcome:
    """A page done (`record`, as written) or failed (`error`), and its seconds per stage."""

    page: Page
    record: dict | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def _error(e):
    return f"{type(e).__name__}: {e}"


def predict_and_write(predictor: VLPredictor, writer: PageWriter, loaded: list[tuple[Page, LoadedPage]]):
    """Predict loaded pages as one batch and write each; yields a `PageOutcome` per page."""
    if not loaded:
        return
    try:
        predictions = predictor([item.image for _, item in loaded], ocr=[item.ocr for _, item in loaded])
    except Exception as e:
        for page, _ in loaded:
            yield PageOutcome(page, error=_error(e))
        return
    for (page, item), prediction in zip(loaded, predictions):
        try:
            record = writer.write(page, item, prediction)
        except Exception as e:
            yield PageOutcome(page, error=_error(e))
            continue
        yield PageOutcome(page, record, seconds={**item.seconds, **prediction.seconds})


def predict_pages(pages, predictor: VLPredictor, writer: PageWriter, dpi: float = 144, batch_size: int = 1):
    """
    Read each page once (`load_page`; OCR on the fly by the predictor's engine for a model
    that reads text), predict `batch_size` pages at a time and write them; yields a
    `PageOutcome` per page as it finishes. The predictor takes RGB arrays.
    """
    if predictor.input_format != "RGB":
        raise ValueError("predict_pages reads pages as RGB: build the predictor with input_format='RGB'")
    ocr = predictor.ocr if predictor.reads_text else None
    for start in range(0, len(pages), batch_size):
        loaded = []
        for page in pages[start : start + batch_size]:
            try:
                loaded.append((page, load_page(page, dpi, ocr, with_text=predictor.reads_text)))
            except Exception as e:
                yield PageOutcome(page, error=_error(e))
        yield from predict_and_write(predictor, writer, loaded)
