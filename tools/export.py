#!/usr/bin/env python
"""
Export a trained ditod model to ONNX, for inference with ONNX Runtime without detectron2
(`ditod.runtime.OnnxPredictor`, `tools/infer.py --onnx DIR`).

    python tools/export.py --config-file configs/publaynet/cascade_layoutlmv3_text.yaml \\
        --weights output/model_final.pth --output exported/ [--classes ...] \\
        [--opts MODEL.VIT.TOKENIZER path/to/tokenizer MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.3]

Written under --output: model.onnx (one page in: its resized image and, for a model that
reads text, its token ids and boxes; boxes, scores, classes out; the page size and the
number of tokens dynamic), ditod_export.json (class names and ids, preprocessing
constants, the score threshold), config.yaml and, for a model that reads text,
tokenizer/. Attention is ONNX Runtime's fused op unless --attention plain asks for
standard ONNX ops (for runtimes other than ONNX Runtime); --quantize int8 stores the
linear layers as int8 products for CPUs (outputs close to the float model's: check the
quantized model's AP with tools/train_net.py --eval-only --onnx DIR). The graph
keeps the detections scoring above MODEL.ROI_HEADS.SCORE_THRESH_TEST (detectron2's
default 0.05 unless the config sets it): a predictor can raise it, not lower it.
"""

import argparse
import logging
import os
import sys
import time

from detectron2.utils.logger import setup_logger

from ditod import load_config
from ditod.data import register_from_config
from ditod.engine.export import ATTENTION_FORMS, QUANTIZATION_FORMS, export_onnx

logger = logging.getLogger("ditod.tools.export")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", required=True, help="the model's checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="folder for model.onnx and what inference needs beside it")
    parser.add_argument("--classes", nargs="+", help="class names (default: those in the checkpoint)")
    parser.add_argument(
        "--attention",
        choices=ATTENTION_FORMS,
        default="fused",
        help="fused: ONNX Runtime's MultiHeadAttention op (CPU, CUDA; the fastest there); "
        "plain: standard ONNX ops, for other runtimes (default: %(default)s)",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATION_FORMS,
        default="none",
        help="int8: the linear layers as ONNX Runtime's int8 products (faster on CPUs with VNNI; "
        "outputs close to, not equal to, the float model's: check its AP) (default: %(default)s)",
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ..., last")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="ditod")
    if "://" not in args.weights and not os.path.isfile(args.weights):
        state = "is not a file" if os.path.exists(args.weights) else "does not exist"
        raise SystemExit(f"export.py: error: --weights {args.weights} {state}")
    start = time.perf_counter()
    try:
        cfg = load_config(args.config_file, args.opts)
        cfg.freeze()
        register_from_config(cfg)
        path = export_onnx(
            cfg, args.weights, args.output, classes=args.classes, attention=args.attention, quantize=args.quantize
        )
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"export.py: error: {e}") from None
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in path.parent.iterdir())
    print(
        f"\nExported {args.weights} to {path} ({path.stat().st_size / 2**20:.1f} MiB) in "
        f"{time.perf_counter() - start:.1f} s\n{path.parent}: {', '.join(files)}\n"
        f"run it: python tools/infer.py --onnx {path.parent} --input PAGES --output OUT"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
