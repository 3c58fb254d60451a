#!/usr/bin/env python
"""
The experiment that shows the text matters (`make bench-text`).

    python tools/bench_text.py [--iters 1300] [--runs image_only text_gated_all ...] [--seeds 0]
        [--more-seeds text_gated_all 1] [--long image_only text_gated_all] [--long-factor 3]

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
  text_vsr_all        text, VSR's weighted fusion on all four levels (its gate bias
                      starting at 0, as VSR's)
  text_m2doc_all      text, M2Doc's early fusion on all four levels
  text_no_fusion      text in the transformer only (MODEL.TEXT_FUSION.MODE none)

`--runs --long RUN...` (no names after --runs) trains only the long runs.
--seeds are the training seeds of every run (results averaged over them); --more-seeds
RUN SEED... adds seeds to one run (repeatable). --long RUN... also trains those runs at
--long-factor times the iterations (the learning-rate schedule stretched with them),
reported as RUN_xFACTOR: an image-only model may only converge more slowly, so the
report gives the text-dependent gap (best text run less image-only) at each budget.

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

import children
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
    "text_vsr_all": ["MODEL.TEXT_FUSION.MODE", "vsr"],
    "text_m2doc_all": ["MODEL.TEXT_FUSION.MODE", "m2doc"],
    "text_no_fusion": ["MODEL.TEXT_FUSION.MODE", "none"],
}


def run(command, env, log_file):
    with open(log_file, "w") as log:
        children.run(command, check=True, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


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


def train_and_evaluate(name, iters, key, seed, out, tokenizer, args, env):
    """COCO metrics of run `name` trained `iters` iterations (reported as `key`) and its
    training seconds (kept next to the run, so a cached run reports them too)."""
    run_dir = out / "runs" / f"{key}_seed{seed}"
    metrics_file = run_dir / "inference" / "synthetic_val" / "metrics.json"
    seconds_file = run_dir / "train_seconds.txt"
    settings = {**data_settings(args), "iters": iters, "overrides": [str(v) for v in RUNS[name]]}
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
        iters,
        *RUNS[name],
    ]
    start = time.perf_counter()
    run(
        [sys.executable, "tools/train_net.py", "--config-file", CONFIG, *overrides],
        env,
        out / f"{key}_seed{seed}.train.log",
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
        out / f"{key}_seed{seed}.eval.log",
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


def planned_runs(args):
    """(key, run name, iterations, seeds) of every run of the invocation, in order."""
    more = {}
    for name, *seeds in args.more_seeds or []:
        if name not in RUNS:
            raise SystemExit(f"--more-seeds: unknown run {name!r} (runs: {', '.join(RUNS)})")
        more.setdefault(name, []).extend(int(seed) for seed in seeds)
    plans = []
    for name in args.runs:
        seeds = list(dict.fromkeys(args.seeds + more.get(name, [])))
        plans.append((name, name, args.iters, seeds))
    for name in args.long or []:
        seeds = list(dict.fromkeys(args.seeds + more.get(name, [])))
        plans.append((f"{name}_x{args.long_factor}", name, args.iters * args.long_factor, seeds))
    return plans


def keep_earlier_runs(report, results_file):
    """Adds to `report` the runs of the earlier results in `results_file` that this call did
    not run, when they were made on the same pages (each keeps its date), so that runs
    added later (a new fusion module, another seed) are read next to the earlier ones.
    Runs are ordered by budget, then as in RUNS."""
    if results_file.exists():
        earlier = json.loads(results_file.read_text())
        settings = ("train_pages", "val_pages", "data_seed")
        if all(earlier.get(key) == report[key] for key in settings):
            for key, entry in earlier["runs"].items():
                defaults = {"run": key, "iters": earlier["iters"], "seeds": earlier["seeds"]}
                report["runs"].setdefault(key, {**defaults, **entry})
        else:
            print(f"[bench-text] {results_file}: made on other pages, its runs are not kept", flush=True)
    order = list(RUNS)
    report["runs"] = dict(
        sorted(report["runs"].items(), key=lambda item: (item[1]["iters"], order.index(item[1]["run"]), item[0]))
    )


def text_dependent_gaps(runs):
    """Per budget (iterations) with an image-only run: the best text run's text-dependent
    AP less image-only's."""
    gaps = []
    for iters in sorted({entry["iters"] for entry in runs.values()}):
        at_budget = {key: entry for key, entry in runs.items() if entry["iters"] == iters}
        image = next((entry for entry in at_budget.values() if entry["run"] == "image_only"), None)
        text = [
            (entry["mean"]["text_dependent_AP"], key)
            for key, entry in at_budget.items()
            if entry["run"] != "image_only" and entry["mean"]["text_dependent_AP"] is not None
        ]
        if image is None or image["mean"]["text_dependent_AP"] is None or not text:
            continue
        best, key = max(text)
        image_ap = image["mean"]["text_dependent_AP"]
        gaps.append(
            {"iters": iters, "best_text_run": key, "text": best, "image_only": image_ap, "gap": best - image_ap}
        )
    return gaps


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
        "rate for every run (runs named _xN: N times as many, the cosine schedule stretched with them); "
        "the mean over each run's seeds. COCO bbox AP on the validation pages. Runs of earlier calls "
        "on the same pages are kept (their date; training minutes depend on the machine's load "
        "that day, and AP moves by a few points with rounding, e.g. the number of threads).",
        "",
        "| run | iters | seeds | AP | AP50 | AP75 | text-dependent AP | "
        + " | ".join(TEXT_DEPENDENT)
        + " | train min | date |",
        "|---|---|---|---|---|---|---|" + "---|" * len(TEXT_DEPENDENT) + "---|---|",
    ]
    for key, entry in runs.items():
        m = entry["mean"]
        minutes = entry.get("train_minutes")
        seeds = ", ".join(str(seed) for seed in entry.get("seeds", report["seeds"]))
        lines.append(
            f"| {key} | {entry.get('iters', report['iters'])} | {seeds} | {fmt(m['AP'])} | {fmt(m['AP50'])} "
            f"| {fmt(m['AP75'])} | **{fmt(m['text_dependent_AP'])}** | "
            + " | ".join(fmt(m["per_class_AP"][c]) for c in TEXT_DEPENDENT)
            + f" | {fmt(minutes)} | {entry.get('date', '-')} |"
        )
    several = {key: entry for key, entry in runs.items() if len(entry.get("per_seed", [])) > 1}
    if several:
        lines += ["", "Text-dependent AP per seed:", ""]
        for key, entry in several.items():
            values = zip(entry["seeds"], entry["per_seed"])
            lines.append(f"- {key}: " + ", ".join(f"seed {seed} {fmt(s['text_dependent_AP'])}" for seed, s in values))
    gaps = report.get("text_dependent_gaps", [])
    if gaps:
        lines += ["", "Text-dependent gap (best text run less image-only, text-dependent AP) per budget:", ""]
        lines += [
            f"- {gap['iters']} iterations: {gap['best_text_run']} {fmt(gap['text'])} - image_only "
            f"{fmt(gap['image_only'])} = **{fmt(gap['gap'])}**"
            for gap in gaps
        ]
    lines += ["", "Overrides of the tiny config per run:", ""]
    lines += [
        f"- {key}: `{' '.join(str(v) for v in RUNS[entry.get('run', key)]) or '(none)'}`" for key, entry in runs.items()
    ]
    lines += ["", "Per-class AP:", "", "| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, entry in runs.items():
        lines.append(f"| {name} | " + " | ".join(fmt(entry["mean"]["per_class_AP"][c]) for c in classes) + " |")
    return "\n".join(lines) + "\n"


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs",
        nargs="*",
        choices=list(RUNS),
        default=list(RUNS),
        help="runs at --iters (default: all; none with --long: only the long runs, the earlier results kept)",
    )
    parser.add_argument("--iters", type=int, default=1300)
    parser.add_argument("--train-pages", type=int, default=400)
    parser.add_argument("--val-pages", type=int, default=100)
    parser.add_argument("--data-seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every run (averaged)")
    parser.add_argument(
        "--more-seeds",
        nargs="+",
        action="append",
        metavar="RUN SEED",
        help="more training seeds for one run: RUN SEED [SEED ...] (repeatable)",
    )
    parser.add_argument("--long", nargs="+", choices=list(RUNS), help="runs also trained at --long-factor x --iters")
    parser.add_argument("--long-factor", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "output" / "bench_text")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--overwrite", action="store_true", help="retrain runs that already have metrics")
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    plans = planned_runs(args)
    if not plans:
        parser.error("no runs: give --runs RUN... or --long RUN...")

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
    for key, name, iters, seeds in plans:
        per_seed, minutes = [], []
        for seed in seeds:
            print(f"[bench-text] {key} seed {seed} ({iters} iterations) ...", flush=True)
            metrics, seconds = train_and_evaluate(name, iters, key, seed, out, tokenizer, args, env)
            per_seed.append(summarize(metrics))
            if seconds is not None:
                minutes.append(seconds / 60)
            print(
                f"[bench-text] {key} seed {seed}: AP {fmt(per_seed[-1]['AP'])}, "
                f"text-dependent AP {fmt(per_seed[-1]['text_dependent_AP'])}",
                flush=True,
            )
        means = {k: mean(s[k] for s in per_seed) for k in ("AP", "AP50", "AP75", "text_dependent_AP")}
        means["per_class_AP"] = {c: mean(s["per_class_AP"][c] for s in per_seed) for c in per_seed[0]["per_class_AP"]}
        report["runs"][key] = {
            "run": name,
            "iters": iters,
            "seeds": seeds,
            "mean": means,
            "per_seed": per_seed,
            "train_minutes": mean(minutes),
            "date": time.strftime("%Y-%m-%d"),
        }
    keep_earlier_runs(report, args.results / "text_experiment.json")
    report["text_dependent_gaps"] = text_dependent_gaps(report["runs"])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "text_experiment.json").write_text(json.dumps(report, indent=2))
    (args.results / "text_experiment.md").write_text(markdown(report))
    print(markdown(report))
    print(f"written: {args.results / 'text_experiment.json'}, {args.results / 'text_experiment.md'}")


if __name__ == "__main__":
    main()
