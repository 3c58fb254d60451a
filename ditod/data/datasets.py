"""COCO-format layout datasets whose pages carry OCR jsons, and the built-in ones.

Importing this module registers the built-in datasets under $DETECTRON2_DATASETS
(default ./datasets); registration only records how to load them, nothing is read
until a dataset is used. See datasets/README.md for the expected layout.
"""

import json
import logging
import math
import os
import time
from collections import Counter

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "COCOFormatError",
    "UsableAnnotations",
    "check_datasets",
    "check_image_files",
    "check_ocr_files",
    "fit_annotation",
    "image_file_problem",
    "load_vl_coco_json",
    "read_coco_json",
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


def fit_annotation(annotation, width, height):
    """
    The one rule by which training (`load_vl_coco_json`) and the evaluation's ground truth
    (`ditod.engine.VLCOCOEvaluator`) read a COCO annotation of a width x height image.

    Returns:
        (bbox, problem): the [x, y, w, h] to use, clipped to the image, or None when the
        annotation is left out; problem is None, "clipped", or why it is left out:
        "unreadable" (not 4 finite numbers, width or height <= 0), "outside" (no part of
        it inside the image) or "segmentation" (polygons of fewer than 3 points only,
        which detectron2's loader leaves out).
    """
    bbox = annotation.get("bbox")
    if not readable_bbox(bbox):
        return None, "unreadable"
    polygons = annotation.get("segmentation")
    if polygons and isinstance(polygons, list) and not any(len(p) % 2 == 0 and len(p) >= 6 for p in polygons):
        return None, "segmentation"
    x, y, w, h = bbox
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height:
        return list(bbox), None
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return None, "outside"
    return [x0, y0, x1 - x0, y1 - y0], "clipped"


class UsableAnnotations:
    """
    `fit_annotation` applied to the annotations of pages, counting what it clips and
    leaves out (and the first page of each) for one warning.
    """

    _WHAT = {
        "unreadable": "dropped {} annotation(s) with an unreadable bbox (not 4 finite numbers, or width/height <= 0)",
        "segmentation": "dropped {} annotation(s) whose segmentation has no polygon of 3 points or more",
        "outside": "dropped {} annotation(s) whose bbox lies outside its image",
        "clipped": "clipped {} annotation(s) whose bbox reaches outside its image to the image",
    }

    def __init__(self):
        self.counts = Counter()
        self.first = {}

    def __call__(self, annotations, width, height, page):
        """The usable ones of `annotations` (of the page `page`, width x height); a clipped
        one is a copy with its new bbox."""
        kept = []
        for annotation in annotations:
            bbox, problem = fit_annotation(annotation, width, height)
            if problem is not None:
                self.counts[problem] += 1
                self.first.setdefault(problem, page)
            if bbox is not None:
                kept.append(annotation if problem is None else {**annotation, "bbox": bbox})
        return kept

    def summary(self):
        """One line of what was clipped and left out, or None."""
        parts = [
            f"{what.format(self.counts[problem])}, the first on {self.first[problem]}"
            for problem, what in self._WHAT.items()
            if self.counts[problem]
        ]
        return "; ".join(parts) or None


class COCOFormatError(ValueError):
    """A COCO json that cannot be used; the message names the file and the field."""

    def __init__(self, path, field, problem):
        self.path, self.field, self.problem = path, field, problem
        super().__init__(f"{path}: {field}: {problem}" if field else f"{path}: {problem}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value):
    return _is_int(value) or isinstance(value, str)


def _is_size(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _objects(data, key, json_file, required=True):
    """data[key], checked to be a list of JSON objects."""
    if key not in data:
        if required:
            raise COCOFormatError(json_file, key, "missing (not a COCO instances json?)")
        return []
    values = data[key]
    if not isinstance(values, list):
        raise COCOFormatError(json_file, key, f"must be a list, got {type(values).__name__}")
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise COCOFormatError(json_file, f"{key}[{i}]", f"must be an object, got {value!r:.100}")
    return values


def _require(items, key, field, valid, expected, json_file):
    """Raise for the first of `items` whose `field` is not `valid`."""
    for i, item in enumerate(items):
        if not valid(item.get(field)):
            got = f"{item[field]!r:.100}" if field in item else "nothing"
            raise COCOFormatError(json_file, f"{key}[{i}].{field}", f"must be {expected}, got {got}")


def _no_duplicates(values, key, field, json_file, why, shown=None):
    """Raise, counting them, when two of `values` are equal: the items' key[i].field, or
    values derived from them (`shown`: the fields as the json has them)."""
    seen, duplicates = {}, []
    for i, value in enumerate(values):
        j = seen.setdefault(value, i)
        if j != i:
            duplicates.append((i, j))
    if duplicates:
        i, j = duplicates[0]
        raise COCOFormatError(
            json_file,
            f"{key}[{i}].{field}",
            f"{(shown or values)[i]!r} is also the {field} of {key}[{j}] ({len(duplicates)} such duplicate(s)); {why}",
        )


def read_coco_json(json_file):
    """
    The COCO instances json `json_file`, parsed and checked before detectron2's
    `load_coco_json` reads it (which asserts some of this without naming the file, and
    trusts the rest).

    Raises:
        COCOFormatError naming the file and the field: not JSON, or not a JSON object; no
        "images" or "categories" list (an empty "categories" too); an image without an id,
        a file name, a positive width or height; two images with one id (pycocotools keeps
        one of them and gives it the other's annotations) or one file name; two categories
        or annotations with one id; an annotation without an id, image_id or
        category_id, with a category_id not in "categories", an empty bbox or "ignore".

    Annotations of an image id that "images" does not list belong to no page: training and
    the COCO evaluation both leave them out; a warning counts them.
    """
    try:
        with open(json_file, "rb") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise COCOFormatError(json_file, None, f"not valid JSON ({e}); truncated?") from None
    if not isinstance(data, dict):
        problem = 'must be a COCO object with "images", "annotations" and "categories"'
        raise COCOFormatError(json_file, None, f"{problem}, got a {type(data).__name__}")
    images = _objects(data, "images", json_file)
    categories = _objects(data, "categories", json_file)
    annotations = _objects(data, "annotations", json_file, required=False)
    if not categories:
        raise COCOFormatError(json_file, "categories", "empty: a detector needs at least one class")

    _require(images, "images", "id", _is_id, "an integer or a string", json_file)
    _require(images, "images", "file_name", lambda v: isinstance(v, str) and v, "a file path", json_file)
    for field in ("width", "height"):
        _require(images, "images", field, _is_size, "a positive number (pixels)", json_file)
    why = "each page needs its own, or one page's annotations land on another"
    _no_duplicates([image["id"] for image in images], "images", "id", json_file, why)
    names = [image["file_name"] for image in images]
    why = "a page must be listed once, with all its annotations"
    _no_duplicates([os.path.normpath(n) for n in names], "images", "file_name", json_file, why, names)

    _require(categories, "categories", "id", _is_int, "an integer", json_file)
    _require(categories, "categories", "name", lambda v: isinstance(v, str) and v, "a class name", json_file)
    _no_duplicates([c["id"] for c in categories], "categories", "id", json_file, "each class needs its own")

    for field in ("id", "image_id", "category_id"):
        _require(annotations, "annotations", field, _is_id, "an integer or a string", json_file)
    _no_duplicates([a["id"] for a in annotations], "annotations", "id", json_file, "each annotation needs its own")
    category_ids = {c["id"] for c in categories}
    unknown = [i for i, a in enumerate(annotations) if a["category_id"] not in category_ids]
    if unknown:
        i = unknown[0]
        problem = f'{annotations[i]["category_id"]!r} is not an id of "categories" {sorted(category_ids)}'
        raise COCOFormatError(
            json_file, f"annotations[{i}].category_id", f"{problem} ({len(unknown)} such annotation(s))"
        )
    for i, annotation in enumerate(annotations):
        if annotation.get("bbox") == []:
            raise COCOFormatError(json_file, f"annotations[{i}].bbox", "empty (must be [x, y, w, h])")
        if annotation.get("ignore", 0):
            raise COCOFormatError(
                json_file, f"annotations[{i}].ignore", 'not supported (mark such objects "iscrowd": 1)'
            )

    image_ids = {image["id"] for image in images}
    orphans = [i for i, a in enumerate(annotations) if a["image_id"] not in image_ids]
    if orphans:
        i = orphans[0]
        logger.warning(
            f'{json_file}: {len(orphans)} annotation(s) of an image id that "images" does not list are left out '
            f"(they belong to no page), the first: annotations[{i}] of image_id {annotations[i]['image_id']!r}"
        )
    return data


# The class names of the jsons `read_coco_json` found usable in this process, by (path,
# modification time, size): a dataset is loaded again for every evaluation, and by the
# checks before training and by training.
_CHECKED_JSONS = {}


def _checked_classes(json_file):
    """The class names, in id order, of `json_file`, checked by `read_coco_json` once per
    version of the file and process."""
    stat = os.stat(json_file)
    key = (os.path.realpath(json_file), stat.st_mtime_ns, stat.st_size)
    if key not in _CHECKED_JSONS:
        categories = read_coco_json(json_file)["categories"]
        _CHECKED_JSONS[key] = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    return _CHECKED_JSONS[key]


def load_vl_coco_json(json_file, image_root, ocr_root, dataset_name=None):
    """
    `load_coco_json` records, each with "ocr_file": `ocr_root/<image path relative to
    image_root without extension>.json`.

    The json is checked first (`read_coco_json`, once per version of the file and process;
    with `dataset_name`, its classes must be those the dataset was registered with, if
    any). Each annotation then goes through `fit_annotation`, as in the evaluation's
    ground truth: a bbox reaching outside its image is clipped to it; one that is
    unreadable (not 4 finite numbers, width or height <= 0) or lies outside its image is
    left out; one warning counts them.
    """
    names = _checked_classes(json_file)
    registered = dataset_name and MetadataCatalog.get(dataset_name).get("thing_classes")
    if registered and list(registered) != names:
        problem = f"the classes {names} (in id order) are not those of dataset {dataset_name!r}: {registered}"
        raise COCOFormatError(json_file, "categories", problem)
    records = load_coco_json(json_file, image_root, dataset_name)
    usable = UsableAnnotations()
    for record in records:
        relative = os.path.relpath(record["file_name"], image_root)
        record["ocr_file"] = os.path.join(ocr_root, os.path.splitext(relative)[0] + ".json")
        record["annotations"] = usable(record["annotations"], record["width"], record["height"], record["file_name"])
    if usable.counts:
        logger.warning(f"{json_file}: {usable.summary()}")
    return records


# A Git LFS pointer file (the spec says under 1024 bytes) starts with this line.
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def image_file_problem(path):
    """
    Why `path` cannot be a page image, told without decoding it: "missing", "empty",
    "a Git LFS pointer file, not the image (git lfs pull fetches it)", or None. One stat;
    the few files under 1 KiB are also opened.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "empty"
    if size < 1024:
        with open(path, "rb") as f:
            if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
                return "a Git LFS pointer file, not the image (git lfs pull fetches it)"
    return None


# How many paths an error or warning names.
_NAMED_FILES = 3


def _named(problems):
    """'path (problem); ...' for the first few of [(path, problem)], and how many more."""
    named = "; ".join(f"{path} ({problem})" for path, problem in problems[:_NAMED_FILES])
    more = len(problems) - _NAMED_FILES
    return named + (f"; and {more} more" if more > 0 else "")


def check_image_files(records, dataset_name):
    """
    Look at the image file of every page of `records` (`image_file_problem`: a stat per
    page) and log how long it took. Raise FileNotFoundError when no page has a usable
    image file (a wrong image root, or Git LFS pointers in place of the images); log a
    warning that counts and names those that lack one (training skips them, the
    evaluation leaves them out).
    """
    start = time.perf_counter()
    problems = [(r["file_name"], p) for r in records if (p := image_file_problem(r["file_name"])) is not None]
    logger.info(f"{dataset_name}: looked at the {len(records)} image files in {time.perf_counter() - start:.1f} s")
    if problems and len(problems) == len(records):
        raise FileNotFoundError(
            f"none of the {len(records)} pages of dataset {dataset_name!r} has a usable image file: "
            f"{_named(problems)}. Check the image root: {MetadataCatalog.get(dataset_name).get('image_root')}"
        )
    if problems:
        logger.warning(
            f"{len(problems)} of the {len(records)} pages of dataset {dataset_name!r} have no usable image file, "
            f"skipped in training and left out of the evaluation: {_named(problems)}"
        )


def check_ocr_files(records, dataset_names):
    """
    Raise FileNotFoundError, counting them and naming the first, when pages of `records`
    have no OCR json at their "ocr_file": a model that reads text would otherwise stop
    only when training first meets one of them, which can be hours in. A page whose image
    file cannot be read either is not counted: it is skipped for its image
    (`check_image_files` reports those).
    """
    missing = [r for r in records if "ocr_file" in r and not os.path.isfile(r["ocr_file"])]
    missing = [r["ocr_file"] for r in missing if image_file_problem(r["file_name"]) is None]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(records)} pages of {', '.join(dataset_names)} have no OCR json, "
            f"the first: {missing[0]}. Make them with tools/ocr.py, or train those pages without text: "
            "INPUT.OCR.MISSING empty"
        )


def _check_contents(cfg, name, key, needs_ocr):
    """The checks of `check_datasets` that read the dataset `name` (of DATASETS.`key`)."""
    start = time.perf_counter()
    records = DatasetCatalog.get(name)
    logger.info(f"{name}: loaded {len(records)} pages in {time.perf_counter() - start:.1f} s to check them")
    metadata = MetadataCatalog.get(name)
    source = f"dataset {name!r} (DATASETS.{key}, {metadata.get('json_file', 'not a json')})"
    check_image_files(records, name)
    if needs_ocr:
        check_ocr_files(records, [name])
    if not any(not a.get("iscrowd", 0) for record in records for a in record.get("annotations", ())):
        use = "training would learn nothing" if key == "TRAIN" else "its AP would be NaN"
        raise ValueError(
            f"{source}: none of its {len(records)} pages has a usable annotation ({use}); "
            "see the warnings above for those left out"
        )
    classes = metadata.get("thing_classes")
    if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}, but {source} has "
            f"{len(classes)} classes ({', '.join(classes)}): add MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}"
        )


def check_datasets(cfg, splits=("TRAIN", "TEST")):
    """
    Raise a clear error, before anything is built, when DATASETS.TRAIN or DATASETS.TEST
    (those of `splits`) names a dataset that is not registered, one whose COCO json is
    not there, or, for a model that reads text with INPUT.OCR.MISSING "error", one whose
    OCR folder is not there (KeyError).

    Then each dataset is loaded as training and evaluation load it (a COCOFormatError
    naming the json and the field for a json that cannot be used, see `read_coco_json`),
    and checked: its image files (`check_image_files`), its OCR jsons (`check_ocr_files`,
    as above), that it has a usable annotation (ValueError) and as many classes as
    MODEL.ROI_HEADS.NUM_CLASSES (ValueError).
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
        checked = set()
        for key in splits:
            for name in cfg.DATASETS[key]:
                if name not in checked:
                    checked.add(name)
                    _check_contents(cfg, name, key, needs_ocr)
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
