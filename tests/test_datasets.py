"""COCO datasets with OCR: registration, bad boxes, category ids, evaluation, built-ins."""

import json
import logging
import math
import os
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from conftest import tiny_cfg
from ditod.data.datasets import (
    BUILTIN_DATASETS,
    COCOFormatError,
    check_datasets,
    register_from_config,
    register_vl_coco,
)
from ditod.data.mapper import VLDatasetMapper
from ditod.data.ocr import PageOCR, save_ocr
from ditod.data.tokens import train_tokenizer

SAMPLES = "/work/shared/data/publaynet-samples"
SAMPLES_JSON = os.path.join(SAMPLES, "samples.json")
# What a clone without `git lfs pull` has in place of an image.
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"
)


def unique_name(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_publaynet_samples(tmp_path):
    name = unique_name("publaynet_samples")
    register_vl_coco(name, SAMPLES_JSON, SAMPLES, str(tmp_path / "ocr"))
    records = DatasetCatalog.get(name)
    with open(SAMPLES_JSON) as f:
        coco = json.load(f)
    assert len(records) == len(coco["images"]) == 20
    assert sum(len(r["annotations"]) for r in records) == len(coco["annotations"])
    for record in records:
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        assert record["ocr_file"] == str(tmp_path / "ocr" / f"{stem}.json")
        assert os.path.isfile(record["file_name"])
        for annotation in record["annotations"]:
            assert annotation["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= annotation["category_id"] < 5
            assert len(annotation["segmentation"][0]) >= 6
    metadata = MetadataCatalog.get(name)
    assert metadata.thing_classes == ["text", "title", "list", "table", "figure"]
    assert metadata.evaluator_type == "coco" and metadata.json_file == SAMPLES_JSON


def test_coco_evaluator_scores_the_ground_truth_perfectly(tmp_path):
    name = unique_name("publaynet_eval")
    register_vl_coco(name, SAMPLES_JSON, SAMPLES)
    records = DatasetCatalog.get(name)
    evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False, output_dir=str(tmp_path))
    evaluator.reset()
    for record in records:
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]], dtype=torch.long)
        evaluator.process([record], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP-figure"] == pytest.approx(100.0)


def write_coco(path, images, annotations, categories):
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))


@pytest.fixture
def handmade(tmp_path):
    """Two pages in a sub-folder; bad boxes; category ids 3, 7, 12."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    for stem in ("a", "b"):
        Image.new("RGB", (200, 100), "white").save(root / "sub" / f"{stem}.png")
    images = [
        {"id": 10, "file_name": "sub/a.png", "width": 200, "height": 100},
        {"id": 11, "file_name": "sub/b.png", "width": 200, "height": 100},
    ]
    good = [[10, 10, 50, 20], [100, 10, 30, 30], [5, 60, 100, 30]]
    bad = [[10, 10, 0, 20], [10, 10, 20, -5], [math.nan, 10, 20, 20]]
    annotations = [
        {"id": i + 1, "image_id": 10 + i % 2, "bbox": bbox, "category_id": (3, 7, 12)[i % 3], "iscrowd": 0, "area": 1.0}
        for i, bbox in enumerate(good + bad)
    ]
    categories = [{"id": 12, "name": "figure"}, {"id": 3, "name": "text"}, {"id": 7, "name": "title"}]
    write_coco(tmp_path / "coco.json", images, annotations, categories)
    return tmp_path, annotations


def test_bad_boxes_dropped_and_ids_mapped(handmade, caplog):
    tmp_path, annotations = handmade
    name = unique_name("handmade")
    register_vl_coco(name, str(tmp_path / "coco.json"), str(tmp_path / "images"))
    with caplog.at_level(logging.WARNING, logger="ditod.data.datasets"):
        records = DatasetCatalog.get(name)
    assert "dropped 3 annotation(s)" in caplog.text and "coco.json" in caplog.text
    kept = [(a["bbox"], a["category_id"]) for r in records for a in r["annotations"]]
    expected = [(a["bbox"], {3: 0, 7: 1, 12: 2}[a["category_id"]]) for a in annotations[:3]]
    assert sorted(kept) == sorted(expected)
    metadata = MetadataCatalog.get(name)
    assert metadata.thing_classes == ["text", "title", "figure"]
    assert metadata.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 12: 2}
    # The default OCR root is <image_root>/../ocr, laid out like the images.
    assert sorted(r["ocr_file"] for r in records) == [
        str(tmp_path / "ocr" / "sub" / "a.json"),
        str(tmp_path / "ocr" / "sub" / "b.json"),
    ]


def test_registering_again(handmade):
    tmp_path, _ = handmade
    name = unique_name("again")
    args = (name, str(tmp_path / "coco.json"), str(tmp_path / "images"))
    register_vl_coco(*args)
    register_vl_coco(*args)
    register_vl_coco(*args, str(tmp_path / "ocr"))  # the default, spelled out
    with pytest.raises(ValueError, match=f"{name}.*already registered"):
        register_vl_coco(name, str(tmp_path / "other.json"), str(tmp_path / "images"))


def test_register_from_config(handmade):
    tmp_path, _ = handmade
    first, second = unique_name("cfg"), unique_name("cfg")
    cfg = tiny_cfg()
    cfg.DATASETS.REGISTER = [
        [first, str(tmp_path / "coco.json"), str(tmp_path / "images"), ""],
        [second, str(tmp_path / "coco.json"), str(tmp_path / "images"), str(tmp_path / "elsewhere")],
    ]
    register_from_config(cfg)
    register_from_config(cfg)
    assert MetadataCatalog.get(first).ocr_root == str(tmp_path / "ocr")
    assert DatasetCatalog.get(second)[0]["ocr_file"].startswith(str(tmp_path / "elsewhere"))
    cfg.DATASETS.REGISTER = [["only_a_name"]]
    with pytest.raises(ValueError, match=r"DATASETS.REGISTER\[0\]"):
        register_from_config(cfg)


def test_builtin_names_are_registered_lazily():
    root = os.getenv("DETECTRON2_DATASETS", "datasets")
    expected = {
        "publaynet_train": ("publaynet/train.json", "publaynet/train", "publaynet/ocr/train"),
        "cdla_val": ("cdla/val.json", "cdla/val/images", "cdla/val/ocr"),
        "doclaynet_test": ("doclaynet/COCO/test.json", "doclaynet/PNG", "doclaynet/ocr"),
        "synthetic_train": ("synthetic/train.json", "synthetic/train/images", "synthetic/train/ocr"),
    }
    assert {"publaynet_val", "cdla_train", "doclaynet_train", "doclaynet_val", "synthetic_val"} <= set(BUILTIN_DATASETS)
    for name, files in expected.items():
        metadata = MetadataCatalog.get(name)
        registered = (metadata.json_file, metadata.image_root, metadata.ocr_root)
        assert registered == tuple(os.path.join(root, f) for f in files)
        assert metadata.evaluator_type == "coco"
    assert len(MetadataCatalog.get("cdla_train").thing_classes) == 10
    assert len(MetadataCatalog.get("doclaynet_train").thing_classes) == 11


def test_registered_pages_through_the_mapper(tmp_path):
    """Two PubLayNet pages with OCR written at their text blocks: tokens land in the blocks."""
    name = unique_name("publaynet_mapped")
    register_vl_coco(name, SAMPLES_JSON, SAMPLES, str(tmp_path / "ocr"))
    records = DatasetCatalog.get(name)[:2]
    for record in records:
        blocks = [a["bbox"] for a in record["annotations"]]
        page = PageOCR(record["width"], record["height"], [f"block {i}" for i in range(len(blocks))], blocks)
        save_ocr(record["ocr_file"], page)
    train_tokenizer(["block 0 1 2 3 4 5 6 7 8 9"] * 20, tmp_path / "tok", vocab_size=300)
    cfg = tiny_cfg("MODEL.VIT.TOKENIZER", str(tmp_path / "tok"), "INPUT.OCR.ORDER", "ocr")
    mapper = VLDatasetMapper(cfg, is_train=False)
    for record in records:
        out = mapper(record)
        height, width = out["image"].shape[1:]
        scale = np.array([width / record["width"], height / record["height"]] * 2)
        blocks = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in record["annotations"]]
        tokens_per_block = [len(mapper.ocr_tokenizer.line_ids(f"block {i}")) for i in range(len(blocks))]
        expected = np.repeat(np.array(blocks) * scale, tokens_per_block, axis=0)
        np.testing.assert_allclose(out["token_boxes"].numpy(), expected, rtol=1e-5, atol=1e-3)
        assert mapper.ocr_tokenizer.tokenizer.decode(out["input_ids"]).split()[:4] == ["block", "0", "block", "1"]


# ------------------------------------------------------------------ bad input


def small_coco(tmp_path, pages=2, boxes_per_page=2):
    """A valid COCO json of `pages` white 200x100 pages (images written), two classes;
    returns the json object and the image root."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    images, annotations = [], []
    for i in range(pages):
        Image.new("RGB", (200, 100), "white").save(root / f"p{i}.png")
        images.append({"id": i + 1, "file_name": f"p{i}.png", "width": 200, "height": 100})
        for j in range(boxes_per_page):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": 1 + j % 2,
                    "bbox": [10 + 50 * j, 10, 40, 30],
                    "area": 1200.0,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "text"}, {"id": 2, "name": "title"}]
    return {"images": images, "annotations": annotations, "categories": categories}, root


def register_json(tmp_path, content, ocr_root=None):
    """`content` (an object, or raw text) written as a json and registered under a new name."""
    path = tmp_path / f"{uuid.uuid4().hex[:6]}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    name = unique_name("bad_input")
    register_vl_coco(name, str(path), str(tmp_path / "images"), ocr_root and str(ocr_root))
    return name, path


def broken(change):
    """A small_coco json object changed by `change(coco)`."""

    def make(tmp_path):
        coco, _ = small_coco(tmp_path)
        change(coco)
        return coco

    return make


def _set(coco, path, value):
    *keys, last = path
    node = coco
    for key in keys:
        node = node[key]
    node[last] = value


NOT_COCO = {
    # What detectron2 / pycocotools report today: bare AssertionError, JSONDecodeError,
    # KeyError, ValueError without the file, or nothing at all.
    "a-list": (lambda tmp_path: "[1, 2]", None, "must be a COCO object"),
    "plain-text": (lambda tmp_path: "page 1: a title", None, "not valid JSON"),
    "truncated": (lambda tmp_path: json.dumps(small_coco(tmp_path)[0])[:-20], None, "not valid JSON"),
    "no-categories": (broken(lambda c: c.pop("categories")), "categories", "missing"),
    "no-classes": (broken(lambda c: _set(c, ["categories"], [])), "categories", "empty"),
    "no-images": (broken(lambda c: c.pop("images")), "images", "missing"),
    "image-without-size": (broken(lambda c: c["images"][1].pop("height")), "images[1].height", "positive number"),
    "unknown-category": (
        broken(lambda c: _set(c, ["annotations", 3, "category_id"], 9)),
        "annotations[3].category_id",
        "9 is not an id of",
    ),
    "duplicate-image-id": (
        broken(lambda c: _set(c, ["images", 1, "id"], 1)),
        "images[1].id",
        "1 is also the id of images[0]",
    ),
    "duplicate-file-name": (
        broken(lambda c: _set(c, ["images", 1, "file_name"], "./p0.png")),
        "images[1].file_name",
        "is also the file_name of images[0]",
    ),
    "duplicate-annotation-id": (
        broken(lambda c: _set(c, ["annotations", 2, "id"], 1)),
        "annotations[2].id",
        "1 is also the id of annotations[0]",
    ),
    "annotation-without-image-id": (
        broken(lambda c: c["annotations"][0].pop("image_id")),
        "annotations[0].image_id",
        "got nothing",
    ),
    "ignore": (broken(lambda c: _set(c, ["annotations", 0, "ignore"], 1)), "annotations[0].ignore", "not supported"),
}


@pytest.mark.parametrize("case", list(NOT_COCO))
def test_a_json_that_cannot_be_used_is_an_error_naming_the_file_and_field(case, tmp_path):
    make, field, problem = NOT_COCO[case]
    name, path = register_json(tmp_path, make(tmp_path))
    with pytest.raises(COCOFormatError) as error:
        DatasetCatalog.get(name)
    assert str(error.value).startswith(f"{path}: {field}: " if field else f"{path}: ")
    assert problem in str(error.value)


def test_two_pages_with_one_id_never_reach_training(tmp_path):
    """Today pycocotools keeps the second page and gives it the first one's boxes too."""
    coco, _ = small_coco(tmp_path, pages=3)
    coco["images"][2]["id"] = coco["images"][0]["id"]
    name, path = register_json(tmp_path, coco)
    with pytest.raises(ValueError, match=r"images\[2\].id: 1 is also the id of images\[0\] \(1 such duplicate"):
        DatasetCatalog.get(name)


def test_classes_must_be_those_the_dataset_was_registered_with(tmp_path):
    coco, _ = small_coco(tmp_path)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    name = unique_name("classes")
    register_vl_coco(name, str(path), str(tmp_path / "images"), thing_classes=["text", "figure"])
    with pytest.raises(COCOFormatError, match=r"categories: the classes \['text', 'title'\] .* \['text', 'figure'\]"):
        DatasetCatalog.get(name)


def test_annotations_of_unlisted_images_are_left_out_with_a_count(tmp_path, caplog):
    coco, _ = small_coco(tmp_path)
    coco["annotations"][1]["image_id"] = coco["annotations"][3]["image_id"] = 77
    name, path = register_json(tmp_path, coco)
    with caplog.at_level(logging.WARNING, logger="ditod.data.datasets"):
        records = DatasetCatalog.get(name)
    assert sum(len(r["annotations"]) for r in records) == 2
    assert f'{path}: 2 annotation(s) of an image id that "images" does not list are left out' in caplog.text
    assert "the first: annotations[1] of image_id 77" in caplog.text


def test_boxes_reaching_outside_the_image_are_clipped_and_those_outside_dropped(tmp_path, caplog):
    coco, _ = small_coco(tmp_path, boxes_per_page=1)
    coco["annotations"] += [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [150, 80, 100, 40], "iscrowd": 0, "area": 4000.0},
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [-30, -5, 50, 20], "iscrowd": 0, "area": 1000.0},
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": [210, 10, 40, 30], "iscrowd": 0, "area": 1200.0},
        {"id": 13, "image_id": 2, "category_id": 1, "bbox": [10, -60, 40, 30], "iscrowd": 0, "area": 1200.0},
    ]
    name, path = register_json(tmp_path, coco)
    with caplog.at_level(logging.WARNING, logger="ditod.data.datasets"):
        records = DatasetCatalog.get(name)
    boxes = [[a["bbox"] for a in r["annotations"]] for r in records]
    assert boxes == [[[10, 10, 40, 30], [150, 80, 50, 20], [0, 0, 20, 15]], [[10, 10, 40, 30]]]
    assert f"{path}: dropped 2 annotation(s) whose bbox lies outside its image, the first on" in caplog.text
    assert "clipped 2 annotation(s) whose bbox reaches outside its image to the image" in caplog.text


def checked(tmp_path, coco, *overrides, splits=("TRAIN",), ocr_root=None):
    """check_datasets on `coco` registered as DATASETS.TRAIN and TEST (2 classes)."""
    name, path = register_json(tmp_path, coco, ocr_root)
    cfg = tiny_cfg(
        "DATASETS.TRAIN", (name,), "DATASETS.TEST", (name,), "MODEL.ROI_HEADS.NUM_CLASSES", 2, "MODEL.IMAGE_ONLY", True
    )
    cfg.merge_from_list(list(overrides))
    check_datasets(cfg, splits)
    return name, path


@pytest.mark.parametrize("split, consequence", [("TRAIN", "training would learn nothing"), ("TEST", "AP would be NaN")])
def test_a_dataset_without_usable_annotations_stops_before_training(tmp_path, split, consequence):
    coco, _ = small_coco(tmp_path)
    for annotation in coco["annotations"]:
        annotation["bbox"] = [500, 500, 10, 10]  # all outside their 200x100 page
    with pytest.raises(
        ValueError, match=f"DATASETS.{split}.*none of its 2 pages has a usable annotation.*{consequence}"
    ):
        checked(tmp_path, coco, splits=(split,))
    coco.pop("annotations")
    with pytest.raises(ValueError, match="none of its 2 pages has a usable annotation"):
        checked(tmp_path, coco, splits=(split,))


@pytest.mark.parametrize("split", ["TRAIN", "TEST"])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_num_classes_must_be_the_datasets(tmp_path, split, num_classes):
    coco, _ = small_coco(tmp_path)
    with pytest.raises(ValueError) as error:
        checked(tmp_path, coco, "MODEL.ROI_HEADS.NUM_CLASSES", num_classes, splits=(split,))
    assert f"MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}, but dataset" in str(error.value)
    assert f"(DATASETS.{split}, " in str(error.value) and "has 2 classes (text, title)" in str(error.value)
    assert str(error.value).endswith("add MODEL.ROI_HEADS.NUM_CLASSES 2")


def test_missing_images_are_reported_as_missing_images(tmp_path, caplog):
    coco, root = small_coco(tmp_path, pages=3)
    ocr = tmp_path / "ocr"
    for image in coco["images"]:
        save_ocr(ocr / image["file_name"].replace(".png", ".json"), PageOCR(200, 100, ["a"], [[1, 1, 5, 5]]))
    coco["images"].append({"id": 9, "file_name": "gone.png", "width": 200, "height": 100})  # neither image nor OCR
    (root / "p1.png").unlink()
    text_model = ("MODEL.IMAGE_ONLY", False)
    with caplog.at_level(logging.INFO, logger="ditod.data.datasets"):
        name, _ = checked(tmp_path, coco, *text_model, ocr_root=ocr)
    assert (
        f"2 of the 4 pages of dataset {name!r} have no usable image file, skipped in training and left out of "
        f"the evaluation: {root / 'p1.png'} (missing); {root / 'gone.png'} (missing)"
    ) in caplog.text
    assert f"{name}: looked at the 4 image files in " in caplog.text
    # An image that is there without its OCR json is reported as such.
    (ocr / "p2.json").unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"1 of the 4 pages of bad_input_\w+ have no OCR json, the first: {ocr}/p2.json"
    ):
        checked(tmp_path, coco, *text_model, ocr_root=ocr)
    # No image at all: a wrong image root, whatever the OCR.
    for path in root.iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError) as error:
        checked(tmp_path, coco, *text_model, ocr_root=ocr)
    assert "none of the 4 pages of dataset" in str(error.value) and f"{root / 'p0.png'} (missing)" in str(error.value)
    assert "OCR" not in str(error.value)


def test_git_lfs_pointers_in_place_of_images_stop_before_training(tmp_path):
    coco, root = small_coco(tmp_path)
    for image in coco["images"]:
        (root / image["file_name"]).write_text(LFS_POINTER)
    with pytest.raises(FileNotFoundError, match="p0.png \\(a Git LFS pointer file, not the image \\(git lfs pull"):
        checked(tmp_path, coco)


def test_a_json_is_checked_again_once_changed(tmp_path):
    coco, _ = small_coco(tmp_path)
    name, path = register_json(tmp_path, coco)
    assert len(DatasetCatalog.get(name)) == 2
    coco["images"][1]["file_name"] = "./p0.png"
    path.write_text(json.dumps(coco))
    with pytest.raises(
        COCOFormatError, match=r"images\[1\].file_name: './p0.png' is also the file_name of images\[0\]"
    ):
        DatasetCatalog.get(name)
