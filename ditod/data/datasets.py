"""COCO-format layout datasets whose pages carry OCR jsons, and the built-in ones.

Importing this module registers the built-in datasets under $DETECTRON2_DATASETS
(default ./datasets); registration only records how to load them, nothing is read
until a dataset is used. See datasets/README.md for the expected layout.
"""

import logging
import math
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "check_datasets",
    "check_ocr_files",
    "load_vl_coco_json",
    "readable_bbox",
    "register_vl_coco",
    "register_from_config",
    "register_all_builtin",
    "register_publaynet_folders",
]

logger = logging.getLogger(__name__)

PUBLAYNET_CLASSES = ["text", "title", "list", "table", "figure"]
CDLA_CLASSES = [
    "Text",
    "Title",
    "Figure",
    "Figure caption",
    "Table",
    "Table caption",
    "Header",
    "Footer",
    "Reference",
    "Equation",
]
DOCLAYNET_CLASSES = [
    "Caption",
    "Footnote",
    "Formula",
    "List-item",
    "Page-footer",
    "Page-header",
    "Picture",
    "Section-header",
    "Table",
    "Text",
    "Title",
]

# name: (json file, image root, OCR root, class names in category-id order), relative
# to the datasets root. The class names are known before the json is read (for
# drawing predictions); `load_coco_json` checks them against the json.
BUILTIN_DATASETS = {
    "publaynet_train": ("publaynet/train.json", "publaynet/train", "publaynet/ocr/train", PUBLAYNET_CLASSES),
    "publaynet_val": ("publaynet/val.json", "publaynet/val", "publaynet/ocr/val", PUBLAYNET_CLASSES),
    "cdla_train": ("cdla/train.json", "cdla/train/images", "cdla/train/ocr", CDLA_CLASSES),
    "cdla_val": ("cdla/val.json", "cdla/val/images", "cdla/val/ocr", CDLA_CLASSES),
    "doclaynet_train": ("doclaynet/COCO/train.json", "doclaynet/PNG", "doclaynet/ocr", DOCLAYNET_CLASSES),
    "doclaynet_val": ("doclaynet/COCO/val.json", "doclaynet/PNG", "doclaynet/ocr", DOCLAYNET_CLASSES),
    "doclaynet_test": ("doclaynet/COCO/test.json", "doclaynet/PNG", "doclaynet/ocr", DOCLAYNET_CLASSES),
    # tools/make_synthetic.py chooses its classes; they come from the json.
    "synthetic_train": ("synthetic/train.json", "synthetic/train/images", "synthetic/train/ocr", None),
    "synthetic_val": ("synthetic/val.json", "synthetic/val/images", "synthetic/val/ocr", None),
}


def default_ocr_root(image_root):
    """Where the OCR jsons of `image_root` are by default: `<image_root>/../ocr`."""
    return os.path.join(os.path.dirname(os.path.normpath(image_root)), "ocr")


def readable_bbox(bbox):
    """Whether a COCO annotation's bbox is usable: 4 finite numbers, width and height > 0."""
    return (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        and bbox[2] > 0
        and bbox[3] > 0
    )


def load_vl_coco_json(json_file, image_root, ocr_root, dataset_name=None):
    """
    `load_coco_json` records, each with "ocr_file": `ocr_root/<image path relative to
    image_root without extension>.json`. Annotations whose bbox is unreadable (not 4
    finite numbers, width or height <= 0) are dropped, with a warning that counts them.
    """
    records = load_coco_json(json_file, image_root, dataset_name)
    dropped, first = 0, None
    for record in records:
        relative = os.path.relpath(record["file_name"], image_root)
        record["ocr_file"] = os.path.join(ocr_root, os.path.splitext(relative)[0] + ".json")
        annotations = [a for a in record["annotations"] if readable_bbox(a.get("bbox"))]
        if len(annotations) < len(record["annotations"]):
            dropped += len(record["annotations"]) - len(annotations)
            first = first or record["file_name"]
            record["annotations"] = annotations
    if dropped:
        logger.warning(
            f"{json_file}: dropped {dropped} annotation(s) with an unreadable bbox "
            f"(NaN, or width/height <= 0), the first in {first}"
        )
    return records


def check_ocr_files(records, dataset_names):
    """
    Raise FileNotFoundError, counting them and naming the first, when pages of `records`
    have no OCR json at their "ocr_file": a model that reads text would otherwise stop
    only when training first meets one of them, which can be hours in.
    """
    missing = [r["ocr_file"] for r in records if "ocr_file" in r and not os.path.isfile(r["ocr_file"])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(records)} pages of {', '.join(dataset_names)} have no OCR json, "
            f"the first: {missing[0]}. Make them with tools/ocr.py, or train those pages without text: "
            "INPUT.OCR.MISSING empty"
        )


def check_datasets(cfg, splits=("TRAIN", "TEST")):
    """
    Raise a clear error, before anything is built, when DATASETS.TRAIN or DATASETS.TEST
    (those of `splits`) names a dataset that is not registered, one whose COCO json is
    not there, or, for a model that reads text with INPUT.OCR.MISSING "error", one whose
    OCR folder is not there.
    """
    registered = set(DatasetCatalog.list())
    needs_ocr = not cfg.MODEL.IMAGE_ONLY and cfg.INPUT.OCR.MISSING == "error"
    problems, unknown = [], False
    for key in splits:
        for name in cfg.DATASETS[key]:
            if name not in registered:
                problems.append(f"DATASETS.{key} names {name!r}, which is not registered")
                unknown = True
                continue
            metadata = MetadataCatalog.get(name)
            json_file, ocr_root = metadata.get("json_file"), metadata.get("ocr_root")
            if json_file and not os.path.isfile(json_file):
                problems.append(f"dataset {name!r} (DATASETS.{key}): its json {json_file} does not exist")
            if needs_ocr and ocr_root and not os.path.isdir(ocr_root):
                problems.append(
                    f"dataset {name!r} (DATASETS.{key}): its OCR folder {ocr_root} does not exist (make it with "
                    f"tools/ocr.py --images {metadata.get('image_root')} --out {ocr_root}, or train without "
                    "OCR on the pages that lack it: INPUT.OCR.MISSING empty)"
                )
    if not problems:
        return
    message = "; ".join(problems)
    if unknown:
        # detectron2's own built-ins (COCO, LVIS, Cityscapes, ...) would bury the relevant names.
        builtin = {name for name in registered if DatasetCatalog[name].__module__.startswith("detectron2.")}
        message += (
            f". Registered datasets: {', '.join(sorted(registered - builtin)) or '(none)'} "
            f"(plus {len(builtin)} detectron2 built-ins such as coco_2017_val). Register a COCO dataset "
            "with --dataset NAME=JSON:IMAGE_ROOT[:OCR_ROOT] or DATASETS.REGISTER; the built-in ones "
            "read $DETECTRON2_DATASETS (default ./datasets), see datasets/README.md."
        )
    raise KeyError(message)


def register_vl_coco(name, json_file, image_root, ocr_root=None, thing_classes=None):
    """
    Register a COCO instances dataset whose pages have OCR jsons, for detectron2's
    `DatasetCatalog` and `COCOEvaluator`.

    Args:
        ocr_root: folder of the OCR jsons, laid out like the images under image_root;
            None or "" for `<image_root>/../ocr`.
        thing_classes: class names in category-id order when known in advance
            (otherwise they are read from the json when the dataset is loaded).

    Registering a name again with the same files does nothing; with other files it
    is an error.
    """
    ocr_root = ocr_root or default_ocr_root(image_root)
    files = {"json_file": json_file, "image_root": image_root, "ocr_root": ocr_root}
    if name in DatasetCatalog:
        metadata = MetadataCatalog.get(name)
        registered = {key: metadata.get(key) for key in files}
        if registered == files:
            return
        raise ValueError(f"Dataset {name!r} is already registered with {registered}, not {files}")
    DatasetCatalog.register(name, lambda: load_vl_coco_json(json_file, image_root, ocr_root, name))
    MetadataCatalog.get(name).set(evaluator_type="coco", **files)
    if thing_classes is not None:
        MetadataCatalog.get(name).set(thing_classes=list(thing_classes))


def register_publaynet_folders(cfg):
    """
    Register publaynet_train / publaynet_val from PUBLAYNET_DATA_DIR_TRAIN / _TEST (the keys
    of unilm's configs), when set: DIR.json, the images in DIR and the OCR jsons in
    DIR/../ocr/<name of DIR>, the layout of the built-in PubLayNet. The built-in
    registration of that name is replaced.
    """
    for name, folder in (
        ("publaynet_train", cfg.PUBLAYNET_DATA_DIR_TRAIN),
        ("publaynet_val", cfg.PUBLAYNET_DATA_DIR_TEST),
    ):
        if not folder:
            continue
        folder = os.path.normpath(folder)
        files = {
            "json_file": folder + ".json",
            "image_root": folder,
            "ocr_root": os.path.join(os.path.dirname(folder), "ocr", os.path.basename(folder)),
        }
        if name in DatasetCatalog and {key: MetadataCatalog.get(name).get(key) for key in files} != files:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_vl_coco(name, thing_classes=PUBLAYNET_CLASSES, **files)


def register_from_config(cfg):
    """Register PubLayNet from PUBLAYNET_DATA_DIR_TRAIN / _TEST (`register_publaynet_folders`)
    and the datasets of DATASETS.REGISTER: [[name, json, image_root, ocr_root], ...]
    (ocr_root optional or "")."""
    register_publaynet_folders(cfg)
    for index, entry in enumerate(cfg.DATASETS.REGISTER):
        valid = isinstance(entry, (list, tuple)) and len(entry) in (3, 4)
        if not valid or not all(isinstance(v, str) for v in entry):
            raise ValueError(
                f"DATASETS.REGISTER[{index}] must be [name, json_file, image_root, ocr_root] "
                f'(strings; ocr_root may be "" or left out), got {entry!r}'
            )
        register_vl_coco(*entry)


def register_all_builtin(root=None):
    """Register the built-in datasets under `root` (default $DETECTRON2_DATASETS or ./datasets)."""
    root = root or os.getenv("DETECTRON2_DATASETS", "datasets")
    for name, (json_file, image_root, ocr_root, classes) in BUILTIN_DATASETS.items():
        register_vl_coco(
            name,
            os.path.join(root, json_file),
            os.path.join(root, image_root),
            os.path.join(root, ocr_root),
            thing_classes=classes,
        )


register_all_builtin()
