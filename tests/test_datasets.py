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
from ditod.data.datasets import BUILTIN_DATASETS, register_from_config, register_vl_coco
from ditod.data.mapper import VLDatasetMapper
from ditod.data.ocr import PageOCR, save_ocr
from ditod.data.tokens import train_tokenizer

SAMPLES = "/work/shared/data/publaynet-samples"
SAMPLES_JSON = os.path.join(SAMPLES, "samples.json")


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
