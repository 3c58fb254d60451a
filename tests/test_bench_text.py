"""tools/bench_text.py's bookkeeping: results of small validation sets and cached runs."""

import importlib
import json
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
    row = next(line for line in bench_text.markdown(report).splitlines() if line.startswith("| image_only | 3 |"))
    assert row == "| image_only | 3 | 0 | 40.0 | 60.0 | 35.0 | **20.0** | 30.0 | - | 10.0 | - | - |"


def test_cached_outputs_are_reused_only_with_the_same_settings(tmp_path):
    settings = {"train_pages": 4, "val_pages": 2, "data_seed": 1, "iters": 3, "overrides": []}
    assert not bench_text.made_with(tmp_path, settings)
    bench_text.record_settings(tmp_path, settings)
    assert bench_text.made_with(tmp_path, settings)
    assert not bench_text.made_with(tmp_path, {**settings, "iters": 8})


def test_runs_with_more_seeds_and_a_longer_budget():
    parser_args = ["--runs", "image_only", "text_vsr_all", "--seeds", "0", "--more-seeds", "text_vsr_all", "1", "2"]
    parser_args += ["--long", "image_only", "--long-factor", "3", "--iters", "10"]
    args = bench_text.build_parser().parse_args(parser_args)
    assert bench_text.planned_runs(args) == [
        ("image_only", "image_only", 10, [0]),
        ("text_vsr_all", "text_vsr_all", 10, [0, 1, 2]),
        ("image_only_x3", "image_only", 30, [0]),
    ]
    only_long = bench_text.build_parser().parse_args(["--runs", "--long", "text_gated_all", "--iters", "10"])
    assert bench_text.planned_runs(only_long) == [("text_gated_all_x3", "text_gated_all", 30, [0])]


def test_text_dependent_gap_per_budget_takes_the_best_text_run():
    def entry(run, iters, ap):
        return {"run": run, "iters": iters, "mean": {"text_dependent_AP": ap}}

    runs = {
        "image_only": entry("image_only", 10, 20.0),
        "text_gated_all": entry("text_gated_all", 10, 60.0),
        "text_vsr_all": entry("text_vsr_all", 10, 65.0),
        "image_only_x3": entry("image_only", 30, 40.0),
        "text_gated_all_x3": entry("text_gated_all", 30, 70.0),
    }
    gaps = bench_text.text_dependent_gaps(runs)
    assert [(g["iters"], g["best_text_run"], g["gap"]) for g in gaps] == [
        (10, "text_vsr_all", 45.0),
        (30, "text_gated_all_x3", 30.0),
    ]


def test_runs_of_an_earlier_call_on_the_same_pages_are_kept_in_order(tmp_path):
    def entry(run, iters, ap, date):
        return {"run": run, "iters": iters, "seeds": [0], "mean": {"AP": ap}, "date": date}

    settings = {"train_pages": 4, "val_pages": 2, "data_seed": 1}
    earlier = {
        **settings,
        "iters": 10,
        "seeds": [0],
        # A run of the first results files, which had no run, iters, seeds or date.
        "runs": {"image_only": {"mean": {"AP": 20.0}}, "text_gated_all": entry("text_gated_all", 10, 50.0, "d1")},
    }
    results = tmp_path / "text_experiment.json"
    results.write_text(json.dumps(earlier))
    report = {**settings, "runs": {"text_gated_all": entry("text_gated_all", 10, 55.0, "d2")}}
    report["runs"]["image_only_x3"] = entry("image_only", 30, 30.0, "d2")
    report["runs"]["text_vsr_all"] = entry("text_vsr_all", 10, 60.0, "d2")
    bench_text.keep_earlier_runs(report, results)
    assert list(report["runs"]) == ["image_only", "text_gated_all", "text_vsr_all", "image_only_x3"]
    assert report["runs"]["image_only"] == {"run": "image_only", "iters": 10, "seeds": [0], "mean": {"AP": 20.0}}
    assert report["runs"]["text_gated_all"]["mean"]["AP"] == 55.0  # this call's run replaces the earlier one

    other_pages = {**settings, "val_pages": 3, "runs": {"text_vsr_all": entry("text_vsr_all", 10, 60.0, "d2")}}
    bench_text.keep_earlier_runs(other_pages, results)
    assert list(other_pages["runs"]) == ["text_vsr_all"]
