"""The resumable training stream: the same batches and augmentation draws after a resume,
whatever the number of data-loader workers; missing OCR jsons stop it before training."""

import copy
import itertools

import numpy as np
import pytest
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from ditod import add_vit_config
from ditod.data import UnreadableDatasetError, VLDatasetMapper, build_resumable_train_loader


def noisy_mapper(record):
    """Stands in for augmentation: a draw from numpy's global RNG, as detectron2's transforms do."""
    return {**record, "noise": float(np.random.rand())}


@pytest.fixture(scope="module")
def stream_dataset():
    # Landscape and portrait pages, so that aspect-ratio grouping holds pages back.
    generator = np.random.default_rng(0)
    records = [
        {"image_id": i, "file_name": f"{i}.png", "width": int(w), "height": int(h)}
        for i, (w, h) in enumerate(generator.integers(200, 400, size=(13, 2)))
    ]
    name = "trainer_test_stream"
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    yield name, {r["image_id"]: r["width"] > r["height"] for r in records}
    DatasetCatalog.remove(name)


def stream(dataset, start_batch, num_batches, workers, grouping, seed=7):
    cfg = get_cfg()
    add_vit_config(cfg)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN",
            (dataset,),
            "SOLVER.IMS_PER_BATCH",
            3,
            "DATALOADER.NUM_WORKERS",
            workers,
            "DATALOADER.ASPECT_RATIO_GROUPING",
            grouping,
            "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
            False,
            "SEED",
            seed,
        ]
    )
    loader = build_resumable_train_loader(cfg, noisy_mapper, start_batch=start_batch)
    return [[(d["image_id"], d["noise"]) for d in batch] for batch in itertools.islice(loader, num_batches)]


@pytest.mark.parametrize("grouping", [True, False], ids=["aspect-grouping", "plain"])
def test_train_stream_resumes_exactly_whatever_the_workers(stream_dataset, grouping):
    name, landscape = stream_dataset
    full = stream(name, 0, 12, workers=0, grouping=grouping)
    assert len({image for batch in full for image, _ in batch}) == 13
    if grouping:
        # Each batch has one orientation, and both occur: pages wait in their bucket
        # across batch boundaries, which a resumed stream must reproduce.
        orientations = [{landscape[image] for image, _ in batch} for batch in full]
        assert all(len(o) == 1 for o in orientations) and len(set.union(*orientations)) == 2
    # Resumed after 6 batches (with this seed two pages then wait in a bucket), with
    # data-loader workers: the same batches, the same augmentation draws.
    assert stream(name, 6, 6, workers=2, grouping=grouping) == full[6:]
    assert stream(name, 0, 12, workers=0, grouping=grouping, seed=8) != full


def test_missing_ocr_jsons_stop_the_loader_before_training(tmp_path):
    (tmp_path / "0.json").write_text("{}")
    for i in range(3):
        Image.new("RGB", (300, 400), "white").save(tmp_path / f"{i}.png")
    # Page 3 has no image either: it is skipped for its image, not counted as lacking OCR.
    records = [
        {
            "image_id": i,
            "file_name": str(tmp_path / f"{i}.png"),
            "width": 300,
            "height": 400,
            "ocr_file": str(tmp_path / f"{i}.json"),
        }
        for i in range(4)
    ]
    DatasetCatalog.register("trainer_test_ocr_gaps", lambda: copy.deepcopy(records))
    try:
        cfg = get_cfg()
        add_vit_config(cfg)
        cfg.merge_from_list(
            [
                "DATASETS.TRAIN",
                ("trainer_test_ocr_gaps",),
                "SOLVER.IMS_PER_BATCH",
                1,
                "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
                False,
            ]
        )
        with pytest.raises(FileNotFoundError, match=rf"2 of the 4 pages of trainer_test_ocr_gaps .* {tmp_path}/1.json"):
            build_resumable_train_loader(cfg, noisy_mapper)
        for key, value in (("INPUT.OCR.MISSING", "empty"), ("MODEL.IMAGE_ONLY", True)):
            relaxed = cfg.clone()
            relaxed.merge_from_list([key, value])
            assert next(iter(build_resumable_train_loader(relaxed, noisy_mapper)))
    finally:
        DatasetCatalog.remove("trainer_test_ocr_gaps")


@pytest.mark.parametrize("workers", [0, 2])
def test_training_stream_stops_when_pages_cannot_be_read(tmp_path, workers):
    """Git LFS pointer files in place of the images: the stream stops with the count and
    the first pages, in the main process as in data-loader workers."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{i:064x}\nsize 9\n")
    records = [
        {"image_id": i, "file_name": str(tmp_path / f"{i}.png"), "width": 300, "height": 400, "annotations": []}
        for i in range(3)
    ]
    name = f"loader_test_pointers_{workers}"
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    try:
        cfg = get_cfg()
        add_vit_config(cfg)
        options = [
            ("DATASETS.TRAIN", (name,)),
            ("SOLVER.IMS_PER_BATCH", 2),
            ("DATALOADER.NUM_WORKERS", workers),
            ("DATALOADER.FILTER_EMPTY_ANNOTATIONS", False),
            ("DATALOADER.MAX_CONSECUTIVE_UNREADABLE", 7),
            ("MODEL.IMAGE_ONLY", True),
        ]
        cfg.merge_from_list([value for option in options for value in option])
        loader = build_resumable_train_loader(cfg, VLDatasetMapper(cfg, True), seed=0)
        with pytest.raises(UnreadableDatasetError) as error:
            next(iter(loader))
        assert "7 pages in a row could not be read (7 in all in this data-loader process), the first: " in str(
            error.value
        )
        assert f"{tmp_path}/" in str(error.value) and ".png (a Git LFS pointer file, not the image" in str(error.value)
    finally:
        DatasetCatalog.remove(name)
