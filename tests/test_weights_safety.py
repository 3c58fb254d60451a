"""No weights file runs code, whatever its suffix: crafted files through the checkpointer
that train_net.py, infer.py and library code load with, and through the tools themselves."""

import builtins
import importlib.util
import json
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, TINY_TEXT_CONFIG
from ditod.engine.checkpoint import VLDetectionCheckpointer, WeightsError

SUFFIXES = [".pkl", ".pth", ".pt", ".bin", ""]


class WritesMarker:
    """Unpickling this would write `path` (what a malicious weights file would do, and worse)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.exec, (f"open({self.path!r}, 'w').write('the file ran code')",)


def crafted_file(folder, suffix, form):
    """A weights file that runs code when unpickled: a plain pickle ("pickle") or a torch.save
    zip archive ("torch") whose weights hold the payload."""
    marker = folder / f"marker_{form}{suffix}"
    path = folder / f"weights_{form}{suffix}"
    payload = {"model": {"weight": WritesMarker(marker)}, "__author__": "someone"}
    if form == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    return path, marker


@pytest.mark.parametrize("form", ["pickle", "torch"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_crafted_files_run_nothing_and_the_error_names_them(tmp_path, suffix, form):
    path, marker = crafted_file(tmp_path, suffix, form)
    with pytest.raises(WeightsError, match=str(path)):
        VLDetectionCheckpointer(torch.nn.Linear(2, 3)).load(str(path))
    assert not marker.exists(), "the weights file ran code"


def test_the_model_zoo_unpickler_refuses_anything_but_containers_and_arrays(tmp_path):
    path = tmp_path / "model.pkl"
    # A global that is harmless but not a container or an array is refused as well.
    path.write_bytes(pickle.dumps({"model": {"weight": np.zeros(2)}, "__author__": os.getcwd, "x": set()}))
    with pytest.raises(WeightsError, match=r"model.pkl: .*posix.getcwd"):
        VLDetectionCheckpointer(torch.nn.Linear(2, 3)).load(str(path))


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_infer_stops_at_a_crafted_weights_file(tmp_path, monkeypatch):
    for name in ("ditod", "detectron2"):  # the tool sets up these loggers: put them back afterwards
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", list(logger.handlers))
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "level", logger.level)
    path, marker = crafted_file(tmp_path, ".pkl", "pickle")
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "page.png")
    arguments = ["--config-file", TINY_TEXT_CONFIG, "--weights", str(path), "--input", str(tmp_path / "page.png")]
    arguments += ["--output", str(tmp_path / "out"), "--device", "cpu", "--opts", "MODEL.IMAGE_ONLY", "True"]
    with pytest.raises(WeightsError, match=str(path)):
        load_tool("infer").main(arguments)
    assert not marker.exists(), "the weights file ran code"


@pytest.mark.slow
def test_train_net_eval_only_stops_at_a_crafted_weights_file(tmp_path):
    path, marker = crafted_file(tmp_path, ".pth", "torch")
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "images" / "page.png")
    coco = {
        "images": [{"id": 1, "file_name": "page.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9], "area": 81, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "text"}],
    }
    (tmp_path / "val.json").write_text(json.dumps(coco))
    command = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY_TEXT_CONFIG]
    command += ["--eval-only", "--dataset", f"val={tmp_path}/val.json:{tmp_path}/images", "DATASETS.TEST", '("val",)']
    command += ["MODEL.IMAGE_ONLY", "True", "MODEL.ROI_HEADS.NUM_CLASSES", "1"]
    command += ["MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "out")]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert f"train_net.py: error: {path}: cannot be read as a PyTorch checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the weights file ran code"
