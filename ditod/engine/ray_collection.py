"""Detection over a collection on a Ray cluster (``pip install ditod[ray]``), with Ray Data.

Two stages, streamed: `PageLoader` actors (one CPU each) read or render each page with
its OCR (OCR json, PDF text layer, or OCR on the fly), and `PagePredictor` actors (one
GPU each, one per GPU of the cluster; without GPUs, half of the CPUs) run the
`VLPredictor` on batches of pages and write each page's files. The driver gets each
page's record as it finishes; the outputs are those of `ditod.engine.collection`. The
pages, their OCR jsons and the output folder must be where every node can read and write
them (a shared file system).
"""

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ..data.ocr import PageOCR
from ..data.pages import LoadedPage, OnTheFlyOCR, Page, load_page
from .collection import PageOutcome, PageWriter, predict_and_write
from .predictor import VLPredictor

__all__ = ["PageLoader", "PagePredictor", "predict_pages_on_ray", "ray_instance"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_instance(num_cpus: int | None = None):
    """Ray for the duration of the block: the cluster of RAY_ADDRESS (what ``ray job submit``
    sets), else a local instance with `num_cpus` CPUs (default: all), shut down at the end."""
    import ray
    from ray.data import DataContext

    local = not os.environ.get("RAY_ADDRESS")
    ray.init(num_cpus=num_cpus if local else None, include_dashboard=False, logging_level=logging.WARNING)
    DataContext.get_current().enable_progress_bars = False  # the tool shows its own
    try:
        yield
    finally:
        ray.shutdown()


def _page_to_json(page: Page) -> str:
    return json.dumps(
        {
            "name": page.name,
            "source": str(page.source),
            "index": page.index,
            "ocr_file": None if page.ocr_file is None else str(page.ocr_file),
        }
    )


def _page_from_json(text: str) -> Page:
    data = json.loads(text)
    ocr_file = data["ocr_file"]
    return Page(data["name"], Path(data["source"]), data["index"], None if ocr_file is None else Path(ocr_file))


def _ocr_to_json(ocr: PageOCR | None) -> str:
    """The OCR exactly (no rounding: the predictor must see what the single-process path sees)."""
    if ocr is None:
        return ""
    scores = None if ocr.scores is None else ocr.scores.tolist()
    return json.dumps(
        {"W": ocr.width, "H": ocr.height, "words": ocr.words, "bbox": ocr.boxes.tolist(), "scores": scores}
    )


def _ocr_from_json(text: str) -> PageOCR | None:
    if not text:
        return None
    data = json.loads(text)
    return PageOCR(data["W"], data["H"], data["words"], np.asarray(data["bbox"]).reshape(-1, 4), data["scores"])


class PageLoader:
    """Ray Data callable class: reads each page of a batch (see `load_page`)."""

    def __init__(self, dpi: float, ocr_engine: str, with_text: bool):
        self.dpi, self.with_text = dpi, with_text
        self.ocr = OnTheFlyOCR(ocr_engine) if with_text else None

    def __call__(self, batch: dict) -> dict:
        rows = {key: [] for key in ("page", "image", "ocr", "ocr_source", "file_name", "seconds", "error")}
        for text in batch["page"]:
            try:
                loaded = load_page(_page_from_json(text), self.dpi, self.ocr, self.with_text)
                error = ""
            except Exception as e:
                loaded, error = LoadedPage(np.zeros((1, 1, 3), np.uint8), None, "", None), f"{type(e).__name__}: {e}"
            rows["page"].append(text)
            rows["image"].append(loaded.image)
            rows["ocr"].append(_ocr_to_json(loaded.ocr))
            rows["ocr_source"].append(loaded.ocr_source)
            rows["file_name"].append(loaded.file_name or "")
            rows["seconds"].append(json.dumps(loaded.seconds))
            rows["error"].append(error)
        return rows


class PagePredictor:
    """Ray Data callable class: a `VLPredictor` on batches of loaded pages, writing each
    page's files with `writer`; returns each page's record (JSON) or error."""

    def __init__(self, cfg, device: str, writer: PageWriter, category_ids, dpi: float):
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = device
        self.predictor = VLPredictor(cfg, input_format="RGB", classes=writer.class_names, dpi=dpi)
        # The driver's ids, so that every actor and results.json agree.
        self.predictor.category_ids = list(category_ids)
        self.writer = writer

    def __call__(self, batch: dict) -> dict:
        outcomes, loaded = [], []
        for i, text in enumerate(batch["page"]):
            page = _page_from_json(text)
            if batch["error"][i]:
                outcomes.append(PageOutcome(page, error=str(batch["error"][i])))
                continue
            item = LoadedPage(
                np.asarray(batch["image"][i], dtype=np.uint8),
                _ocr_from_json(str(batch["ocr"][i])),
                str(batch["ocr_source"][i]),
                str(batch["file_name"][i]) or None,
                json.loads(str(batch["seconds"][i])),
            )
            loaded.append((page, item))
        outcomes.extend(predict_and_write(self.predictor, self.writer, loaded))
        return {
            "page": [_page_to_json(o.page) for o in outcomes],
            "record": [json.dumps(o.record, ensure_ascii=False) if o.record else "" for o in outcomes],
            "error": [o.error or "" for o in outcomes],
            "seconds": [json.dumps(o.seconds) for o in outcomes],
        }


def predict_pages_on_ray(
    pages, cfg, writer: PageWriter, category_ids, *, dpi: float = 144, ocr_engine: str = "rapidocr", batch_size: int = 1
):
    """
    `predict_pages` on the Ray instance of `ray_instance`, with the model of `cfg` and its
    MODEL.WEIGHTS: yields a `PageOutcome` per page as the pages finish (in no set order).
    The predictors run on the cluster's GPUs when it has some, else on its CPUs.

    Args:
        writer: writes each page's files; its class names are the model's.
        category_ids: the COCO id of each class (`model_classes`).
    """
    import ray
    from ray.data import ActorPoolStrategy

    if not pages:
        return
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    predictors = gpus or max(1, cpus // 2)
    loaders = max(1, cpus - (0 if gpus else predictors))
    logger.info(f"Ray: {cpus} CPUs, {gpus} GPUs: {loaders} page loader(s), {predictors} predictor(s)")
    dataset = ray.data.from_items([{"page": _page_to_json(page)} for page in pages])
    dataset = dataset.map_batches(
        PageLoader,
        fn_constructor_kwargs={"dpi": dpi, "ocr_engine": ocr_engine, "with_text": not cfg.MODEL.IMAGE_ONLY},
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=loaders),
        num_cpus=1,
    )
    dataset = dataset.map_batches(
        PagePredictor,
        fn_constructor_kwargs={
            "cfg": cfg,
            "device": "cuda" if gpus else "cpu",
            "writer": writer,
            "category_ids": list(category_ids),
            "dpi": dpi,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=predictors),
        **({"num_gpus": 1} if gpus else {"num_cpus": 1}),
    )
    for row in dataset.iter_rows():
        record = json.loads(row["record"]) if row["record"] else None
        yield PageOutcome(_page_from_json(row["page"]), record, row["error"] or None, json.loads(row["seconds"]))
