"""tools/train_net.py as a user runs it: training with text, --eval-only COCO metrics,
two CPU processes (GLOO DDP), dataset errors."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_TEXT_CONFIG, tiny_layoutlmv3
from ditod.data import train_tokenizer
from ditod.data.ocr import load_ocr
from ditod.data.synthetic import CATEGORIES, SyntheticOptions, generate_split
from ditod.engine import VLDetectionCheckpointer, VLTrainer
from ditod.layoutlmv3 import load_tokenizer

TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
# Smaller pages than the tiny config's 320 px, to keep the runs short.
SMALL = [
    "INPUT.MIN_SIZE_TRAIN",
    "(192,)",
    "INPUT.MAX_SIZE_TRAIN",
    "320",
    "INPUT.MIN_SIZE_TEST",
    "192",
    "INPUT.MAX_SIZE_TEST",
    "320",
]


def run_train_net(*args, cwd, one_thread=True):
    # One torch thread per process: on a small shared machine a second thread mostly
    # waits for a core.
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, TRAIN_NET, *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def check(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic train (4 pages) and val (2 pages) splits with OCR, a tokenizer, and the
    --dataset / config arguments that use them."""
    root = tmp_path_factory.mktemp("train_net")
    for split, pages in (("train", 4), ("val", 2)):
        generate_split(str(root), split, pages, seed=1, options=SyntheticOptions(height=400))
    lines = [line for path in sorted((root / "train" / "ocr").glob("*.json")) for line in load_ocr(path).words]
    train_tokenizer(lines, str(root / "tokenizer"), vocab_size=400)
    datasets = [
        "--dataset",
        f"pages_train={root}/train.json:{root}/train/images:{root}/train/ocr",
        "--dataset",
        f"pages_val={root}/val.json:{root}/val/images",
    ]
    opts = [
        "MODEL.VIT.TOKENIZER",
        root / "tokenizer",
        "DATASETS.TRAIN",
        '("pages_train",)',
        "DATASETS.TEST",
        '("pages_val",)',
        *SMALL,
    ]
    return root, datasets, opts


@pytest.fixture(scope="module")
def trained(data):
    """Three iterations with text, evaluated after iteration 2 and at the end."""
    root, datasets, opts = data
    output = root / "trained"
    result = check(
        run_train_net(
            "--config-file",
            TINY_TEXT_CONFIG,
            *datasets,
            *opts,
            "OUTPUT_DIR",
            output,
            "SOLVER.MAX_ITER",
            3,
            "TEST.EVAL_PERIOD",
            2,
            cwd=root,
        )
    )
    return output, result


@pytest.mark.slow
def test_training_writes_checkpoints_metrics_and_events(trained):
    output, _ = trained
    for name in ("model_final.pth", "model_best.pth", "last_checkpoint", "config.yaml"):
        assert (output / name).is_file(), name
    assert list(output.glob("events.out.tfevents.*"))
    # detectron2 writes the training metrics every 20 iterations and at the end.
    records = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [2]
    assert losses[0]["total_loss"] > 0 and "lr" in losses[0] and "loss_cls_stage2" in losses[0]
    # Evaluated after iteration 2 (0-based 1; BestCheckpointer then saved model_best)
    # and after training.
    assert [r["iteration"] for r in records if "bbox/AP" in r] == [1, 3]
    assert "Saved first model at" in (output / "log.txt").read_text()
    checkpoint = torch.load(output / "model_final.pth", weights_only=True)
    assert checkpoint["iteration"] == 2
    assert any("text_fusion" in key for key in checkpoint["model"])
    # The training data's classes travel with the weights (tools/infer.py reads them).
    assert checkpoint["thing_classes"] == list(CATEGORIES)
    assert torch.load(output / "model_best.pth", weights_only=True)["thing_classes"] == list(CATEGORIES)
    assert (output / "inference" / "pages_val" / "coco_instances_results.json").is_file()


@pytest.mark.slow
def test_eval_only_writes_coco_results_and_metrics(data, trained):
    root, datasets, opts = data
    weights, _ = trained
    output = root / "evaluated"
    result = check(
        run_train_net(
            "--config-file",
            TINY_TEXT_CONFIG,
            "--eval-only",
            *datasets,
            *opts,
            "MODEL.WEIGHTS",
            weights / "model_final.pth",
            "OUTPUT_DIR",
            output,
            cwd=root,
        )
    )
    folder = output / "inference" / "pages_val"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["dataset"] == "pages_val"
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert key in metrics and (metrics[key] is None or 0 <= metrics[key] <= 100), key
    assert list(metrics["per_class_AP"]) == list(CATEGORIES)
    detections = json.loads((folder / "coco_instances_results.json").read_text())
    assert detections, "the model found nothing at all"
    image_ids = {image["id"] for image in json.loads((root / "val.json").read_text())["images"]}
    for detection in detections:
        assert detection["image_id"] in image_ids and 1 <= detection["category_id"] <= len(CATEGORIES)
        assert len(detection["bbox"]) == 4 and 0 <= detection["score"] <= 1
    log = result.stdout + result.stderr
    assert "Per-category bbox AP" in log and "Figure caption" in log
    assert not list(output.glob("model_*.pth"))


@pytest.mark.slow
def test_eval_only_evaluates_an_exported_model_as_it_evaluates_pytorch(data, trained):
    pytest.importorskip("onnx")
    from ditod import load_config
    from ditod.engine.export import export_onnx

    root, datasets, opts = data
    output, _ = trained
    exported = root / "exported"
    export_onnx(load_config(TINY_TEXT_CONFIG, list(map(str, opts))), str(output / "model_final.pth"), exported)
    evaluated = root / "evaluated_onnx"
    # The test loader from the export's own config.yaml; the datasets registered here.
    check(run_train_net("--eval-only", "--onnx", exported, *datasets, "OUTPUT_DIR", evaluated, cwd=root))
    # The training's last evaluation was of model_final's weights, in PyTorch.
    folders = [folder / "inference" / "pages_val" for folder in (output, evaluated)]
    torch_metrics, onnx_metrics = (json.loads((f / "metrics.json").read_text()) for f in folders)
    for key in ("AP", "AP50", "AP75"):
        assert onnx_metrics[key] == pytest.approx(torch_metrics[key], abs=1e-3), key
    torch_found, onnx_found = (json.loads((f / "coco_instances_results.json").read_text()) for f in folders)
    assert torch_found and abs(len(onnx_found) - len(torch_found)) <= 1  # a score at the threshold
    for found in onnx_found[:50]:
        assert any(
            d["image_id"] == found["image_id"]
            and d["category_id"] == found["category_id"]
            and abs(d["score"] - found["score"]) <= 1e-3
            and max(abs(a - b) for a, b in zip(d["bbox"], found["bbox"])) <= 1
            for d in torch_found
        )

    train_net = load_tool()
    args = ["--eval-only", "--onnx", str(exported), *datasets]
    with pytest.raises(ValueError, match="min_size_test 192, the config's test loader 256"):
        train_net.setup(train_net.parse_args([*args, "INPUT.MIN_SIZE_TEST", "256"]))
    with pytest.raises(ValueError, match="--onnx evaluates an exported model: add --eval-only"):
        train_net.setup(train_net.parse_args(args[1:]))


def load_tool():
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dataset_argument():
    train_net = load_tool()
    assert train_net.dataset_spec("docs=a/train.json:a/images") == ("docs", "a/train.json", "a/images", None)
    assert train_net.dataset_spec("docs=t.json:img:ocr") == ("docs", "t.json", "img", "ocr")
    args = train_net.parse_args(["--dataset", "a=1.json:i", "--dataset", "b=2.json:j:o", "SOLVER.MAX_ITER", "5"])
    assert args.dataset == [("a", "1.json", "i", None), ("b", "2.json", "j", "o")]
    assert args.opts == ["SOLVER.MAX_ITER", "5"]
    for bad in ("docs", "docs=only.json", "=t.json:img", "docs=t.json:img:ocr:extra"):
        with pytest.raises(SystemExit):
            train_net.parse_args(["--dataset", bad])


def test_eval_only_checks_the_test_datasets_only(data):
    root, datasets, opts = data
    train_net = load_tool()
    val = ["--dataset", f"eval_only_val={root}/val.json:{root}/val/images"]
    val += ["--dataset", f"gone_train={root}/gone.json:{root}/val/images"]
    # gone_train's json is not there: training needs it, evaluation does not.
    overrides = [*map(str, opts), "DATASETS.TRAIN", '("gone_train",)', "DATASETS.TEST", '("eval_only_val",)']
    with pytest.raises(KeyError, match="gone_train.*gone.json does not exist"):
        train_net.setup(train_net.parse_args(["--config-file", TINY_TEXT_CONFIG, *val, *overrides]))
    args = ["--config-file", TINY_TEXT_CONFIG, "--eval-only", *val, *overrides, "MODEL.WEIGHTS", "model.pth"]
    assert train_net.setup(train_net.parse_args(args)).DATASETS.TEST == ("eval_only_val",)


def test_missing_ocr_folder_is_a_clear_error_unless_pages_may_lack_ocr(data):
    root, datasets, opts = data
    train_net = load_tool()
    spec = ["--dataset", f"no_ocr={root}/val.json:{root}/val/images:{root}/val/no_ocr"]
    args = ["--config-file", TINY_TEXT_CONFIG, *spec, *map(str, opts), "DATASETS.TRAIN", '("no_ocr",)']
    args += ["DATASETS.TEST", "()"]
    with pytest.raises(KeyError) as error:
        train_net.setup(train_net.parse_args(args))
    assert f"its OCR folder {root}/val/no_ocr does not exist" in str(error.value)
    assert "INPUT.OCR.MISSING empty" in str(error.value) and "Registered datasets" not in str(error.value)
    for extra in (["INPUT.OCR.MISSING", "empty"], ["MODEL.IMAGE_ONLY", "True"]):
        assert train_net.setup(train_net.parse_args(args + extra)).DATASETS.TRAIN == ("no_ocr",)


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH must be >= 1, got 0"),
        (
            ["SOLVER.IMS_PER_BATCH", "3"],
            "SOLVER.IMS_PER_BATCH (3), the images of one optimizer step, must be divisible",
        ),
        (["SOLVER.GRADIENT_ACCUMULATION_STEPS", "0"], "SOLVER.GRADIENT_ACCUMULATION_STEPS must be >= 1, got 0"),
        (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD must be >= 1, got 0"),
        (["SOLVER.MAX_ITER", "-5", "TEST.EVAL_PERIOD", "-1"], "MAX_ITER must be >= 0, got -5; TEST.EVAL_PERIOD must"),
        (["SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR must be a finite number >= 0, got -0.1"),
    ],
)
def test_solver_values_are_checked_before_anything_is_built(data, opts, message, monkeypatch):
    root, datasets, overrides = data
    train_net = load_tool()
    # Nothing is read or built: not even the datasets.
    monkeypatch.setattr(train_net, "check_datasets", None)
    options = ["--config-file", TINY_TEXT_CONFIG, "--num-gpus", "2", *datasets]
    with pytest.raises(ValueError) as error:
        train_net.setup(train_net.parse_args([*options, *map(str, overrides), *opts]))
    assert message in str(error.value)
    # --eval-only does not train: the solver does not matter.
    monkeypatch.undo()
    args = [*options, "--eval-only", *map(str, overrides), *opts, "MODEL.WEIGHTS", "model.pth"]
    assert train_net.setup(train_net.parse_args(args)).DATASETS.TEST == ("pages_val",)


@pytest.mark.parametrize("eval_only", [False, True], ids=["train", "eval-only"])
def test_num_classes_is_checked_against_the_datasets(data, eval_only):
    root, datasets, opts = data
    train_net = load_tool()
    args = ["--config-file", TINY_TEXT_CONFIG, *(["--eval-only"] if eval_only else []), *datasets, *map(str, opts)]
    args += ["MODEL.WEIGHTS", "model.pth", "MODEL.ROI_HEADS.NUM_CLASSES", "5"]
    with pytest.raises(ValueError, match="NUM_CLASSES is 5, but dataset 'pages_.*' .* has 10 classes .*CLASSES 10$"):
        train_net.setup(train_net.parse_args(args))


@pytest.mark.slow
def test_a_json_that_is_not_coco_is_a_one_line_error(data, tmp_path):
    root, datasets, opts = data
    (tmp_path / "pages.json").write_text('[{"file_name": "a.png"}]')
    result = run_train_net(
        "--config-file",
        TINY_TEXT_CONFIG,
        "--dataset",
        f"listed={tmp_path}/pages.json:{root}/train/images:{root}/train/ocr",
        *opts,
        "DATASETS.TRAIN",
        '("listed",)',
        "DATASETS.TEST",
        "()",
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f'train_net.py: error: {tmp_path}/pages.json: must be a COCO object with "images", "annotations" and '
        '"categories", got a list'
    )


@pytest.mark.slow
def test_unknown_dataset_or_missing_json_is_a_clear_error(data):
    root, datasets, opts = data
    result = run_train_net(
        "--config-file",
        TINY_TEXT_CONFIG,
        *datasets,
        "--dataset",
        f"pages_gone={root}/gone.json:{root}",
        *opts,
        "DATASETS.TEST",
        '("pages_test", "pages_gone")',
        cwd=root,
    )
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert "DATASETS.TEST names 'pages_test', which is not registered" in error
    assert f"{root}/gone.json does not exist" in error
    assert "pages_train" in error and "pages_val" in error and "publaynet_train" in error
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.MAX_ITERS", "3"], "config override: Non-existent key: SOLVER.MAX_ITERS"),
        (["SOLVER.MAX_ITER", "3", "--resume"], "--resume comes after the KEY VALUE config overrides"),
        (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH must be >= 1, got 0"),
    ],
)
def test_config_mistakes_are_one_line_errors(opts, message, tmp_path):
    result = run_train_net("--config-file", TINY_TEXT_CONFIG, *opts, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("train_net.py: error: ")
    assert message in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode",
    [
        # Text fusion on, two micro-batches per step (DDP no_sync on the first).
        ["SOLVER.IMS_PER_BATCH", 4, "SOLVER.GRADIENT_ACCUMULATION_STEPS", 2],
        ["MODEL.IMAGE_ONLY", True],
    ],
    ids=["text-accumulation", "image-only"],
)
def test_two_cpu_processes(data, mode, tmp_path):
    root, datasets, opts = data
    # Two iterations: DDP reports parameters without gradient at the step after.
    # No OMP_NUM_THREADS: train_net.py shares the cores between the processes.
    check(
        run_train_net(
            "--config-file",
            TINY_TEXT_CONFIG,
            "--num-gpus",
            2,
            "--dist-url",
            "auto",
            *datasets,
            *opts,
            "DATASETS.TEST",
            "()",
            "SOLVER.MAX_ITER",
            2,
            "OUTPUT_DIR",
            tmp_path,
            *mode,
            cwd=root,
            one_thread=False,
        )
    )
    log = (tmp_path / "log.txt").read_text()
    assert "World size: 2" in log
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    # A ditod message: ditod's logger writes to the run's log too.
    assert f"2 CPU processes on this machine: {threads} torch thread(s) each" in log
    last = json.loads((tmp_path / "metrics.json").read_text().splitlines()[-1])
    assert last["iteration"] == 1 and last["total_loss"] > 0
    model = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert any("text_fusion" in key for key in model) == ("MODEL.IMAGE_ONLY" not in mode)


def huggingface_layoutlmv3(data):
    """A LayoutLMv3 of the tiny config's size saved as the hub's pytorch_model.bin files
    are (keys with the "layoutlmv3." prefix), with distinctive weights; and its weights."""
    root, _, _ = data
    model = tiny_layoutlmv3(vocab_size=len(load_tokenizer(str(root / "tokenizer"))))
    (root / "layoutlmv3-tiny").mkdir(exist_ok=True)
    path = root / "layoutlmv3-tiny" / "pytorch_model.bin"
    torch.save({f"layoutlmv3.{k}": v for k, v in model.state_dict().items()}, path)
    return path, model.state_dict()


QUERY = "encoder.layer.1.attention.self.query.weight"


def test_training_loads_huggingface_weights_into_the_transformer(data):
    """What the trainer does with MODEL.WEIGHTS at the start of training, on the model
    and config of the research notes' command."""
    root, datasets, opts = data
    path, weights = huggingface_layoutlmv3(data)
    tool = load_tool()
    cfg = tool.setup(
        tool.parse_args(["--config-file", TINY_TEXT_CONFIG, *datasets, *map(str, opts), "MODEL.WEIGHTS", str(path)])
    )
    model = VLTrainer.build_model(cfg)
    parameter = model.backbone.bottom_up.layoutlmv3.get_parameter(QUERY)
    before = parameter.detach().clone()
    VLDetectionCheckpointer(model, training=True).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    assert not torch.allclose(before, weights[QUERY])
    assert torch.equal(parameter.detach(), weights[QUERY])


@pytest.mark.slow
def test_research_notes_command_trains_from_huggingface_weights(data):
    """`train_net.py --config-file ... MODEL.WEIGHTS /path/layoutlmv3-base/pytorch_model.bin
    OUTPUT_DIR ...`, the command of the original recipe, with a small saved model."""
    root, datasets, opts = data
    path, weights = huggingface_layoutlmv3(data)
    output = root / "from_huggingface"
    arguments = ["--config-file", TINY_TEXT_CONFIG, *datasets, *opts, "MODEL.WEIGHTS", path, "OUTPUT_DIR", output]
    check(run_train_net(*arguments, "SOLVER.MAX_ITER", 2, cwd=root))
    log = (output / "log.txt").read_text()
    assert f"Weights from {path} (Hugging Face LayoutLMv3 weights): loaded {len(weights)} of the model's" in log
    trained = torch.load(output / "model_final.pth", weights_only=True)["model"]
    # Two warm-up steps of AdamW move a weight by far less than the 0.2 between random inits.
    step = (trained[f"backbone.bottom_up.layoutlmv3.{QUERY}"] - weights[QUERY]).abs().max()
    assert 0 < step < 1e-2
