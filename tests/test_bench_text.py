"""tools/bench_text.py's bookkeeping: results of small validation sets and cached runs."""

import importlib
import os
import sys

from conftest import REPO

# The tools import each other by name, as they do when run from tools/.
sys.path.insert(0, os.path.join(REPO, "tools"))
bench_text = importlib.import_module("bench_text")


def test_a_class_without_validation_instances_is_left_out_of_the_means():
    per_class = {"Text": 50.0, "Figure caption": 30.0, "Table caption": None, "Reference": 10.0}
    summary = bench_text.summarize({"AP": 40.0, "AP50": 60.0, "AP75": 35.0, "per_class_AP": per_class})
    assert summary["text_dependent_AP"] == 20.0
    assert bench_text.mean([None, None]) is None
    report = {
        "command": "python tools/bench_text.py",
        "iters": 3,
        "train_pages": 4,
        "val_pages": 2,
        "data_seed": 1,
        "seeds": [0],
        "runs": {"image_only": {"mean": summary, "per_seed": [summary], "train_minutes": None}},
    }
    row = next(line for line in bench_text.markdown(report).splitlines() if line.startswith("| image_only | 40.0"))
    assert row == "| image_only | 40.0 | 60.0 | 35.0 | **20.0** | 30.0 | - | 10.0 | - |"


def test_cached_outputs_are_reused_only_with_the_same_settings(tmp_path):
    settings = {"train_pages": 4, "val_pages": 2, "data_seed": 1, "iters": 3, "overrides": []}
    assert not bench_text.made_with(tmp_path, settings)
    bench_text.record_settings(tmp_path, settings)
    assert bench_text.made_with(tmp_path, settings)
    assert not bench_text.made_with(tmp_path, {**settings, "iters": 8})
