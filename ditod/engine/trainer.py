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
GPU kernels themselves may be non-deterministic; the stream is `ditod.data.loader`'s). With SEED < 0 the run draws a seed
once and keeps it in its checkpoints. One thing is not replayed: a page the mapper
skips (an unreadable image, logged) shifts the batches of the run that met it.

Evaluation (`--eval-only`, every TEST.EVAL_PERIOD, the end of training) is COCO bbox AP,
and mask (segm) AP for a model with MODEL.MASK_ON, on the ground truth the loader reads
(`VLCOCOEvaluator`). A page whose image cannot be
read does not stop it: the page is left out, with a warning that names it (see
`ditod.engine.evaluation`).
"""

import contextlib
import functools
import logging
import math
import os
import time
import weakref
from functools import partial

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger

from ..data.loader import STEP_SEED, build_resumable_train_loader, derive_seed
from ..data.mapper import VLDatasetMapper
from .checkpoint import VLDetectionCheckpointer
from .evaluation import SkipUnreadablePages, VLCOCOEvaluator, map_or_mark_unreadable, write_metrics
from .optimizer import build_optimizer

__all__ = ["AccumulatingTrainer", "VLTrainer", "check_solver"]

logger = logging.getLogger(__name__)


def check_solver(cfg, num_processes):
    """
    Raise ValueError, naming the keys, for solver values training cannot run with, before
    anything is built: SOLVER.IMS_PER_BATCH or SOLVER.GRADIENT_ACCUMULATION_STEPS below 1,
    an IMS_PER_BATCH not divisible by the accumulation steps times `num_processes`, a
    SOLVER.CHECKPOINT_PERIOD below 1, a negative SOLVER.MAX_ITER, SOLVER.WARMUP_ITERS or
    TEST.EVAL_PERIOD, a negative or non-finite SOLVER.BASE_LR.
    """
    solver = cfg.SOLVER
    problems = []
    minimums = {
        "SOLVER.IMS_PER_BATCH": 1,
        "SOLVER.GRADIENT_ACCUMULATION_STEPS": 1,
        "SOLVER.CHECKPOINT_PERIOD": 1,
        "SOLVER.MAX_ITER": 0,
        "SOLVER.WARMUP_ITERS": 0,
        "TEST.EVAL_PERIOD": 0,
    }
    for key, minimum in minimums.items():
        value = functools.reduce(getattr, key.split("."), cfg)
        if value < minimum:
            problems.append(f"{key} must be >= {minimum}, got {value}")
    if not (math.isfinite(solver.BASE_LR) and solver.BASE_LR >= 0):
        problems.append(f"SOLVER.BASE_LR must be a finite number >= 0, got {solver.BASE_LR}")
    accumulation = solver.GRADIENT_ACCUMULATION_STEPS
    if not problems and solver.IMS_PER_BATCH % (accumulation * num_processes):
        problems.append(
            f"SOLVER.IMS_PER_BATCH ({solver.IMS_PER_BATCH}), the images of one optimizer step, must be divisible "
            f"by SOLVER.GRADIENT_ACCUMULATION_STEPS ({accumulation}) times the number of processes ({num_processes})"
        )
    if problems:
        raise ValueError("; ".join(problems))


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
                seed_all_rng(derive_seed(self.seed, STEP_SEED, comm.get_rank(), self.iter, micro))
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


# ------------------------------------------------------------------- trainer
class VLTrainer(DefaultTrainer):
    """
    `DefaultTrainer` for ditod models: AdamW/SGD with the recipe's parameter groups,
    AMP (CUDA only), full-model gradient clipping, gradient accumulation, the
    `VLDatasetMapper`, COCO bbox evaluation keeping `model_best.pth`, exactly
    resumable training, `VLDetectionCheckpointer`.

    It uses DefaultTrainer's hooks, `build_*` class methods, `resume_or_load`, `train`
    and `test`, but not its constructor, which cannot be configured for what this
    trainer needs: it builds the data loader at once (the resumable stream must know the
    start iteration, known only after `resume_or_load`), picks its loop class from
    SOLVER.AMP (`AMPTrainer`/`SimpleTrainer`; ours accumulates micro-batches, clips the
    whole model's gradients and seeds each micro-batch), hard-codes the checkpointer
    class (`DetectionCheckpointer`, which reads `.pth` files unsafely and does not save
    the class names), and passes GPU-only DDP arguments (CPU runs use GLOO). So
    `__init__` builds the same parts, as DefaultTrainer does, with these differences.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        check_solver(cfg, comm.get_world_size())
        accumulation = cfg.SOLVER.GRADIENT_ACCUMULATION_STEPS
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
        # Checkpoints carry the training data's class names, for tools/infer.py; weights
        # recorded with another tokenizer are fine-tuned from, with a warning.
        self.checkpointer = VLDetectionCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            dataset_name=cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None,
            training=True,
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
        """`ditod.engine.optimizer.build_optimizer`: the recipe's parameter groups."""
        return build_optimizer(cfg, model)

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
        """`VLCOCOEvaluator` of boxes, and of masks for a model with MODEL.MASK_ON."""
        return VLCOCOEvaluator(
            dataset_name,
            tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
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
                write_metrics(os.path.join(folder, "metrics.json"), name, per_dataset.get(name, {}))
        return results
