"""
The training data stream: detectron2's train loader made exactly resumable.

Every random draw of the stream is a function of the run's seed and of where it happens:
the sampler's shuffle comes from the seed, each sample's augmentation from (seed, rank,
position in the sample stream). A run resumed after k batches skips exactly the samples
the interrupted run consumed, including those waiting in aspect-ratio buckets, whatever
the number of data-loader workers. One thing is not replayed: a page the mapper skips (an
unreadable image, logged) shifts the batches of the run that met it.
"""

import itertools
import logging
from functools import partial

import numpy as np
from torch.utils.data import Dataset, Sampler

from detectron2.data import build_detection_train_loader
from detectron2.data.common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from .datasets import check_ocr_files

__all__ = ["SAMPLER_SEED", "DATA_SEED", "STEP_SEED", "build_resumable_train_loader", "derive_seed"]

logger = logging.getLogger(__name__)

# Tags that keep the seeds of different purposes apart.
SAMPLER_SEED, DATA_SEED, STEP_SEED = 0, 1, 2


def derive_seed(*keys):
    """A 32-bit seed determined by the non-negative integers `keys`."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


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
    seed_all_rng(derive_seed(seed, DATA_SEED, rank, position))
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
    np.random.seed(derive_seed(seed, SAMPLER_SEED))
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
