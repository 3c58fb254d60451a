"""Evaluation on what the loader reads: ground truth without the annotations the loader
drops, pages whose image cannot be read left out (one process, two processes, and
`VLTrainer.test` with the tiny model)."""

import json
import logging
import math
import os
import sys
import uuid

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.engine import launch
from detectron2.evaluation import COCOEvaluator, coco_evaluation
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils import comm

from conftest import tiny_cfg
from ditod.data import register_vl_coco, train_tokenizer
from ditod.data.ocr import PageOCR, save_ocr
from ditod.engine import VLCOCOEvaluator, VLTrainer
from ditod.engine.evaluation import UNREADABLE

SAMPLES = "/work/shared/data/publaynet-samples"
SAMPLES_JSON = os.path.join(SAMPLES, "samples.json")


def registered(json_file, image_root=SAMPLES, ocr_root=None):
    """A new dataset name for `json_file`, loaded once (which sets its category-id mapping)."""
    name = f"eval_{uuid.uuid4().hex[:8]}"
    register_vl_coco(name, str(json_file), str(image_root), ocr_root and str(ocr_root))
    return name, DatasetCatalog.get(name)


@pytest.fixture
def warnings_of(caplog):
    """The warnings of `ditod.engine.evaluation` (caplog listens at the root logger; a
    tool run in this process may have stopped ditod's loggers from propagating)."""
    ditod = logging.getLogger("ditod")
    propagate, ditod.propagate = ditod.propagate, True
    with caplog.at_level(logging.WARNING, logger="ditod.engine.evaluation"):
        yield lambda: [r.getMessage() for r in caplog.records if r.name == "ditod.engine.evaluation"]
    ditod.propagate = propagate


def instances(record, boxes, scores, classes):
    result = Instances((record["height"], record["width"]))
    result.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    result.scores = torch.tensor(scores, dtype=torch.float32)
    result.pred_classes = torch.tensor(classes, dtype=torch.long)
    return result


def ground_truth_boxes(record):
    return [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]


def exact_predictions(record):
    classes = [a["category_id"] for a in record["annotations"]]
    return instances(record, ground_truth_boxes(record), [1.0] * len(classes), classes)


def noisy_predictions(records, seed=0):
    """Per page: most ground-truth boxes moved a little, with random scores, plus a false
    positive; an AP well between 0 and 100."""
    rng = np.random.default_rng(seed)
    predictions = []
    for record in records:
        boxes, classes = [], []
        for box, annotation in zip(ground_truth_boxes(record), record["annotations"]):
            if rng.random() < 0.8:
                size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
                boxes.append(np.array(box) + rng.normal(0, 0.08, 4) * size)
                classes.append(annotation["category_id"])
        boxes.append([50, 50, 250, 120])
        classes.append(int(rng.integers(5)))
        predictions.append(instances(record, np.array(boxes), rng.uniform(0.1, 1, len(boxes)), classes))
    return predictions


def feed(evaluator, records, predictions, unreadable=()):
    """`evaluator` reset and given the pages one by one; those whose image id is in
    `unreadable` come as the test loader's markers."""
    evaluator.reset()
    for record, prediction in zip(records, predictions):
        if record["image_id"] in unreadable:
            marker = {"image_id": record["image_id"], "file_name": record["file_name"], UNREADABLE: "broken"}
            evaluator.process([marker], [{}])
        else:
            evaluator.process([record], [{"instances": prediction}])
    return evaluator


UNREADABLE_BBOXES = {
    "three-numbers": [1, 2, -3],
    "string": [1, 2, "x", 4],
    "nan": [math.nan, 10, 20, 20],
    "zero-width": [100, 100, 0, 20],
}


@pytest.mark.parametrize(
    "bboxes",
    [[b] for b in UNREADABLE_BBOXES.values()] + [list(UNREADABLE_BBOXES.values())],
    ids=list(UNREADABLE_BBOXES) + ["all"],
)
def test_ground_truth_leaves_out_the_annotations_the_loader_drops(bboxes, tmp_path, warnings_of):
    with open(SAMPLES_JSON) as f:
        coco = json.load(f)
    first_page = coco["images"][0]["id"]
    coco["annotations"] += [
        {"id": 10**8 + i, "image_id": first_page, "category_id": 1, "bbox": bbox, "area": 400.0, "iscrowd": 0}
        for i, bbox in enumerate(bboxes)
    ]
    (tmp_path / "with_unreadable.json").write_text(json.dumps(coco))  # NaN written as NaN, as json reads it
    name, records = registered(tmp_path / "with_unreadable.json")
    clean_name, clean_records = registered(SAMPLES_JSON)
    assert [r["annotations"] for r in records] == [r["annotations"] for r in clean_records]
    predictions = noisy_predictions(records)

    ours = feed(VLCOCOEvaluator(name, tasks=("bbox",), distributed=False), records, predictions).evaluate()
    clean = feed(COCOEvaluator(clean_name, tasks=("bbox",), distributed=False), clean_records, predictions).evaluate()
    ours, clean = ours["bbox"], clean["bbox"]
    assert 20 < clean["AP"] < 80
    assert ours == clean
    assert warnings_of() == [
        f"{tmp_path / 'with_unreadable.json'}: dropped {len(bboxes)} annotation(s) with an unreadable bbox (not 4 "
        f"finite numbers, or width/height <= 0), the first on {coco['images'][0]['file_name']} (the ground truth "
        f"of {name}, as training reads it)"
    ]


def test_boxes_outside_their_image_are_clipped_or_dropped_as_in_training(tmp_path, warnings_of):
    """Ground-truth boxes reaching outside their page are clipped to it, those outside it
    dropped, as training reads them; "area" and "iscrowd" may be missing. Exact
    predictions of what training reads then score 100."""
    with open(SAMPLES_JSON) as f:
        coco = json.load(f)
    first, second = coco["images"][:2]
    coco["annotations"] += [
        {"id": 10**8, "image_id": first["id"], "category_id": 2, "bbox": [first["width"] - 50, 30, 200, 40]},
        {"id": 10**8 + 1, "image_id": second["id"], "category_id": 3, "bbox": [-40, -20, 100, 60], "area": 6000.0},
        {"id": 10**8 + 2, "image_id": second["id"], "category_id": 4, "bbox": [10, second["height"] + 5, 80, 40]},
    ]
    (tmp_path / "outside.json").write_text(json.dumps(coco))
    name, records = registered(tmp_path / "outside.json")
    predictions = [exact_predictions(record) for record in records]
    ours = feed(VLCOCOEvaluator(name, tasks=("bbox",), distributed=False), records, predictions).evaluate()["bbox"]
    assert ours["AP"] == pytest.approx(100.0)
    json_file = tmp_path / "outside.json"
    assert warnings_of() == [
        f"{json_file}: dropped 1 annotation(s) whose bbox lies outside its image, the first on "
        f"{second['file_name']}; clipped 2 annotation(s) whose bbox reaches outside its image to the image, the "
        f"first on {first['file_name']} (the ground truth of {name}, as training reads it)",
        f'{json_file}: 2 annotation(s) without "area" or "iscrowd" evaluated with the area of their bbox and iscrowd 0',
    ]
    # detectron2's evaluator on the raw json (which pycocotools fails to evaluate without
    # "area" and "iscrowd"): the predictions miss the boxes outside.
    for annotation in coco["annotations"][-3:]:
        annotation.update(area=1000.0, iscrowd=0)
    (tmp_path / "raw.json").write_text(json.dumps(coco))
    raw_name, _ = registered(tmp_path / "raw.json")
    raw = feed(COCOEvaluator(raw_name, tasks=("bbox",), distributed=False), records, predictions).evaluate()["bbox"]
    assert raw["AP"] < 95 and raw["AP-text"] == pytest.approx(100.0)


def test_unreadable_pages_are_left_out_not_counted_as_missed(warnings_of):
    name, records = registered(SAMPLES_JSON)
    predictions = [exact_predictions(r) for r in records]
    unreadable = {records[3]["image_id"], records[9]["image_id"]}  # 26 objects, one of the 9 figures
    evaluator = feed(VLCOCOEvaluator(name, tasks=("bbox",), distributed=False), records, predictions, unreadable)
    results = evaluator.evaluate()["bbox"]
    assert results["AP"] == pytest.approx(100.0)
    assert all(results[f"AP-{c}"] == pytest.approx(100.0) for c in ("text", "title", "list", "table", "figure"))
    (warning,) = warnings_of()
    assert warning == f"{name}: 2 page(s) left out of the evaluation, their image cannot be read: broken; broken"
    # What a plain COCOEvaluator makes of pages without predictions: their objects are missed.
    readable = [i for i, r in enumerate(records) if r["image_id"] not in unreadable]
    plain = feed(
        COCOEvaluator(name, tasks=("bbox",), distributed=False),
        [records[i] for i in readable],
        [predictions[i] for i in readable],
    )
    assert plain.evaluate()["bbox"]["AP"] < 95


def _evaluate_in_two_processes(unreadable, out):
    """One of two processes: every other page of the samples, `unreadable` (image ids) as markers."""
    name, records = registered(SAMPLES_JSON)
    mine = slice(comm.get_rank(), None, 2)
    evaluator = VLCOCOEvaluator(name, tasks=("bbox",), distributed=True)
    results = feed(evaluator, records[mine], noisy_predictions(records)[mine], unreadable).evaluate()
    if comm.is_main_process():
        with open(out, "w") as f:
            json.dump(results["bbox"], f)
    # Leave together: a GLOO process exiting while the other still evaluates was seen to
    # abort ("terminate called without an active exception").
    comm.synchronize()
    torch.distributed.destroy_process_group()
    # Even then a process was seen to abort in the same way at interpreter exit (once in
    # a few dozen runs), in the C++ destructors of the group's threads: its work is done
    # and written, so leave without running them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_unreadable_pages_of_both_processes_are_left_out(tmp_path):
    name, records = registered(SAMPLES_JSON)
    unreadable = {records[i]["image_id"] for i in (3, 4, 9)}  # pages of processes 1, 0 and 1
    launch(_evaluate_in_two_processes, 2, dist_url="auto", args=(unreadable, str(tmp_path / "ap.json")))
    readable = [i for i, r in enumerate(records) if r["image_id"] not in unreadable]
    predictions = noisy_predictions(records)
    plain = feed(
        COCOEvaluator(name, tasks=("bbox",), distributed=False),
        [records[i] for i in readable],
        [predictions[i] for i in readable],
    )
    expected = plain.evaluate(img_ids=[records[i]["image_id"] for i in readable])["bbox"]
    assert json.loads((tmp_path / "ap.json").read_text()) == pytest.approx(expected, nan_ok=True)


@pytest.fixture(scope="module")
def pages_with_a_broken_image(tmp_path_factory):
    """Three real pages with OCR (a line per annotated block) and a tokenizer, and two
    datasets: those pages, and the same plus a 0-byte image annotated like a real page."""
    root = tmp_path_factory.mktemp("broken_page")
    with open(SAMPLES_JSON) as f:
        coco = json.load(f)
    (root / "images").mkdir()
    pages, spare = coco["images"][:3], coco["images"][3]
    for page in pages:
        os.symlink(os.path.join(SAMPLES, page["file_name"]), root / "images" / page["file_name"])
        blocks = [a["bbox"] for a in coco["annotations"] if a["image_id"] == page["id"]]
        ocr = PageOCR(page["width"], page["height"], [f"block {i}" for i in range(len(blocks))], blocks)
        save_ocr(root / "ocr" / page["file_name"].replace(".jpg", ".json"), ocr)
    (root / "images" / "broken.jpg").write_bytes(b"")
    broken = dict(spare, file_name="broken.jpg")
    for name, images in (("readable", pages), ("with_broken", pages + [broken])):
        ids = {image["id"] for image in images}
        subset = dict(coco, images=images, annotations=[a for a in coco["annotations"] if a["image_id"] in ids])
        (root / f"{name}.json").write_text(json.dumps(subset))
    train_tokenizer(["block 0 1 2 3 4 5 6 7 8 9"] * 20, root / "tokenizer", vocab_size=300)
    return root, [page["id"] for page in pages]


def test_trainer_test_leaves_an_unreadable_page_out(pages_with_a_broken_image, monkeypatch, warnings_of):
    root, readable_ids = pages_with_a_broken_image
    evaluated = []
    evaluate_on_coco = coco_evaluation._evaluate_predictions_on_coco

    def spy(coco_gt, coco_results, *args, img_ids=None, **kwargs):
        evaluated.append((img_ids and sorted(img_ids), sorted({r["image_id"] for r in coco_results})))
        return evaluate_on_coco(coco_gt, coco_results, *args, img_ids=img_ids, **kwargs)

    monkeypatch.setattr(coco_evaluation, "_evaluate_predictions_on_coco", spy)

    def cfg(json_name):
        name, _ = registered(root / json_name, root / "images", root / "ocr")
        return name, tiny_cfg(
            "MODEL.VIT.TOKENIZER",
            str(root / "tokenizer"),
            "MODEL.ROI_HEADS.NUM_CLASSES",
            5,
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            0.0,
            "INPUT.MIN_SIZE_TEST",
            192,
            "INPUT.MAX_SIZE_TEST",
            320,
            "DATASETS.TEST",
            (name,),
            "OUTPUT_DIR",
            str(root / json_name.replace(".json", "")),
        )

    name, with_broken = cfg("with_broken.json")
    model = VLTrainer.build_model(with_broken)
    results = VLTrainer.test(with_broken, model)
    assert model.training, "the model's mode is restored"
    (warning,) = warnings_of()
    assert warning.startswith(f"{name}: 1 page(s) left out of the evaluation, their image cannot be read: ")
    assert f"{root / 'images' / 'broken.jpg'}: cannot read the image" in warning
    # Predictions on the readable pages, evaluated on those pages only.
    assert evaluated == [(sorted(readable_ids), sorted(readable_ids))]
    metrics = json.loads((root / "with_broken" / "inference" / name / "metrics.json").read_text())
    assert metrics["dataset"] == name and set(metrics["per_class_AP"]) == {"text", "title", "list", "table", "figure"}

    # The same results as for the dataset without that page.
    _, readable = cfg("readable.json")
    assert VLTrainer.test(readable, model)["bbox"] == pytest.approx(results["bbox"], nan_ok=True)
    assert evaluated[1] == (None, sorted(readable_ids))
