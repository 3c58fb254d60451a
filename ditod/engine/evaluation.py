"""
COCO evaluation (boxes, and masks for a model with masks) on what the loader reads.

* Annotations: `load_vl_coco_json` clips a bbox that reaches outside its image and leaves
  out one that is unreadable or outside its image, but detectron2's `COCOEvaluator` reads
  the raw json, where such boxes crash pycocotools or change the AP. `VLCOCOEvaluator`'s
  ground truth goes through the same rule (`ditod.data.datasets.fit_annotation`).
* Pages whose image cannot be read: the test loader turns them into markers
  (`map_or_mark_unreadable`), `SkipUnreadablePages` keeps them away from the model and
  `VLCOCOEvaluator` leaves them out of the evaluation, so that one corrupt page neither
  stops an evaluation nor counts its objects as missed.
"""

import contextlib
import io
import itertools
import json
import logging
import math

from torch import nn

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from ..data.datasets import UsableAnnotations
from ..data.mapper import UnreadableImageError

__all__ = ["UNREADABLE", "SkipUnreadablePages", "VLCOCOEvaluator", "map_or_mark_unreadable", "write_metrics"]

logger = logging.getLogger(__name__)

# The key of a marker, the test loader's output for a page whose image cannot be read.
UNREADABLE = "unreadable"
# How many left-out pages a warning names.
_NAMED_PAGES = 5


def map_or_mark_unreadable(record, mapper):
    """
    `mapper(record)`, or, when the page's image cannot be read, a marker: "image_id",
    "file_name" and UNREADABLE (the reason), no "image". A marker rather than None,
    which detectron2's `MapDataset` would replace with another page.
    """
    try:
        return mapper(record)
    except UnreadableImageError as e:
        return {"image_id": record["image_id"], "file_name": record["file_name"], UNREADABLE: str(e)}


class SkipUnreadablePages(nn.Module):
    """`model` called on the readable inputs of a batch only; a marker's output is {}."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        # inference_on_dataset puts back the mode it found: the model's own.
        self.training = model.training

    def forward(self, inputs):
        readable = [x for x in inputs if UNREADABLE not in x]
        outputs = iter(self.model(readable) if readable else [])
        return [{} if UNREADABLE in x else next(outputs) for x in inputs]


class VLCOCOEvaluator(COCOEvaluator):
    """
    `COCOEvaluator` whose ground truth is the annotations as training reads them (bboxes
    clipped to their image, those `load_vl_coco_json` leaves out left out: see
    `ditod.data.datasets.fit_annotation`), and which leaves the pages the test loader could
    not read (markers, see `map_or_mark_unreadable`) out of the evaluation; both with a
    warning. An annotation without "area" or "iscrowd" (which pycocotools needs and
    training does not) gets its bbox's area and 0, counted in a warning.
    """

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        if not self._do_evaluation:
            return
        usable, completed, kept = UsableAnnotations(), 0, []
        images = self._coco_api.imgs
        for annotation in self._coco_api.dataset["annotations"]:
            image = images.get(annotation["image_id"])
            if image is None:  # on no page: the evaluation never looks at it
                kept.append(annotation)
                continue
            for fitted in usable([annotation], image["width"], image["height"], image["file_name"]):
                if "area" not in fitted or "iscrowd" not in fitted:
                    completed += 1
                    fitted = {"area": fitted["bbox"][2] * fitted["bbox"][3], "iscrowd": 0, **fitted}
                kept.append(fitted)
        json_file = self._metadata.json_file
        if usable.counts:
            logger.warning(
                f"{json_file}: {usable.summary()} (the ground truth of {dataset_name}, as training reads it)"
            )
        if completed:
            logger.warning(
                f'{json_file}: {completed} annotation(s) without "area" or "iscrowd" evaluated with the area of '
                "their bbox and iscrowd 0"
            )
        if usable.counts or completed:
            self._coco_api.dataset["annotations"] = kept
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
                self._coco_api.createIndex()

    def reset(self):
        super().reset()
        self._unreadable = []

    def process(self, inputs, outputs):
        readable = [(x, y) for x, y in zip(inputs, outputs) if UNREADABLE not in x]
        self._unreadable += [(x["image_id"], x[UNREADABLE]) for x in inputs if UNREADABLE in x]
        super().process([x for x, _ in readable], [y for _, y in readable])

    def evaluate(self, img_ids=None):
        """`COCOEvaluator.evaluate` on `img_ids` (default: all pages of the json) without
        the pages that came as markers in any process."""
        unreadable = self._unreadable
        if self._distributed:
            # Every process gathers, as for the predictions in COCOEvaluator.evaluate;
            # the others get [] and return {} there.
            unreadable = list(itertools.chain(*comm.gather(unreadable, dst=0)))
        if unreadable:
            reasons = "; ".join(reason for _, reason in unreadable[:_NAMED_PAGES])
            more = f"; and {len(unreadable) - _NAMED_PAGES} more" if len(unreadable) > _NAMED_PAGES else ""
            logger.warning(
                f"{self._metadata.name}: {len(unreadable)} page(s) left out of the evaluation, "
                f"their image cannot be read: {reasons}{more}"
            )
            left_out = {image_id for image_id, _ in unreadable}
            img_ids = self._coco_api.getImgIds() if img_ids is None else img_ids
            img_ids = [i for i in img_ids if i not in left_out]
        return super().evaluate(img_ids=img_ids)


def _json_number(value):
    return None if value is None or not math.isfinite(value) else float(value)


def write_metrics(path, dataset_name, results):
    """
    `metrics.json` of one dataset: COCO bbox AP, AP50, AP75, APs/m/l and per-class AP at
    the top level, and the same keys for every other task evaluated under the task's name
    ("segm": mask AP); null where COCO cannot compute one (e.g. a class without instances).
    """
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", [])

    def task_metrics(values):
        return {
            **{key: _json_number(values.get(key)) for key in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
            "per_class_AP": {name: _json_number(values.get(f"AP-{name}")) for name in classes},
        }

    metrics = {"dataset": dataset_name, **task_metrics(results.get("bbox", {}))}
    metrics.update({task: task_metrics(values) for task, values in results.items() if task != "bbox"})
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    logger.info(f"Wrote {path}")
