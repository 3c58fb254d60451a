#!/usr/bin/env python
"""
The experiment that shows the text matters (`make bench-text`).

    python tools/bench_text.py [--iters 1300] [--runs image_only text_gated_all ...] [--seeds 0]

Synthetic pages in --hard-text mode, where Figure caption, Table caption, Text and
Reference share font, size and placement (only the words tell them apart), train the
tiny model with the same generator seed, architecture, iterations and learning rate in
several configurations:

  image_only          MODEL.IMAGE_ONLY True (no tokens, no fusion)
  text_gated_all      text, gated fusion on all four levels (the tiny config: the gate
                      starts at 0.5, GATE_BIAS_INIT 0)
  text_gated_all_g3   the same with the gate starting at 0.95 (GATE_BIAS_INIT 3, the
                      library default, which keeps a pretrained backbone's features)
  text_gated_last_g3  gated fusion on the last level only, gate starting at 0.95 (to
                      compare with text_gated_all_g3)
  text_add_all        text, additive fusion on all four levels
  text_no_fusion      text in the transformer only (MODEL.TEXT_FUSION.MODE none)

Each run is tools/train_net.py then tools/train_net.py --eval-only on the validation
pages. The pages, the tokenizer and each run are kept under --out and reused by a later
call with the same settings (pages, seeds, iterations, overrides); other settings make
them again. Results: bench/results/text_experiment.json and .md (overall COCO bbox AP,
per-class AP, and the mean AP of the text-dependent classes).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from demo import tokenizer_command

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny" / "cascade_layoutlmv3_text.yaml"
TEXT_DEPENDENT = ("Figure caption", "Table caption", "Reference")
LAST_LEVEL = "layer3"  # the tiny model's last tapped layer (stride 32)
RUNS = {
    "image_only": ["MODEL.IMAGE_ONLY", True],
    "text_gated_all": [],
    "text_gated_all_g3": ["MODEL.TEXT_FUSION.GATE_BIAS_INIT", 3.0],
    "text_gated_last_g3": ["MODEL.TEXT_FUSION.LEVELS", f"['{LAST_LEVEL}']", "MODEL.TEXT_FUSION.GATE_BIAS_INIT", 3.0],
    "text_add_all": ["MODEL.TEXT_FUSION.MODE", "add"],
    "text_no_fusion": ["MODEL.TEXT_FUSION.MODE", "none"],
}


def run(command, env, log_file):
    with open(log_file, "w") as log:
        subprocess.run([str(c) for c in command], check=True, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def data_settings(args):
    return {"train_pages": args.train_pages, "val_pages": args.val_pages, "data_seed": args.data_seed}


def made_with(folder, settings):
    """Whether `folder` holds an output made with `settings` (see `record_settings`)."""
    path = folder / "bench_settings.json"
    return path.exists() and json.loads(path.read_text()) == settings


def record_settings(folder, settings):
    (folder / "bench_settings.json").write_text(json.dumps(settings))


def prepare_data(out, args, env):
    synthetic = out / "datasets" / "synthetic"
    tokenizer = out / "tokenizer"
    if not made_with(out, data_settings(args)):
        run(
            [
                sys.executable,
                "tools/make_synthetic.py",
                "--out",
                synthetic,
                "--hard-text",
                "--seed",
                args.data_seed,
                "--workers",
                2,
                "--splits",
                f"train:{args.train_pages}",
                f"val:{args.val_pages}",
            ],
            env,
            out / "make_synthetic.log",
        )
        run(
            tokenizer_command(synthetic, tokenizer),
            env,
            out / "train_tokenizer.log",
        )
        record_settings(out, data_settings(args))
    return tokenizer


def train_and_evaluate(name, seed, out, tokenizer, args, env):
    """COCO metrics of one run and its training seconds (kept next to the run, so a
    cached run reports them too)."""
    run_dir = out / "runs" / f"{name}_seed{seed}"
    metrics_file = run_dir / "inference" / "synthetic_val" / "metrics.json"
    seconds_file = run_dir / "train_seconds.txt"
    settings = {**data_settings(args), "iters": args.iters, "overrides": [str(v) for v in RUNS[name]]}
    if metrics_file.exists() and made_with(run_dir, settings) and not args.overwrite:
        seconds = float(seconds_file.read_text()) if seconds_file.exists() else None
        return json.loads(metrics_file.read_text()), seconds
    # A fresh folder: detectron2 appends to an existing metrics.json.
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        "MODEL.VIT.TOKENIZER",
        tokenizer,
        "OUTPUT_DIR",
        run_dir,
        "SEED",
        seed,
        "SOLVER.MAX_ITER",
        args.iters,
        *RUNS[name],
    ]
    start = time.perf_counter()
    run(
        [sys.executable, "tools/train_net.py", "--config-file", CONFIG, *overrides],
        env,
        out / f"{name}_seed{seed}.train.log",
    )
    seconds = time.perf_counter() - start
    seconds_file.write_text(f"{seconds:.1f}")
    run(
        [
            sys.executable,
            "tools/train_net.py",
            "--config-file",
            CONFIG,
            "--eval-only",
            *overrides,
            "MODEL.WEIGHTS",
            run_dir / "model_final.pth",
        ],
        env,
        out / f"{name}_seed{seed}.eval.log",
    )
    record_settings(run_dir, settings)
    return json.loads(metrics_file.read_text()), seconds


def mean(values):
    """Mean of the values COCO could compute (None: a class without validation instances)."""
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def fmt(value):
    return "-" if value is None else f"{value:.1f}"


def summarize(metrics):
    per_class = metrics["per_class_AP"]
    return {
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "text_dependent_AP": mean(per_class[c] for c in TEXT_DEPENDENT),
        "per_class_AP": per_class,
    }


def markdown(report):
    runs = report["runs"]
    classes = list(next(iter(runs.values()))["mean"]["per_class_AP"])
    lines = [
        "# Does the text matter? Image-only vs text fusion on hard-text synthetic pages",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Data: {report['train_pages']} training / {report['val_pages']} validation pages of "
        f"`tools/make_synthetic.py --hard-text --seed {report['data_seed']}` (Figure caption, Table caption, Text "
        "and Reference share font, size and placement). Model: configs/tiny/cascade_layoutlmv3_text.yaml "
        f"(hidden 96, 4 layers, from scratch), {report['iters']} iterations of batch 2 at the same learning "
        f"rate for every run; seeds {report['seeds']} (mean over seeds). COCO bbox AP on the validation pages.",
        "",
        "| run | AP | AP50 | AP75 | text-dependent AP | " + " | ".join(TEXT_DEPENDENT) + " | train min |",
        "|---|---|---|---|---|" + "---|" * len(TEXT_DEPENDENT) + "---|",
    ]
    for name, entry in runs.items():
        m = entry["mean"]
        minutes = entry.get("train_minutes")
        lines.append(
            f"| {name} | {fmt(m['AP'])} | {fmt(m['AP50'])} | {fmt(m['AP75'])} | **{fmt(m['text_dependent_AP'])}** | "
            + " | ".join(fmt(m["per_class_AP"][c]) for c in TEXT_DEPENDENT)
            + f" | {fmt(minutes)} |"
        )
    lines += ["", "Overrides of the tiny config per run:", ""]
    lines += [f"- {name}: `{' '.join(str(v) for v in RUNS[name]) or '(none)'}`" for name in runs]
    lines += ["", "Per-class AP:", "", "| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, entry in runs.items():
        lines.append(f"| {name} | " + " | ".join(fmt(entry["mean"]["per_class_AP"][c]) for c in classes) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--iters", type=int, default=1300)
    parser.add_argument("--train-pages", type=int, default=400)
    parser.add_argument("--val-pages", type=int, default=100)
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (results averaged)")
    parser.add_argument("--out", type=Path, default=REPO / "output" / "bench_text")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--overwrite", action="store_true", help="retrain runs that already have metrics")
    args = parser.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DETECTRON2_DATASETS=str(out / "datasets"))
    tokenizer = prepare_data(out, args, env)
    report = {
        "command": "python tools/bench_text.py " + " ".join(sys.argv[1:]),
        "iters": args.iters,
        "train_pages": args.train_pages,
        "val_pages": args.val_pages,
        "data_seed": args.data_seed,
        "seeds": args.seeds,
        "text_dependent_classes": list(TEXT_DEPENDENT),
        "runs": {},
    }
    for name in args.runs:
        per_seed, minutes = [], []
        for seed in args.seeds:
            print(f"[bench-text] {name} seed {seed} ...", flush=True)
            metrics, seconds = train_and_evaluate(name, seed, out, tokenizer, args, env)
            per_seed.append(summarize(metrics))
            if seconds is not None:
                minutes.append(seconds / 60)
            print(
                f"[bench-text] {name} seed {seed}: AP {fmt(per_seed[-1]['AP'])}, "
                f"text-dependent AP {fmt(per_seed[-1]['text_dependent_AP'])}",
                flush=True,
            )
        means = {key: mean(s[key] for s in per_seed) for key in ("AP", "AP50", "AP75", "text_dependent_AP")}
        means["per_class_AP"] = {c: mean(s["per_class_AP"][c] for s in per_seed) for c in per_seed[0]["per_class_AP"]}
        report["runs"][name] = {"mean": means, "per_seed": per_seed, "train_minutes": mean(minutes)}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "text_experiment.json").write_text(json.dumps(report, indent=2))
    (args.results / "text_experiment.md").write_text(markdown(report))
    print(markdown(report))
    print(f"written: {args.results / 'text_experiment.json'}, {args.results / 'text_experiment.md'}")


if __name__ == "__main__":
    main()
