#!/usr/bin/env python
"""
Detect the layout of page images and PDFs with a trained ditod model: the regions of each
page in reading order with their text, as JSON (and Markdown), drawn on the page.

    python tools/infer.py --config-file configs/publaynet/cascade_layoutlmv3_text.yaml \\
        --weights output/model_final.pth --input page.png scans/ paper.pdf --output out/ \\
        [--format json markdown] [--ray] --opts MODEL.VIT.TOKENIZER path/to/tokenizer
    python tools/infer.py --onnx exported/ --input page.png --output out/   # tools/export.py's folder

Inputs are image files (png/jpg/jpeg/tif/tiff/bmp), PDFs (pages rendered at --dpi, their
text layer as OCR) and folders (searched recursively for both). A model that reads text
takes an image's OCR json from --ocr-dir (same relative path and stem); a page without
OCR is OCRed on the fly by --ocr-engine. Class names and COCO ids are those training saved
in the checkpoint (--classes overrides the names). --onnx runs an exported model with ONNX
Runtime instead of PyTorch (no config, weights or --opts; not with --ray).

Written under --output (see ditod/engine/collection.py): per page <name>.json (blocks in
reading order with their text), <name>.md (--format markdown), <name>.png (blocks drawn,
long side at most --draw-size); results.jsonl, one line per page as it finishes, and
results.json (COCO) at the end. Pages already in results.jsonl are skipped (--overwrite
redoes them). --ray runs on the Ray cluster of RAY_ADDRESS, else on a local instance.
A page that fails is listed at the end (exit status 1); the others are done.
"""

import argparse
import contextlib
import importlib.util
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from detectron2.utils.logger import setup_logger

from ditod import load_config
from ditod.data import register_from_config
from ditod.data.ocr import OCR_ENGINES
from ditod.data.pages import collect_pages, in_shard, parse_shard
from ditod.engine import PageWriter, ResultsLog, VLPredictor, checkpoint_info, configure_cpu_memory, model_classes
from ditod.engine.collection import FORMATS, predict_pages
from ditod.engine.ray_collection import predict_pages_on_ray, ray_instance
from ditod.runtime import OnnxPredictor

logger = logging.getLogger("ditod.tools.infer")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help="the model's config (not with --onnx)")
    parser.add_argument("--weights", help="the model's checkpoint (.pth; not with --onnx)")
    parser.add_argument("--onnx", metavar="DIR", help="run a model exported by tools/export.py with ONNX Runtime")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders, PDFs")
    parser.add_argument("--output", required=True, help="folder for the drawn pages and the JSONs")
    parser.add_argument("--ocr-dir", help="folder of OCR jsons of the images (same relative path and stem)")
    parser.add_argument("--ocr-engine", default="rapidocr", choices=sorted(OCR_ENGINES), help="OCR on the fly")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="keep detections scoring at least this")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--classes", nargs="+", help="class names (default: those in the checkpoint)")
    parser.add_argument("--dpi", type=float, default=144, help="resolution of rendered PDF pages")
    parser.add_argument("--format", nargs="+", default=["json"], choices=FORMATS, help="per-page outputs")
    parser.add_argument("--draw-size", type=int, default=2000, help="long side of drawings in pixels (0: full)")
    parser.add_argument("--batch-size", type=int, default=1, help="pages per model call")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="K/N", help="only shard K of N")
    parser.add_argument("--overwrite", action="store_true", help="redo the pages already in results.jsonl")
    parser.add_argument("--ray", action="store_true", help="run on Ray (RAY_ADDRESS, else a local instance)")
    parser.add_argument("--ray-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ..., last")
    return parser


def check_arguments(args):
    if args.onnx:
        given = [flag for flag, value in (("--config-file", args.config_file), ("--weights", args.weights)) if value]
        given += ["--opts"] * bool(args.opts) + ["--ray"] * args.ray
        if given:
            raise SystemExit(f"infer.py: error: --onnx runs an exported model: no {', '.join(given)} with it")
    elif not (args.config_file and args.weights):
        raise SystemExit("infer.py: error: give --config-file and --weights, or --onnx DIR")
    weights = None if args.onnx or "://" in args.weights else args.weights  # URLs: fetched
    for flag, path, is_right, kind in (
        ("--ocr-dir", args.ocr_dir, os.path.isdir, "a folder"),
        ("--weights", weights, os.path.isfile, "a file"),
        ("--onnx", args.onnx, os.path.isdir, "a folder"),
    ):
        if path and not is_right(path):
            raise SystemExit(
                f"infer.py: error: {flag} {path} {f'is not {kind}' if os.path.exists(path) else 'does not exist'}"
            )
    if args.batch_size < 1:
        raise SystemExit("infer.py: error: --batch-size must be at least 1")
    if args.ray and importlib.util.find_spec("ray") is None:
        raise SystemExit("infer.py: error: --ray needs Ray: pip install 'ditod[ray]'")


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.WEIGHTS = args.weights
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.score_thresh
    cfg.freeze()
    register_from_config(cfg)
    return cfg


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="ditod")
    setup_logger(name="detectron2")
    check_arguments(args)
    output = Path(args.output)
    with contextlib.ExitStack() as stack:
        try:
            pages, failures = collect_pages(args.input, args.ocr_dir)
            options = {"classes": args.classes, "ocr_engine": args.ocr_engine, "dpi": args.dpi}
            if args.onnx:
                predictor = OnnxPredictor(args.onnx, input_format="RGB", score_thresh=args.score_thresh, **options)
                classes, ids = predictor.class_names, predictor.category_ids
            elif args.ray:
                cfg = setup_cfg(args)
                configure_cpu_memory(cfg)
                stack.enter_context(ray_instance(args.ray_cpus))
                classes, ids = model_classes(cfg, checkpoint_info(args.weights), args.classes, args.weights)
            else:
                cfg = setup_cfg(args)
                configure_cpu_memory(cfg)
                predictor = VLPredictor(cfg, input_format="RGB", **options)
                classes, ids = predictor.class_names, predictor.category_ids
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"infer.py: error: {e}") from None
        total = len(pages)
        pages = [page for page in pages if in_shard(page.key, args.shard)]
        log = ResultsLog(output, fresh=args.overwrite)
        todo = [page for page in pages if page.name not in log.finished]
        writer = PageWriter(output, classes, args.format, args.draw_size)
        if args.ray:
            options = {"dpi": args.dpi, "ocr_engine": args.ocr_engine, "batch_size": args.batch_size}
            outcomes = predict_pages_on_ray(todo, cfg, writer, ids, **options)
        else:
            outcomes = predict_pages(todo, predictor, writer, args.dpi, args.batch_size)
        seconds, sources, detections, start = Counter(), Counter(), 0, time.perf_counter()
        for outcome in tqdm(outcomes, total=len(todo), desc="pages", unit="page"):
            if outcome.error:
                failures.append((outcome.page.name, outcome.error))
                logger.warning(f"{outcome.page.name}: {outcome.error}")
                continue
            log.append(outcome.record)
            sources[outcome.record["ocr"]] += 1
            detections += len(outcome.record["blocks"])
            seconds.update(outcome.seconds)
        elapsed = time.perf_counter() - start
    log.write_coco(classes, ids)

    done = sum(sources.values())
    per_page = {stage: s / max(done, 1) for stage, s in seconds.items()}
    shard = f" (shard {args.shard[0]}/{args.shard[1]} of {total})" if args.shard[1] > 1 else ""
    print(
        f"\n{done} page(s) in {elapsed:.1f} s{shard}, {detections} detections (score >= {args.score_thresh}), "
        f"{len(pages) - len(todo)} skipped (already in results.jsonl), {len(failures)} failed; written to {output}\n"
        f"seconds per page: OCR {per_page.get('ocr', 0):.3f}, model {per_page.get('model', 0):.3f} "
        f"(reading/rendering {per_page.get('load', 0):.3f}, resize + tokens {per_page.get('preprocess', 0):.3f})\n"
        f"OCR from: {', '.join(f'{k} {v}' for k, v in sorted(sources.items())) or '-'}"
    )
    for name, error in failures:
        print(f"FAILED {name}: {error}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
