"""
Training and evaluation: detectron2's `DefaultTrainer` with the LayoutLMv3 recipe.

What one iteration means. `SOLVER.MAX_ITER`, `WARMUP_ITERS`, `STEPS`,
`CHECKPOINT_PERIOD` and `TEST.EVAL_PERIOD` count optimizer steps, and
`SOLVER.IMS_PER_BATCH` is the number of images behind one optimizer step (all
processes, all micro-batches). With `SOLVER.GRADIENT_ACCUMULATION_STEPS` = A an
iteration runs A micro-batches of IMS_PER_BATCH / A images (split over the
processes), each loss divided by A, and then one optimizer step; so changing A
keeps the learning-rate schedule, the checkpoint numbering and the effective batch
of a recipe, and only trades memory for time.

Exact resume. Every random draw of a run is a function of `SEED` and of where it
happens: the sampler's shuffle comes from SEED, each sample's augmentation from
(SEED, rank, position in the sample stream), the model's randomness (proposal
sampling, dropout) from (SEED, rank, iteration, micro-batch). A run resumed at
iteration k skips exactly the samples the interrupted run consumed (including
those waiting in aspect-ratio buckets), so it reaches the same weights as an
uninterrupted run whatever the number of data-loader workers (bit-exact on CPU;
GPU kernels themselves may be non-deterministic). With SEED < 0 the run draws a seed
once and keeps it in its checkpoints. One thing is not replayed: a page the mapper
skips (an unreadable image, logged) shifts the batches of the run that met it.

Evaluation (`--eval-only`, every TEST.EVAL_PERIOD, the end of training) is COCO bbox AP
on the ground truth the loader reads (`VLCOCOEvaluator`). A page whose image cannot be
read does not stop it: the page is left out, with a warning that names it (see
`ditod.engine.evaluation`).
"""

import contextlib
import itertools
import json
import logging
import math
import os
import re
import time
import weakref
from functools import partial

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.data.common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from ..data.datasets import check_ocr_files
from ..data.mapper import VLDatasetMapper
from .checkpoint import VLDetectionCheckpointer
from .evaluation import SkipUnreadablePages, VLCOCOEvaluator, map_or_mark_unreadable

__all__ = [
    "AccumulatingTrainer",
    "VLTrainer",
    "build_resumable_train_loader",
    "check_datasets",
    "layoutlmv3_param_groups",
    "transformer_lr_factor",
]

logger = logging.getLogger(__name__)

# Where the LayoutLMv3 transformer sits in the detector built by build_vit_fpn_backbone.
TRANSFORMER_PREFIX = "backbone.bottom_up.layoutlmv3."
# Transformer parameters of the embedding stage (text and patch embeddings and their norms).
_EMBEDDING_NAMES = ("embeddings.", "patch_embed.", "cls_token", "pos_embed", "norm.", "LayerNorm.")
# Tags that keep the seeds of different purposes apart.
_SAMPLER_SEED, _DATA_SEED, _STEP_SEED = 0, 1, 2


def derive_seed(*keys):
    """A 32-bit seed determined by the non-negative integers `keys`."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


# ------------------------------------------------------------------- optimizer
def transformer_lr_factor(name, num_layers, multiplier=1.0, layer_decay=1.0):
    """
    Learning-rate factor of the parameter `name` (as in `model.named_parameters()`).

    Transformer parameters (under `backbone.bottom_up.layoutlmv3.`) get `multiplier`
    times a layer-wise decay (BEiT convention): encoder layer i (0-based) gets
    layer_decay ** (num_layers - i), the embedding stage layer_decay ** (num_layers + 1).
    Everything else (pyramid, fusion, FPN, heads) gets 1.
    """
    if not name.startswith(TRANSFORMER_PREFIX):
        return 1.0
    name = name[len(TRANSFORMER_PREFIX) :]
    match = re.match(r"encoder\.layer\.(\d+)\.", name)
    if match:
        depth = int(match.group(1)) + 1
    elif name.startswith(_EMBEDDING_NAMES):
        depth = 0
    else:
        depth = num_layers + 1
    return multiplier * layer_decay ** (num_layers + 1 - depth)


def layoutlmv3_param_groups(model, base_lr, weight_decay, multiplier=1.0, layer_decay=1.0):
    """
    Optimizer parameter groups: `transformer_lr_factor` learning rates, and no weight
    decay on norms, biases, position embeddings (pos_embed and the text/layout
    position tables) and the CLS token.
    """
    transformer_layers = [
        len(module.encoder.layer) for name, module in model.named_modules() if name + "." == TRANSFORMER_PREFIX
    ]
    if not transformer_layers and (multiplier != 1.0 or layer_decay != 1.0):
        logger.warning(
            f"The model has no {TRANSFORMER_PREFIX[:-1]}: SOLVER.BACKBONE_MULTIPLIER and "
            "SOLVER.LAYER_DECAY have nothing to act on"
        )
    groups = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
        lr_factor_func=partial(
            transformer_lr_factor,
            num_layers=transformer_layers[0] if transformer_layers else 0,
            multiplier=multiplier,
            layer_decay=layer_decay,
        ),
        overrides={"pos_embed": {"weight_decay": 0.0}, "cls_token": {"weight_decay": 0.0}},
    )
    # The text position tables are nn.Embedding weights, out of reach of `overrides`;
    # a later group overrides earlier ones for the same parameters.
    tables = [
        param
        for name, module in model.named_modules()
        if name.endswith("position_embeddings")
        for param in module.parameters()
        if param.requires_grad
    ]
    return reduce_param_groups(groups + [{"params": tables, "weight_decay": 0.0}])


# ------------------------------------------------------------------- training loop
class AccumulatingTrainer(SimpleTrainer):
    """
    `SimpleTrainer` whose step runs `accumulation_steps` micro-batches, each loss
    divided by their number, before one optimizer step; with optional AMP (a
    `GradScaler` given), full-model gradient-norm clipping and per-micro-batch seeding.

    Under DDP the gradients are all-reduced once per step (`no_sync` on the other
    micro-batches). Losses written to the event storage are the micro-batch average.
    """

    def __init__(
        self,
        model,
        data_loader,
        optimizer,
        *,
        accumulation_steps=1,
        grad_scaler=None,
        amp_dtype=torch.float16,
        clip_norm=None,
        seed=None,
    ):
        """
        Args:
            grad_scaler: a torch.amp.GradScaler to train under autocast on the model's device;
                None: float32.
            clip_norm: (max_norm, norm_type) to clip the norm of all gradients together.
            seed: base seed of the per-micro-batch RNG seeding; None: no seeding.
        """
        super().__init__(model, data_loader, optimizer)
        if accumulation_steps < 1:
            raise ValueError(f"SOLVER.GRADIENT_ACCUMULATION_STEPS must be >= 1, got {accumulation_steps}")
        self.accumulation_steps = accumulation_steps
        self.grad_scaler = grad_scaler
        self.amp_dtype = amp_dtype
        self.clip_norm = clip_norm
        self.seed = seed
        self._device_type = next(model.parameters()).device.type

    def _micro_step_context(self, micro):
        if isinstance(self.model, DistributedDataParallel) and micro < self.accumulation_steps - 1:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def run_step(self):
        assert self.model.training, "[AccumulatingTrainer] model was changed to eval mode!"
        self.optimizer.zero_grad()
        data_time = 0.0
        loss_sums = {}
        for micro in range(self.accumulation_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            if self.seed is not None:
                seed_all_rng(derive_seed(self.seed, _STEP_SEED, comm.get_rank(), self.iter, micro))
            with self._micro_step_context(micro):
                with torch.autocast(self._device_type, dtype=self.amp_dtype, enabled=self.grad_scaler is not None):
                    loss_dict = self.model(data)
                    losses = sum(loss_dict.values()) / self.accumulation_steps
                if self.grad_scaler is not None:
                    losses = self.grad_scaler.scale(losses)
                losses.backward()
            for name, value in loss_dict.items():
                loss_sums[name] = loss_sums.get(name, 0.0) + value.detach()

        self.after_backward()
        self._write_metrics({k: v / self.accumulation_steps for k, v in loss_sums.items()}, data_time)

        if self.clip_norm is not None:
            if self.grad_scaler is not None:
                self.grad_scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_norm[0], self.clip_norm[1])
            get_event_storage().put_scalar("grad_norm", norm.item())
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        state = super().state_dict()
        if self.grad_scaler is not None:
            state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


# ------------------------------------------------------------------- data stream
class _PositionedSampler(Sampler):
    """
    (position, dataset index) pairs of a detectron2 training sampler's stream (this
    rank's share), leaving out the positions a resumed run already consumed: all
    before `start` except those in `pending` (consumed but not yet batched).
    """

    def __init__(self, sampler, start=0, pending=()):
        self._sampler = sampler
        self._start = start
        self._pending = frozenset(pending)

    def __iter__(self):
        for position, index in enumerate(self._sampler):
            if position >= self._start or position in self._pending:
                yield position, index


class _PositionedRecords(Dataset):
    """Dataset dicts looked up by (position, index); the position travels along."""

    def __init__(self, records):
        self._records = DatasetFromList(records, copy=False)

    def __len__(self):
        return len(self._records)

    def __getitem__(self, key):
        position, index = key
        return position, self._records[index]


def _map_seeded(item, mapper, seed, rank):
    """Map one sample with every RNG seeded from its stream position."""
    position, record = item
    seed_all_rng(derive_seed(seed, _DATA_SEED, rank, position))
    return mapper(record)


def _resume_point(sampler, records, batch_size, num_batches, aspect_ratio_grouping):
    """
    Where the stream stands after `num_batches` batches: the first position not yet
    read, and the positions read but still waiting in an aspect-ratio bucket. Replays
    detectron2's grouping on the records' sizes, without loading any image.
    """
    if num_batches == 0:
        return 0, ()
    if not aspect_ratio_grouping:
        return num_batches * batch_size, ()
    sizes = [{"width": r["width"], "height": r["height"]} for r in records]
    stream = ({**sizes[index], "position": position} for position, index in enumerate(sampler))
    batched, end = set(), 0
    for batch in itertools.islice(AspectRatioGroupedDataset(stream, batch_size), num_batches):
        batched.update(item["position"] for item in batch)
        end = batch[-1]["position"] + 1
    return end, sorted(set(range(end)) - batched)


def build_resumable_train_loader(cfg, mapper, start_batch=0, seed=None):
    """
    detectron2's train loader (DATASETS.TRAIN, DATALOADER.SAMPLER_TRAIN, aspect-ratio
    grouping, workers) whose sample stream is a function of `seed` alone, started
    after its first `start_batch` batches (see the module docstring).

    Args:
        cfg: the config; the loader's batch is IMS_PER_BATCH / GRADIENT_ACCUMULATION_STEPS.
        seed: None: SEED when >= 0, else a random seed shared by all processes.
    """
    if seed is None:
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    # detectron2's samplers without an explicit seed shuffle with comm.shared_random_seed(),
    # drawn from numpy's RNG: seeded here so that every run shuffles alike.
    np.random.seed(derive_seed(seed, _SAMPLER_SEED))
    kwargs = build_detection_train_loader.from_config(cfg, mapper=mapper)
    if not cfg.MODEL.IMAGE_ONLY and cfg.INPUT.OCR.MISSING == "error":
        check_ocr_files(kwargs["dataset"], cfg.DATASETS.TRAIN)
    total_batch = cfg.SOLVER.IMS_PER_BATCH // cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS
    batch_size = total_batch // comm.get_world_size()
    grouping = kwargs["aspect_ratio_grouping"]
    start, pending = _resume_point(kwargs["sampler"], kwargs["dataset"], batch_size, start_batch, grouping)
    if start_batch:
        logger.info(f"Resuming the training stream after {start_batch} batches (sample position {start})")
    # One sample per worker turn with grouping (the grouping then sees the stream in
    # order, whatever the number of workers), whole batches per worker without.
    stream = ToIterableDataset(
        _PositionedRecords(kwargs["dataset"]),
        _PositionedSampler(kwargs["sampler"], start, pending),
        shard_chunk_size=1 if grouping else batch_size,
    )
    dataset = MapDataset(stream, partial(_map_seeded, mapper=mapper, seed=seed, rank=comm.get_rank()))
    return build_detection_train_loader(
        dataset,
        mapper=None,
        total_batch_size=total_batch,
        aspect_ratio_grouping=grouping,
        num_workers=kwargs["num_workers"],
    )


# ------------------------------------------------------------------- evaluation
class _BestCheckpointer(hooks.BestCheckpointer):
    """`hooks.BestCheckpointer` that keeps its best score across `--resume` (trainer state)."""

    def state_dict(self):
        # model_best.pth is written before the base class records the new best, so the
        # metric just computed counts too (it is never better than the best otherwise).
        latest = self.trainer.storage.latest().get(self._val_metric)
        candidates = [(self.best_metric, self.best_iter), latest]
        candidates = [c for c in candidates if c is not None and c[0] is not None and math.isfinite(c[0])]
        if not candidates:
            return {}
        best, iteration = max(candidates, key=lambda c: c[0])
        return {"best_metric": best, "best_iter": iteration}

    def load_state_dict(self, state_dict):
        self.best_metric = state_dict["best_metric"]
        self.best_iter = state_dict["best_iter"]


def _json_number(value):
    return None if value is None or not math.isfinite(value) else float(value)


def write_bbox_metrics(path, dataset_name, results):
    """`metrics.json` of one dataset: COCO bbox AP, AP50, AP75, APs/m/l and per-class AP
    (null where COCO cannot compute one, e.g. a class without instances)."""
    bbox = results.get("bbox", {})
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", [])
    metrics = {
        "dataset": dataset_name,
        **{key: _json_number(bbox.get(key)) for key in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
        "per_class_AP": {name: _json_number(bbox.get(f"AP-{name}")) for name in classes},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    logger.info(f"Wrote {path}")


# ------------------------------------------------------------------- datasets
def check_datasets(cfg, splits=("TRAIN", "TEST")):
    """
    Raise a clear error, before anything is built, when DATASETS.TRAIN or DATASETS.TEST
    (those of `splits`) names a dataset that is not registered, one whose COCO json is
    not there, or, for a model that reads text with INPUT.OCR.MISSING "error", one whose
    OCR folder is not there.
    """
    registered = set(DatasetCatalog.list())
    needs_ocr = not cfg.MODEL.IMAGE_ONLY and cfg.INPUT.OCR.MISSING == "error"
    problems, unknown = [], False
    for key in splits:
        for name in cfg.DATASETS[key]:
            if name not in registered:
                problems.append(f"DATASETS.{key} names {name!r}, which is not registered")
                unknown = True
                continue
            metadata = MetadataCatalog.get(name)
            json_file, ocr_root = metadata.get("json_file"), metadata.get("ocr_root")
            if json_file and not os.path.isfile(json_file):
                problems.append(f"dataset {name!r} (DATASETS.{key}): its json {json_file} does not exist")
            if needs_ocr and ocr_root and not os.path.isdir(ocr_root):
                problems.append(
                    f"dataset {name!r} (DATASETS.{key}): its OCR folder {ocr_root} does not exist (make it with "
                    f"tools/ocr.py --images {metadata.get('image_root')} --out {ocr_root}, or train without "
                    "OCR on the pages that lack it: INPUT.OCR.MISSING empty)"
                )
    if not problems:
        return
    message = "; ".join(problems)
    if unknown:
        # detectron2's own built-ins (COCO, LVIS, Cityscapes, ...) would bury the relevant names.
        builtin = {name for name in registered if DatasetCatalog[name].__module__.startswith("detectron2.")}
        message += (
            f". Registered datasets: {', '.join(sorted(registered - builtin)) or '(none)'} "
            f"(plus {len(builtin)} detectron2 built-ins such as coco_2017_val). Register a COCO dataset "
            "with --dataset NAME=JSON:IMAGE_ROOT[:OCR_ROOT] or DATASETS.REGISTER; the built-in ones "
            "read $DETECTRON2_DATASETS (default ./datasets), see datasets/README.md."
        )
    raise KeyError(message)


# ------------------------------------------------------------------- trainer
class VLTrainer(DefaultTrainer):
    """
    `DefaultTrainer` for ditod models: AdamW/SGD with the recipe's parameter groups,
    AMP (CUDA only), full-model gradient clipping, gradient accumulation, the
    `VLDatasetMapper`, COCO bbox evaluation keeping `model_best.pth`, exactly
    resumable training, `VLDetectionCheckpointer`.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ hard-wires the loop (Simple/AMPTrainer), the
        # checkpointer class and GPU-only DDP arguments, so the parts are built here.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        accumulation = cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS
        world = comm.get_world_size()
        if accumulation < 1:
            raise ValueError(f"SOLVER.GRADIENT_ACCUMULATION_STEPS must be >= 1, got {accumulation}")
        if cfg.SOLVER.IMS_PER_BATCH % (accumulation * world):
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}), the images of one optimizer step, "
                f"must be divisible by SOLVER.GRADIENT_ACCUMULATION_STEPS ({accumulation}) times the "
                f"number of processes ({world})"
            )
        on_gpu = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        amp = cfg.SOLVER.AMP.ENABLED and on_gpu
        if cfg.SOLVER.AMP.ENABLED and not on_gpu:
            logger.warning(f"SOLVER.AMP.ENABLED is ignored on {cfg.MODEL.DEVICE}: training in float32")
        clip = cfg.SOLVER.CLIP_GRADIENTS
        full_model_clip = clip.ENABLED and clip.CLIP_TYPE == "full_model"

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # Every parameter of a ditod model takes part in every step (image-only models
        # do not build text modules; text models run them on pages without tokens).
        model = create_ddp_model(model, broadcast_buffers=False, **({} if on_gpu else {"device_ids": None}))
        self.seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        self._trainer = AccumulatingTrainer(
            model,
            None,  # built in train(), once the start iteration is known
            optimizer,
            accumulation_steps=accumulation,
            grad_scaler=torch.amp.GradScaler("cuda") if amp else None,
            clip_norm=(clip.CLIP_VALUE, clip.NORM_TYPE) if full_model_clip else None,
            seed=self.seed,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Checkpoints carry the training data's class names, for tools/infer.py.
        self.checkpointer = VLDetectionCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            dataset_name=cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        start_batch = self.start_iter * self.cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS
        self._trainer.reset_data_loader(
            lambda: self.build_train_loader(self.cfg, start_batch=start_batch, seed=self.seed)
        )
        return super().train()

    def build_hooks(self):
        ret = super().build_hooks()
        if self.cfg.TEST.EVAL_PERIOD > 0 and self.cfg.DATASETS.TEST:
            # EvalHook stores "<dataset>/bbox/AP" when several datasets are evaluated.
            names = self.cfg.DATASETS.TEST
            metric = "bbox/AP" if len(names) == 1 else f"{names[0]}/bbox/AP"
            best = _BestCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, metric, mode="max")
            position = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
            ret.insert(position, best)
        return ret

    def state_dict(self):
        state = super().state_dict()
        state["seed"] = self.seed
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # A run started with SEED < 0 drew its seed: the resumed run continues with it.
        self.seed = self._trainer.seed = state_dict.get("seed", self.seed)

    @classmethod
    def build_optimizer(cls, cfg, model):
        solver = cfg.SOLVER
        params = layoutlmv3_param_groups(
            model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.BACKBONE_MULTIPLIER, solver.LAYER_DECAY
        )
        if solver.OPTIMIZER == "AdamW":
            optimizer = torch.optim.AdamW(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
        elif solver.OPTIMIZER == "SGD":
            optimizer = torch.optim.SGD(
                params,
                lr=solver.BASE_LR,
                momentum=solver.MOMENTUM,
                nesterov=solver.NESTEROV,
                weight_decay=solver.WEIGHT_DECAY,
            )
        else:
            raise ValueError(f"SOLVER.OPTIMIZER must be 'AdamW' or 'SGD', got {solver.OPTIMIZER!r}")
        if solver.CLIP_GRADIENTS.ENABLED and solver.CLIP_GRADIENTS.CLIP_TYPE != "full_model":
            # detectron2's per-parameter "value" / "norm" clipping.
            optimizer = maybe_add_gradient_clipping(cfg, optimizer)
        return optimizer

    @classmethod
    def build_train_loader(cls, cfg, start_batch=0, seed=None):
        """`build_resumable_train_loader` with the `VLDatasetMapper`."""
        return build_resumable_train_loader(cfg, VLDatasetMapper(cfg, True), start_batch=start_batch, seed=seed)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with the `VLDatasetMapper`; a page whose image cannot be
        read comes as a marker (`map_or_mark_unreadable`)."""
        mapper = partial(map_or_mark_unreadable, mapper=VLDatasetMapper(cfg, False))
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return VLCOCOEvaluator(
            dataset_name,
            tasks=("bbox",),
            distributed=True,
            output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name),
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """
        detectron2's evaluation, plus `OUTPUT_DIR/inference/<dataset>/metrics.json` per dataset.
        The model never sees a page whose image cannot be read; `VLCOCOEvaluator` leaves it out.
        """
        results = super().test(cfg, SkipUnreadablePages(model), evaluators)
        names = list(cfg.DATASETS.TEST)
        per_dataset = {names[0]: results} if len(names) == 1 else results
        if comm.is_main_process():
            for name in names:
                folder = os.path.join(cfg.OUTPUT_DIR, "inference", name)
                os.makedirs(folder, exist_ok=True)
                write_bbox_metrics(os.path.join(folder, "metrics.json"), name, per_dataset.get(name, {}))
        return results
