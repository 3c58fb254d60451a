#!/usr/bin/env python
"""
The demo (`make demo`): from nothing to a trained multimodal layout detector on the CPU.

    python tools/demo.py [--out output/demo] [--train-pages 400] [--val-pages 50] [--iters N]

1. generates synthetic document pages (COCO json, PNG pages, OCR json per page),
2. trains a tokenizer on the OCR text of the training pages,
3. trains the tiny multimodal model (configs/tiny/cascade_layoutlmv3_text.yaml) with
   tools/train_net.py,
4. evaluates its COCO bbox mAP on the validation pages (tools/train_net.py --eval-only),
5. draws its predictions on a few validation pages (tools/infer.py),
and prints where the model, the metrics and the drawn pages are. Every step is one of
the project's commands, run as a user would run it.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import children

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny" / "cascade_layoutlmv3_text.yaml"


def tokenizer_command(synthetic, tokenizer):
    """The command that trains the tiny model's tokenizer on the OCR of the synthetic training pages."""
    return [
        sys.executable,
        "tools/train_tokenizer.py",
        "--ocr-dir",
        synthetic / "train" / "ocr",
        "--out",
        tokenizer,
        "--vocab-size",
        4000,
    ]


def run(step, command, env):
    print(f"\n=== {step}\n$ {' '.join(str(c) for c in command)}", flush=True)
    start = time.perf_counter()
    children.run(command, check=True, env=env, cwd=REPO)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "output" / "demo")
    parser.add_argument("--train-pages", type=int, default=400)
    parser.add_argument("--val-pages", type=int, default=50)
    parser.add_argument("--iters", type=int, help="training iterations (default: the config's SOLVER.MAX_ITER)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = args.out.resolve()
    data_root = out / "datasets"
    synthetic = data_root / "synthetic"
    tokenizer = out / "tokenizer"
    model_dir = out / "model"
    predictions = out / "predictions"
    # The built-in names synthetic_train / synthetic_val read $DETECTRON2_DATASETS/synthetic.
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), PYTHONUNBUFFERED="1")
    python = sys.executable
    overrides = ["MODEL.VIT.TOKENIZER", tokenizer, "OUTPUT_DIR", model_dir]
    if args.iters:
        overrides += ["SOLVER.MAX_ITER", args.iters]
    seconds = {}
    start = time.perf_counter()

    seconds["pages"] = run(
        "1/5 synthetic pages",
        [
            python,
            "tools/make_synthetic.py",
            "--out",
            synthetic,
            "--seed",
            args.seed,
            "--workers",
            2,
            "--splits",
            f"train:{args.train_pages}",
            f"val:{args.val_pages}",
        ],
        env,
    )
    seconds["tokenizer"] = run(
        "2/5 tokenizer",
        tokenizer_command(synthetic, tokenizer),
        env,
    )
    seconds["training"] = run(
        "3/5 training (tiny LayoutLMv3 with text fusion, CPU)",
        [python, "tools/train_net.py", "--config-file", CONFIG, *overrides],
        env,
    )
    weights = model_dir / "model_final.pth"
    seconds["evaluation"] = run(
        "4/5 COCO evaluation on the validation pages",
        [python, "tools/train_net.py", "--config-file", CONFIG, "--eval-only", *overrides, "MODEL.WEIGHTS", weights],
        env,
    )
    val_pages = sorted((synthetic / "val" / "images").glob("*.png"))[:4]
    seconds["inference"] = run(
        "5/5 drawn predictions",
        [
            python,
            "tools/infer.py",
            "--config-file",
            CONFIG,
            "--weights",
            weights,
            "--input",
            *val_pages,
            "--ocr-dir",
            synthetic / "val" / "ocr",
            "--output",
            predictions,
            "--score-thresh",
            0.5,
            "--opts",
            "MODEL.VIT.TOKENIZER",
            tokenizer,
        ],
        env,
    )

    metrics_file = model_dir / "inference" / "synthetic_val" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    total = time.perf_counter() - start
    print("\n=== demo summary")
    print(
        f"bbox mAP on {args.val_pages} synthetic validation pages: AP {metrics['AP']:.1f}, "
        f"AP50 {metrics['AP50']:.1f}, AP75 {metrics['AP75']:.1f}"
    )
    for name, ap in metrics["per_class_AP"].items():
        print(f"    {name:<15} {'-' if ap is None else f'{ap:.1f}'}")
    print(f"model:             {weights}")
    print(f"metrics:           {metrics_file}")
    print(f"drawn predictions: {predictions} ({len(val_pages)} pages, PNG + JSON)")
    print(f"synthetic data:    {synthetic}")
    print(f"time: {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ")")


if __name__ == "__main__":
    main()
