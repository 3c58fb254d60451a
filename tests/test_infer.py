"""tools/infer.py on images (OCR on the fly, or OCR jsons) and on a two-page PDF (text layer);
class names from the checkpoint; clear errors for bad arguments."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from conftest import REPO, TINY_TEXT_CONFIG
from ditod import add_vit_config
from ditod.data import register_vl_coco, train_tokenizer
from ditod.data.ocr import load_ocr
from ditod.data.synthetic import CATEGORIES, SyntheticOptions, generate_split
from ditod.engine import VLDetectionCheckpointer, VLTrainer

INFER = os.path.join(REPO, "tools", "infer.py")
# The untrained model scores about 1/11 per class: a low threshold keeps some boxes.
THRESH = 0.05


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two synthetic pages with OCR, a tokenizer, and the weights of a (randomly
    initialised) tiny text model; the config options that go with them."""
    root = tmp_path_factory.mktemp("infer")
    generate_split(str(root), "val", 2, seed=2, options=SyntheticOptions(height=400))
    lines = [line for path in sorted((root / "val" / "ocr").glob("*.json")) for line in load_ocr(path).words]
    train_tokenizer(lines, str(root / "tokenizer"), vocab_size=400)
    opts = [
        "MODEL.VIT.TOKENIZER",
        str(root / "tokenizer"),
        "DATASETS.REGISTER",
        repr([["infer_val", str(root / "val.json"), str(root / "val" / "images"), ""]]),
        "DATASETS.TEST",
        '("infer_val",)',
    ]
    cfg = get_cfg()
    add_vit_config(cfg)
    cfg.merge_from_file(TINY_TEXT_CONFIG)
    cfg.merge_from_list(opts)
    seed_all_rng(0)
    VLDetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("weights")
    return root, opts, cfg


def run_infer(*args, cwd):
    command = [sys.executable, INFER, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see test_train_net.run_train_net
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def check_page(output, name, size, source):
    """The drawn PNG and the detections JSON of one page; returns the detections."""
    drawn = np.asarray(Image.open(output / f"{name}.png").convert("RGB"))
    assert drawn.shape[:2] == size[::-1]
    result = json.loads((output / f"{name}.json").read_text())
    assert (result["width"], result["height"]) == size and result["ocr"] == source
    assert result["detections"], "nothing drawn"
    for d in result["detections"]:
        assert d["class"] in CATEGORIES and d["score"] >= THRESH
        x0, y0, x1, y1 = d["bbox"]
        assert 0 <= x0 <= x1 <= size[0] and 0 <= y0 <= y1 <= size[1]
    # Boxes were drawn on the page: the drawing differs from the page.
    page = np.asarray(Image.open(result["image"]).convert("RGB"))
    assert (drawn != page).any()
    return result["detections"]


@pytest.mark.slow
def test_image_with_ocr_on_the_fly_and_a_bad_file(setup, tmp_path):
    root, opts, _ = setup
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.open(root / "val" / "images" / "val_000000.png").save(inputs / "page.png")
    (inputs / "broken.jpg").write_bytes(b"not an image")
    output = tmp_path / "out"
    result = run_infer(
        "--config-file",
        TINY_TEXT_CONFIG,
        "--weights",
        root / "weights.pth",
        "--input",
        inputs,
        "--output",
        output,
        "--score-thresh",
        THRESH,
        "--device",
        "cpu",
        "--opts",
        *opts,
        cwd=tmp_path,
    )
    # The bad file is reported and the exit status says so; the good page is done.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "FAILED broken" in result.stdout and "1 page(s)" in result.stdout
    assert "seconds per page: OCR" in result.stdout
    with Image.open(inputs / "page.png") as image:
        width, height = image.size
    detections = check_page(output, "page", (width, height), "rapidocr")
    ocr = load_ocr(output / "ocr" / "page.json")
    assert len(ocr) > 5 and (ocr.width, ocr.height) == (width, height)
    coco = COCO(str(output / "results.json"))
    assert len(coco.imgs) == 1 and len(coco.anns) == len(detections)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)


@pytest.fixture(scope="module")
def two_page_pdf(tmp_path_factory):
    import pymupdf

    path = tmp_path_factory.mktemp("pdf") / "report.pdf"
    with pymupdf.open() as document:
        for number in (1, 2):
            page = document.new_page(width=300, height=420)
            page.insert_text((30, 50), f"Chapter {number}", fontsize=16)
            page.insert_text((30, 90), "Layout analysis finds the regions of a page.", fontsize=9)
        document.save(path)
    return path


@pytest.mark.slow
def test_two_page_pdf_uses_its_text_layer(setup, two_page_pdf, tmp_path):
    root, opts, _ = setup
    output = tmp_path / "out"
    result = run_infer(
        "--config-file",
        TINY_TEXT_CONFIG,
        "--weights",
        root / "weights.pth",
        "--input",
        two_page_pdf,
        "--output",
        output,
        "--score-thresh",
        THRESH,
        "--device",
        "cpu",
        "--dpi",
        144,
        "--classes",
        *CATEGORIES,
        "--opts",
        *opts,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 page(s)" in result.stdout and "text layer 2" in result.stdout
    size = (300 * 2, 420 * 2)  # 144 dpi: two pixels per PDF point
    total = 0
    for number in (1, 2):
        name = f"report_p{number:04d}"
        total += len(check_page(output, name, size, "text layer"))
        assert load_ocr(output / "ocr" / f"{name}.json").words[0] == f"Chapter {number}"
    results = json.loads((output / "results.json").read_text())
    assert [image["file_name"] for image in results["images"]] == [
        str(output / "pages" / f"report_p{number:04d}.png") for number in (1, 2)
    ]
    assert len(results["annotations"]) == total


def load_tool():
    spec = importlib.util.spec_from_file_location("infer", INFER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_detections_equal_those_of_the_evaluation_pipeline(setup, tmp_path):
    # infer.py with the pages' OCR jsons gives what evaluation's test loader gives.
    root, opts, cfg = setup
    output = tmp_path / "out"
    status = load_tool().main(
        [
            "--config-file",
            TINY_TEXT_CONFIG,
            "--weights",
            str(root / "weights.pth"),
            "--input",
            str(root / "val" / "images"),
            "--ocr-dir",
            str(root / "val" / "ocr"),
            "--output",
            str(output),
            "--score-thresh",
            str(THRESH),
            "--device",
            "cpu",
            "--opts",
            *opts,
        ]
    )
    assert status == 0

    cfg = cfg.clone()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = THRESH
    model = build_model(cfg).eval()
    VLDetectionCheckpointer(model).load(str(root / "weights.pth"))
    pages = 0
    with torch.no_grad():
        for inputs in VLTrainer.build_test_loader(cfg, "infer_val"):
            assert inputs[0]["input_ids"].numel() > 0
            instances = model(inputs)[0]["instances"]
            name = os.path.splitext(os.path.basename(inputs[0]["file_name"]))[0]
            detections = json.loads((output / f"{name}.json").read_text())["detections"]
            assert len(detections) == len(instances) > 0
            np.testing.assert_allclose([d["bbox"] for d in detections], instances.pred_boxes.tensor, atol=0.01)
            np.testing.assert_allclose([d["score"] for d in detections], instances.scores, atol=1e-4)
            assert [CATEGORIES.index(d["class"]) for d in detections] == instances.pred_classes.tolist()
            pages += 1
    assert pages == 2


# The classes of a user's own training data: other names than the config's DATASETS.TEST
# (the synthetic CATEGORIES) and non-contiguous COCO ids.
OWN_CLASSES = [f"own class {i}" for i in range(len(CATEGORIES))]
OWN_IDS = [10 * (i + 1) + 1 for i in range(len(CATEGORIES))]


@pytest.fixture(scope="module")
def own_weights(setup):
    """Weights saved, as training saves them, for a dataset with OWN_CLASSES and OWN_IDS."""
    root, _, cfg = setup
    coco = json.loads((root / "val.json").read_text())
    # The synthetic ids are 1..N in CATEGORIES order; the json lists them last id first.
    coco["categories"] = [{"id": OWN_IDS[i], "name": OWN_CLASSES[i]} for i in reversed(range(len(CATEGORIES)))]
    for annotation in coco["annotations"]:
        annotation["category_id"] = OWN_IDS[annotation["category_id"] - 1]
    (root / "own.json").write_text(json.dumps(coco))
    register_vl_coco("infer_own_train", str(root / "own.json"), str(root / "val" / "images"))
    DatasetCatalog.get("infer_own_train")  # training loads its dataset before saving
    seed_all_rng(0)
    VLDetectionCheckpointer(build_model(cfg), str(root), dataset_name="infer_own_train").save("own_weights")
    return root / "own_weights.pth"


@pytest.mark.slow
def test_class_names_and_ids_come_from_the_checkpoint(setup, own_weights, tmp_path, capsys):
    root, opts, _ = setup
    saved = torch.load(own_weights, weights_only=True)
    assert (saved["thing_classes"], saved["category_ids"]) == (OWN_CLASSES, OWN_IDS)

    # DATASETS.TEST of the config is infer_val, whose classes are CATEGORIES; no --classes.
    output = tmp_path / "out"
    status = load_tool().main(
        [
            "--config-file",
            TINY_TEXT_CONFIG,
            "--weights",
            str(own_weights),
            "--input",
            str(root / "val" / "images"),
            "--ocr-dir",
            str(root / "val" / "ocr"),
            "--output",
            str(output),
            "--score-thresh",
            str(THRESH),
            "--device",
            "cpu",
            "--opts",
            *opts,
        ]
    )
    assert status == 0
    assert "ocr json 2" in capsys.readouterr().out
    results = json.loads((output / "results.json").read_text())
    assert results["categories"] == [{"id": i, "name": name} for i, name in zip(OWN_IDS, OWN_CLASSES)]
    assert results["annotations"]
    assert {a["category_id"] for a in results["annotations"]} <= set(OWN_IDS)
    for d in json.loads((output / "val_000000.json").read_text())["detections"]:
        assert d["category_id"] == OWN_IDS[OWN_CLASSES.index(d["class"])]


@pytest.mark.slow
def test_page_missing_from_ocr_dir_is_ocred_on_the_fly(setup, tmp_path, capsys):
    root, opts, _ = setup
    ocr_dir = tmp_path / "ocr"
    ocr_dir.mkdir()
    shutil.copy(root / "val" / "ocr" / "val_000000.json", ocr_dir)
    output = tmp_path / "out"
    status = load_tool().main(
        [
            "--config-file",
            TINY_TEXT_CONFIG,
            "--weights",
            str(root / "weights.pth"),
            "--input",
            str(root / "val" / "images"),
            "--ocr-dir",
            str(ocr_dir),
            "--output",
            str(output),
            "--score-thresh",
            str(THRESH),
            "--device",
            "cpu",
            "--opts",
            *opts,
        ]
    )
    assert status == 0
    assert "OCR from: ocr json 1, rapidocr 1" in capsys.readouterr().out
    assert json.loads((output / "val_000000.json").read_text())["ocr"] == "ocr json"
    assert json.loads((output / "val_000001.json").read_text())["ocr"] == "rapidocr"
    assert not (output / "ocr" / "val_000000.json").exists()
    assert len(load_ocr(output / "ocr" / "val_000001.json")) > 5


@pytest.mark.parametrize(
    "arguments, overrides, problem",
    [
        (["--ocr-dir", "no_such_ocr"], [], "--ocr-dir no_such_ocr does not exist"),
        (["--weights", "no_such.pth"], [], "--weights no_such.pth does not exist"),
        ([], ["MODEL.NO_SUCH_KEY", "1"], "config override: Non-existent key: MODEL.NO_SUCH_KEY"),
    ],
)
def test_bad_arguments_stop_before_a_model_is_built(setup, tmp_path, monkeypatch, arguments, overrides, problem):
    root, opts, _ = setup
    tool = load_tool()
    monkeypatch.setattr(tool, "build_model", lambda cfg: pytest.fail("a model was built"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        tool.main(
            [
                "--config-file",
                TINY_TEXT_CONFIG,
                "--weights",
                str(root / "weights.pth"),
                "--input",
                str(root / "val" / "images"),
                "--output",
                "out",
                *arguments,
                "--opts",
                *opts,
                *overrides,
            ]
        )
    assert stop.value.code == f"infer.py: error: {problem}"


@pytest.mark.slow
def test_bad_config_override_is_a_one_line_error(setup, tmp_path):
    root, opts, _ = setup
    result = run_infer(
        "--config-file",
        TINY_TEXT_CONFIG,
        "--weights",
        root / "weights.pth",
        "--input",
        root / "val" / "images",
        "--output",
        tmp_path / "out",
        "--opts",
        *opts,
        "MODEL.NO_SUCH_KEY",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    # Only the error, as its last line (library warnings may come before it).
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == "infer.py: error: config override: Non-existent key: MODEL.NO_SUCH_KEY"
    )
