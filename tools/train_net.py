#!/usr/bin/env python
"""
Train or evaluate a ditod layout detector: detectron2's train_net.py for ditod.

    python tools/train_net.py --config-file configs/publaynet/cascade_layoutlmv3_text.yaml --num-gpus 4
    python tools/train_net.py --config-file ... --resume                 # continue from last_checkpoint
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --eval-only --onnx exported/ [--config-file ...]  # tools/export.py's folder
    python tools/train_net.py --config-file ... \\
        --dataset mydocs_train=train.json:train/images:train/ocr --dataset mydocs_val=val.json:val/images \\
        DATASETS.TRAIN '("mydocs_train",)' DATASETS.TEST '("mydocs_val",)' MODEL.ROI_HEADS.NUM_CLASSES 5

Training writes checkpoints (model_final.pth, model_best.pth with TEST.EVAL_PERIOD),
metrics.json and tensorboard events to OUTPUT_DIR. Evaluation writes, per dataset of
DATASETS.TEST, OUTPUT_DIR/inference/<dataset>/coco_instances_results.json and
metrics.json (COCO bbox AP, AP50, AP75, APs/m/l, per-class AP; and mask AP under "segm"
with MODEL.MASK_ON). MODEL.WEIGHTS may also be Hugging Face LayoutLMv3 weights
(pytorch_model.bin, model.safetensors or their directory): they go into the transformer,
as in the original LayoutLMv3 recipe's command. `--num-gpus N` without
GPUs runs N processes on the CPU (GLOO). `--eval-only --onnx DIR` evaluates an exported
model with ONNX Runtime instead (an int8 export's AP against the float one's), its test
loader built from DIR/config.yaml unless --config-file is given.
"""

import argparse
import logging
import os
import sys

import torch

from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ditod import load_config
from ditod.data import check_datasets, register_from_config, register_vl_coco
from ditod.engine import VLDetectionCheckpointer, VLTrainer, WeightsError, check_solver, configure_cpu_memory
from ditod.engine.onnx_model import OnnxRuntimeModel, check_test_loader


def dataset_spec(text):
    """--dataset NAME=JSON:IMAGE_ROOT[:OCR_ROOT] as (name, json, image_root, ocr_root or None)."""
    name, equals, paths = text.partition("=")
    parts = paths.split(":")
    if not (equals and name and len(parts) in (2, 3) and parts[0] and parts[1]):
        raise argparse.ArgumentTypeError(f"expected NAME=JSON:IMAGE_ROOT[:OCR_ROOT], got {text!r}")
    return name, parts[0], parts[1], (parts[2] if len(parts) == 3 else "") or None


def setup(args, check=True):
    """The frozen config of `args`, with its datasets registered and, with `check`, the
    config and datasets checked (`check_solver`, `check_datasets`: this reads the datasets)."""
    if args.onnx and not args.config_file:
        args.config_file = os.path.join(args.onnx, "config.yaml")
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    register_from_config(cfg)
    for spec in args.dataset:
        register_vl_coco(*spec)
    if not check:
        return cfg
    if args.onnx and not args.eval_only:
        raise ValueError("--onnx evaluates an exported model: add --eval-only")
    if args.eval_only and not cfg.MODEL.WEIGHTS and not args.resume and not args.onnx:
        raise ValueError("--eval-only evaluates MODEL.WEIGHTS: add MODEL.WEIGHTS path/to/model.pth")
    if args.onnx:
        check_test_loader(args.onnx, cfg)
    if not args.eval_only:
        check_solver(cfg, max(args.num_gpus, 1) * args.num_machines)
    check_datasets(cfg, ("TEST",) if args.eval_only else ("TRAIN", "TEST"))
    return cfg


def share_cpu_cores(cfg):
    """Give each of several CPU processes on this machine its share of the cores: torch
    gives every process all of them, and processes fighting over the same cores ran
    two-process training 10x slower than one process here. OMP_NUM_THREADS wins."""
    processes = comm.get_local_size()
    if cfg.MODEL.DEVICE != "cpu" or processes < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    torch.set_num_threads(threads)
    logger = logging.getLogger("ditod.tools.train_net")
    logger.info(f"{processes} CPU processes on this machine: {threads} torch thread(s) each")


def main(args):
    cfg = setup(args, check=False)  # checked before launch
    default_setup(cfg, args)
    # default_setup sets up detectron2's logger only; ditod's warnings (dropped
    # annotations, pages without OCR, ...) belong in the same log.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ditod")
    share_cpu_cores(cfg)
    configure_cpu_memory(cfg)
    if args.onnx:
        results = VLTrainer.test(cfg, OnnxRuntimeModel(args.onnx, cfg))
    elif args.eval_only:
        model = VLTrainer.build_model(cfg)
        VLDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = VLTrainer.test(cfg, model)
    else:
        trainer = VLTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        results = trainer.train()
    if comm.get_world_size() > 1:
        # A process that leaves while another still evaluates can abort it (seen with GLOO).
        comm.synchronize()
        torch.distributed.destroy_process_group()
    return results


def parse_args(argv=None):
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument(
        "--dataset",
        type=dataset_spec,
        action="append",
        default=[],
        metavar="NAME=JSON:IMAGE_ROOT[:OCR_ROOT]",
        help="register a COCO dataset whose OCR jsons are under OCR_ROOT (default IMAGE_ROOT/../ocr); repeatable",
    )
    parser.add_argument(
        "--onnx",
        metavar="DIR",
        help="with --eval-only: evaluate the model exported to DIR (tools/export.py) with ONNX Runtime",
    )
    return parser.parse_args(argv)


def checked_setup(args):
    """`setup(args)`, its log (what the dataset checks found, how long they took) on stderr:
    the run's own loggers are set up only once it starts."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s", "%m/%d %H:%M:%S"))
    loggers = [logging.getLogger(name) for name in ("ditod", "detectron2")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        return setup(args)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


if __name__ == "__main__":
    args = parse_args()
    try:
        cfg = checked_setup(args)  # fail on a bad config or dataset before any process starts
    except (KeyError, ValueError, FileNotFoundError) as e:
        sys.exit(f"train_net.py: error: {e.args[0] if isinstance(e, KeyError) else e}")
    if cfg.MODEL.DEVICE == "cpu":
        # launch picks NCCL whenever it sees a GPU; CPU processes need GLOO.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except WeightsError as e:  # MODEL.WEIGHTS unusable (one process; several report through launch)
        sys.exit(f"train_net.py: error: {e}")
