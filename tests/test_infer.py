"""tools/infer.py end to end: images (OCR on the fly, or OCR jsons) and PDFs (text layer), bad
inputs listed, class names from the checkpoint, reruns that skip finished pages, a huge page
in bounded memory, the Ray mode; clear errors for bad arguments."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from conftest import REPO, TINY_TEXT_CONFIG
from ditod.data import PageOCR, register_vl_coco, save_ocr
from ditod.data.ocr import load_ocr
from ditod.data.synthetic import CATEGORIES
from ditod.engine import VLDetectionCheckpointer

INFER = os.path.join(REPO, "tools", "infer.py")
# The untrained model scores about 1/11 per class: a low threshold keeps some boxes.
THRESH = 0.05


def run_infer(*args, cwd, env=None):
    command = [sys.executable, INFER, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}  # see test_train_net.run_train_net
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def infer_args(weights, inputs, output, opts, *extra):
    return [
        "--config-file",
        TINY_TEXT_CONFIG,
        "--weights",
        str(weights),
        "--input",
        *map(str, inputs),
        "--output",
        str(output),
        "--score-thresh",
        str(THRESH),
        "--device",
        "cpu",
        *extra,
        "--opts",
        *opts,
    ]


def load_tool():
    """tools/infer.py's command line, to run its main() in this process."""
    spec = importlib.util.spec_from_file_location("infer", INFER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_size(path):
    with Image.open(path) as image:
        return image.size


def check_page(output, name, size, source):
    """The drawn PNG and the JSON of one page; returns its blocks."""
    drawn = np.asarray(Image.open(output / f"{name}.png").convert("RGB"))
    assert drawn.shape[:2] == size[::-1]
    result = json.loads((output / f"{name}.json").read_text())
    assert result["name"] == name and (result["width"], result["height"]) == size and result["ocr"] == source
    assert result["blocks"], "nothing drawn"
    assert [b["index"] for b in result["blocks"]] == list(range(len(result["blocks"])))
    for b in result["blocks"]:
        assert b["class"] in CATEGORIES and b["score"] >= THRESH
        x0, y0, x1, y1 = b["bbox"]
        assert 0 <= x0 <= x1 <= size[0] and 0 <= y0 <= y1 <= size[1]
    # Every OCR line is in a block's text or listed apart.
    lines = [line for b in result["blocks"] for line in b["text"].split("\n") if b["text"]]
    lines += [line["text"] for line in result["lines_outside_blocks"]]
    ocr = load_ocr(output / "ocr" / f"{name}.json") if source != "ocr json" else None
    if ocr is not None:
        assert sorted(lines) == sorted(ocr.words)
    # Boxes were drawn on the page: the drawing differs from the page.
    page = np.asarray(Image.open(result["image"]).convert("RGB"))
    assert (drawn != page).any()
    return result["blocks"]


@pytest.mark.slow
def test_image_with_ocr_on_the_fly_and_a_bad_file(tiny_model, tmp_path):
    root, opts, _ = tiny_model
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.open(root / "val" / "images" / "val_000000.png").save(inputs / "page.png")
    (inputs / "broken.jpg").write_bytes(b"not an image")
    output = tmp_path / "out"
    args = infer_args(root / "weights.pth", [inputs], output, opts, "--format", "json", "markdown")
    result = run_infer(*args, cwd=tmp_path)
    # The bad file is reported and the exit status says so; the good page is done.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "FAILED broken: UnreadableImageError" in result.stdout and "1 page(s)" in result.stdout
    assert "seconds per page: OCR" in result.stdout
    width, height = image_size(inputs / "page.png")
    blocks = check_page(output, "page", (width, height), "rapidocr")
    ocr = load_ocr(output / "ocr" / "page.json")
    assert len(ocr) > 5 and (ocr.width, ocr.height) == (width, height)
    assert (output / "page.md").read_text().strip()
    coco = COCO(str(output / "results.json"))
    assert len(coco.imgs) == 1 and len(coco.anns) == len(blocks)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)


@pytest.mark.slow
def test_pdfs_use_their_text_layer_and_bad_pdfs_are_listed(tiny_model, two_page_pdf, tmp_path):
    import pymupdf

    root, opts, _ = tiny_model
    with pymupdf.open() as document:  # text that renders blank: its scan was lost
        document.new_page().insert_text((50, 50), "invisible", render_mode=3)
        document.save(tmp_path / "ghost.pdf")
    (tmp_path / "empty.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )
    output = tmp_path / "out"
    inputs = [two_page_pdf, tmp_path / "ghost.pdf", tmp_path / "empty.pdf"]
    result = run_infer(*infer_args(root / "weights.pth", inputs, output, opts, "--dpi", 144), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "2 page(s)" in result.stdout and "text layer 2" in result.stdout and "2 failed" in result.stdout
    assert f"FAILED {tmp_path / 'empty.pdf'}: the PDF has no pages" in result.stdout
    assert "FAILED ghost_p0001: ValueError: page 1 renders blank although it has text" in result.stdout
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


# The classes of a user's own training data: other names than the config's DATASETS.TEST
# (the synthetic CATEGORIES) and non-contiguous COCO ids.
OWN_CLASSES = [f"own class {i}" for i in range(len(CATEGORIES))]
OWN_IDS = [10 * (i + 1) + 1 for i in range(len(CATEGORIES))]


@pytest.fixture(scope="module")
def own_weights(tiny_model):
    """Weights saved, as training saves them, for a dataset with OWN_CLASSES and OWN_IDS."""
    root, _, cfg = tiny_model
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
def test_class_names_and_ids_come_from_the_checkpoint(tiny_model, own_weights, tmp_path, capsys):
    root, opts, _ = tiny_model
    saved = torch.load(own_weights, weights_only=True)
    assert (saved["thing_classes"], saved["category_ids"]) == (OWN_CLASSES, OWN_IDS)

    # DATASETS.TEST of the config is infer_val, whose classes are CATEGORIES; no --classes.
    output = tmp_path / "out"
    args = infer_args(own_weights, [root / "val" / "images"], output, opts, "--ocr-dir", root / "val" / "ocr")
    assert load_tool().main(list(map(str, args))) == 0
    assert "ocr json 2" in capsys.readouterr().out
    results = json.loads((output / "results.json").read_text())
    assert results["categories"] == [{"id": i, "name": name} for i, name in zip(OWN_IDS, OWN_CLASSES)]
    assert results["annotations"]
    assert {a["category_id"] for a in results["annotations"]} <= set(OWN_IDS)
    for block in json.loads((output / "val_000000.json").read_text())["blocks"]:
        assert block["category_id"] == OWN_IDS[OWN_CLASSES.index(block["class"])]


@pytest.mark.slow
def test_missing_ocr_json_is_made_and_a_rerun_skips_finished_pages(tiny_model, tmp_path, capsys):
    root, opts, _ = tiny_model
    ocr_dir = tmp_path / "ocr"
    ocr_dir.mkdir()
    shutil.copy(root / "val" / "ocr" / "val_000000.json", ocr_dir)
    output = tmp_path / "out"
    args = list(
        map(str, infer_args(root / "weights.pth", [root / "val" / "images"], output, opts, "--ocr-dir", ocr_dir))
    )
    tool = load_tool()
    assert tool.main(args) == 0
    assert "OCR from: ocr json 1, rapidocr 1" in capsys.readouterr().out
    assert json.loads((output / "val_000000.json").read_text())["ocr"] == "ocr json"
    assert json.loads((output / "val_000001.json").read_text())["ocr"] == "rapidocr"
    assert not (output / "ocr" / "val_000000.json").exists()
    assert len(load_ocr(output / "ocr" / "val_000001.json")) > 5
    finished = (output / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in finished] == ["val_000000", "val_000001"]

    # A run killed while writing the second page's line: the rerun does that page only.
    (output / "results.jsonl").write_text(finished[0] + "\n" + finished[1][:50])
    assert tool.main(args) == 0
    assert "1 page(s)" in (out := capsys.readouterr().out) and "1 skipped" in out
    assert (output / "results.jsonl").read_text().splitlines() == finished
    assert len(json.loads((output / "results.json").read_text())["images"]) == 2
    assert tool.main(args) == 0
    assert "0 page(s)" in (out := capsys.readouterr().out) and "2 skipped" in out


@pytest.mark.parametrize(
    "arguments, overrides, problem",
    [
        (["--ocr-dir", "no_such_ocr"], [], "--ocr-dir no_such_ocr does not exist"),
        (["--weights", "no_such.pth"], [], "--weights no_such.pth does not exist"),
        (["--input", "no_such.png"], [], "no_such.png does not exist"),
        ([], ["MODEL.NO_SUCH_KEY", "1"], "config override: Non-existent key: MODEL.NO_SUCH_KEY"),
    ],
)
def test_bad_arguments_stop_before_a_model_is_built(tiny_model, tmp_path, monkeypatch, arguments, overrides, problem):
    root, opts, _ = tiny_model
    tool = load_tool()
    monkeypatch.setattr("ditod.engine.predictor.build_model", lambda cfg: pytest.fail("a model was built"))
    monkeypatch.setattr("ditod.engine.predictor.VLDetectionCheckpointer", lambda model: pytest.fail("weights read"))
    monkeypatch.chdir(tmp_path)
    args = ["--weights", str(root / "weights.pth"), "--input", str(root / "val" / "images"), *arguments]
    with pytest.raises(SystemExit) as stop:
        tool.main(["--config-file", TINY_TEXT_CONFIG, "--output", "out", *args, "--opts", *opts, *overrides])
    assert str(stop.value.code).startswith(f"infer.py: error: {problem}")


@pytest.mark.slow
def test_bad_config_override_is_a_one_line_error(tiny_model, tmp_path):
    root, opts, _ = tiny_model
    args = infer_args(
        root / "weights.pth", [root / "val" / "images"], tmp_path / "out", [*opts, "MODEL.NO_SUCH_KEY", "1"]
    )
    result = run_infer(*args, cwd=tmp_path)
    assert result.returncode == 1
    # Only the error, as its last line (library warnings may come before it).
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1]
        == "infer.py: error: config override: Non-existent key: MODEL.NO_SUCH_KEY"
    )


# Runs tools/infer.py's main on each argument list of argv[2] in one process and prints its
# peak resident memory after each.
PEAK_MEMORY = """
import json, resource, runpy, sys
main = runpy.run_path(sys.argv[1])["main"]
for args in json.loads(sys.argv[2]):
    assert main(args) == 0
    print("peak MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)
"""


@pytest.mark.slow
def test_a_12000_by_9000_page_in_bounded_memory(tiny_model, tmp_path):
    root, opts, _ = tiny_model
    big = tmp_path / "big"
    big.mkdir()
    page = np.full((9000, 12000, 3), 255, np.uint8)
    words, boxes = [], []
    for i in range(15):
        words.append(f"Line {i} of a very large page")
        cv2.putText(page, words[-1], (800, 600 + 500 * i), cv2.FONT_HERSHEY_SIMPLEX, 8, (0, 0, 0), 12)
        boxes.append([800, 400 + 500 * i, 6000, 250])
    page[2000:6000, 7500:11000] = (40, 90, 200)
    cv2.imwrite(str(big / "page.png"), page)
    del page
    save_ocr(big / "ocr" / "page.json", PageOCR(12000, 9000, words, boxes))
    small_page = [root / "val" / "images" / "val_000000.png"]
    small = infer_args(root / "weights.pth", small_page, tmp_path / "small", opts, "--ocr-dir", root / "val" / "ocr")
    large = infer_args(root / "weights.pth", [big / "page.png"], tmp_path / "out", opts, "--ocr-dir", big / "ocr")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", PEAK_MEMORY, INFER, json.dumps([small, large], default=str)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    baseline, peak = (float(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("peak MB"))
    # The page is 324 MB as an array. Reading it, PIL decodes it at 4 bytes a pixel (432 MB)
    # before the array is made; resizing it to the model's input goes through PIL again
    # (432 MB): 756 MB at the worst moment. The drawing is 2000 x 1500. The tool used to
    # take more than 12 GB (two reads and a full-size drawing).
    assert peak - baseline < 1100, (baseline, peak)
    assert image_size(tmp_path / "out" / "page.png") == (2000, 1500)
    result = json.loads((tmp_path / "out" / "page.json").read_text())
    assert (result["width"], result["height"]) == (12000, 9000) and result["ocr"] == "ocr json"


def marked_processes(marker):
    """Ids of the processes whose environment holds `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def same_page(a, b, output_a, output_b):
    """Per-page records equal, up to where they were written and float rounding in the last digit."""
    a, b = (json.loads(json.dumps(r).replace(str(o), "OUT")) for r, o in ((a, output_a), (b, output_b)))
    blocks_a, blocks_b = a.pop("blocks"), b.pop("blocks")
    assert a == b
    assert [(x["class"], x["text"]) for x in blocks_a] == [(x["class"], x["text"]) for x in blocks_b]
    np.testing.assert_allclose([x["score"] for x in blocks_a], [x["score"] for x in blocks_b], atol=2e-4)
    np.testing.assert_allclose([x["bbox"] for x in blocks_a], [x["bbox"] for x in blocks_b], atol=0.05)


@pytest.mark.slow
def test_ray_gives_the_pages_of_one_process(tiny_model, two_page_pdf, tmp_path, capsys):
    pytest.importorskip("ray")
    root, opts, _ = tiny_model
    inputs = [root / "val" / "images", two_page_pdf]
    single, on_ray = tmp_path / "single", tmp_path / "ray"
    ocr = ["--ocr-dir", root / "val" / "ocr"]
    assert load_tool().main(list(map(str, infer_args(root / "weights.pth", inputs, single, opts, *ocr)))) == 0
    capsys.readouterr()
    # One page was done by an earlier run: the Ray run skips it.
    on_ray.mkdir()
    first = (single / "results.jsonl").read_text().splitlines()[0]
    (on_ray / "results.jsonl").write_text(first + "\n")
    marker = f"DITOD_RAY_TEST={uuid.uuid4().hex}"
    key, value = marker.split("=")
    args = infer_args(root / "weights.pth", inputs, on_ray, opts, *ocr, "--ray", "--ray-cpus", 2)
    result = run_infer(*args, cwd=tmp_path, env={key: value})
    assert result.returncode == 0, result.stderr[-5000:]
    assert "3 page(s)" in result.stdout and "1 skipped" in result.stdout, result.stdout
    names = ["val_000000", "val_000001", "report_p0001", "report_p0002"]
    for name in names[1:]:
        same_page(
            json.loads((single / f"{name}.json").read_text()),
            json.loads((on_ray / f"{name}.json").read_text()),
            single,
            on_ray,
        )
        assert image_size(on_ray / f"{name}.png") == image_size(single / f"{name}.png")
    records = [json.loads(line) for line in (on_ray / "results.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in records) == sorted(names)
    assert len(json.loads((on_ray / "results.json").read_text())["images"]) == 4
    # Ray is shut down with the tool: none of its processes is left.
    deadline = time.monotonic() + 30
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:  # clean up before failing
        os.kill(pid, 9)
    assert not left, f"processes left behind by Ray: {left}"
