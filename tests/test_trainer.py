"""The trainer: gradient accumulation (with AMP and full-model clipping), the best
checkpoint across resumes, and exact resume of a real run."""

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.engine import hooks
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from conftest import TINY_TEXT_CONFIG
from ditod import add_vit_config
from ditod.data import register_vl_coco, train_tokenizer
from ditod.data.ocr import load_ocr
from ditod.data.synthetic import SyntheticOptions, generate_split
from ditod.engine import AccumulatingTrainer, VLTrainer

# ------------------------------------------------------------------ accumulation


class MeanLossModel(nn.Module):
    """Losses normalised like detectron2's: a mean over the batch's samples."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
        self.bias = nn.Parameter(torch.tensor(0.1))

    def forward(self, batch):
        x = torch.stack([sample["x"] for sample in batch])
        y = torch.stack([sample["y"] for sample in batch])
        error = (x * self.weight).sum(-1) + self.bias - y
        return {"loss_l2": (error**2).mean(), "loss_l1": error.abs().mean()}


def samples(n):
    generator = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(3, generator=generator), "y": torch.randn((), generator=generator)} for _ in range(n)]


def run(batches, steps, accumulation=1, grad_scaler=None, clip_norm=None, lr=0.05, momentum=0.9):
    """Train MeanLossModel for `steps` optimizer steps; returns the model and the logged scalars."""
    model = MeanLossModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=0.01)
    trainer = AccumulatingTrainer(
        model,
        batches,
        optimizer,
        accumulation_steps=accumulation,
        grad_scaler=grad_scaler,
        amp_dtype=torch.bfloat16,
        clip_norm=clip_norm,
    )
    trainer.train(0, steps)
    history = {name: [v for v, _ in values.values()] for name, values in trainer.storage.histories().items()}
    return model, history


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_two_micro_batches_of_one_equal_one_batch_of_two(amp):
    # With losses that are means over the batch, loss/2 of each of two micro-batches
    # adds up to the gradient of the batch of two. (In the detector this holds for
    # the RPN and ROI losses, normalised per sampled anchor/proposal, as long as each
    # image yields its full sample; the pyramid's BatchNorm sees fewer images and the
    # random sampling is drawn in another order, so there it is equal in expectation.)
    data = samples(6)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if amp else None
    accumulated, history = run([[s] for s in data], steps=3, accumulation=2, grad_scaler=scaler)
    batched, reference = run([data[i : i + 2] for i in range(0, 6, 2)], steps=3)
    for a, b in zip(accumulated.parameters(), batched.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    # The losses logged for a step are the average over its micro-batches.
    np.testing.assert_allclose(history["loss_l2"], reference["loss_l2"], rtol=1e-6)
    assert len(history["loss_l2"]) == 3
    untouched = MeanLossModel()
    assert not torch.allclose(accumulated.weight, untouched.weight)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp"])
def test_full_model_clipping_acts_on_the_accumulated_unscaled_gradient(amp):
    data = samples(2)
    # The expected gradient: that of the mean loss over both samples.
    model = MeanLossModel()
    sum(model(data).values()).backward()
    expected_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert expected_norm > 0.1

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12) if amp else None
    clipped, history = run(
        [[s] for s in data], steps=1, accumulation=2, grad_scaler=scaler, clip_norm=(0.01, 2.0), lr=1.0, momentum=0.0
    )
    start = MeanLossModel()
    # SGD with lr 1 and no momentum: the update is the clipped gradient (+ weight decay).
    update = torch.cat(
        [
            (p0 - p).detach().flatten() - 0.01 * p0.detach().flatten()
            for p, p0 in zip(clipped.parameters(), start.parameters())
        ]
    )
    assert update.norm().item() == pytest.approx(0.01, rel=1e-4)
    assert history["grad_norm"][0] == pytest.approx(expected_norm.item(), rel=1e-5)


def test_accumulation_steps_must_be_positive():
    model = MeanLossModel()
    with pytest.raises(ValueError, match="GRADIENT_ACCUMULATION_STEPS"):
        AccumulatingTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1), accumulation_steps=0)


# ------------------------------------------------------------------ best checkpoint


class RecordingCheckpointer:
    """Records what a save would write of the hooks' state (as trainer.state_dict does)."""

    def __init__(self):
        self.saves = []
        self.hook = None

    def save(self, name, **extra):
        self.saves.append((name, self.hook.state_dict()))


class FakeTrainer:
    def __init__(self, storage, iteration, max_iter=100):
        self.storage, self.iter, self.max_iter = storage, iteration, max_iter


def evaluate(hook, storage, iteration, ap):
    storage.iter = iteration
    storage.put_scalar("bbox/AP", ap, smoothing_hint=False)
    hook.trainer = FakeTrainer(storage, iteration)
    hook.after_step()


def test_best_checkpoint_survives_resume():
    from ditod.engine.trainer import _BestCheckpointer

    with EventStorage() as storage:
        checkpointer = RecordingCheckpointer()
        hook = checkpointer.hook = _BestCheckpointer(10, checkpointer, "bbox/AP")
        evaluate(hook, storage, 9, 30.0)
        evaluate(hook, storage, 19, 20.0)
        assert [name for name, _ in checkpointer.saves] == ["model_best"]
        # What model_best.pth holds already counts its own score.
        state = checkpointer.saves[0][1]
        assert state == {"best_metric": 30.0, "best_iter": 9}

    with EventStorage(20) as storage:  # resumed from model_best.pth
        checkpointer = RecordingCheckpointer()
        hook = checkpointer.hook = _BestCheckpointer(10, checkpointer, "bbox/AP")
        hook.load_state_dict(state)
        evaluate(hook, storage, 29, 25.0)
        assert checkpointer.saves == []
        evaluate(hook, storage, 39, 35.0)
        assert [s["best_metric"] for _, s in checkpointer.saves] == [35.0]


# ------------------------------------------------------------------ exact resume


@pytest.fixture(scope="module")
def synthetic_train(tmp_path_factory):
    """Four synthetic pages with OCR, registered as a dataset, and a tokenizer trained on them."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_split(str(root), "train", 4, seed=0, options=SyntheticOptions(height=400))
    lines = [line for path in sorted((root / "train" / "ocr").glob("*.json")) for line in load_ocr(path).words]
    train_tokenizer(lines, str(root / "tokenizer"), vocab_size=400)
    name = "trainer_test_synthetic_train"
    register_vl_coco(name, str(root / "train.json"), str(root / "train" / "images"))
    return name, str(root / "tokenizer")


class _Killed(Exception):
    pass


def resume_cfg(dataset, tokenizer, output_dir, workers):
    cfg = get_cfg()
    add_vit_config(cfg)
    cfg.merge_from_file(TINY_TEXT_CONFIG)
    cfg.merge_from_list(
        [
            "MODEL.VIT.TOKENIZER",
            tokenizer,
            "DATASETS.TRAIN",
            (dataset,),
            "DATASETS.TEST",
            (),
            "OUTPUT_DIR",
            output_dir,
            "SEED",
            3,
            "DATALOADER.NUM_WORKERS",
            workers,
            "SOLVER.MAX_ITER",
            3,
            "SOLVER.CHECKPOINT_PERIOD",
            2,
            "SOLVER.WARMUP_ITERS",
            1,
            "SOLVER.IMS_PER_BATCH",
            2,
            "SOLVER.GRADIENT_ACCUMULATION_STEPS",
            2,
            # Every source of randomness on: multi-scale resize, crop, flip, dropout, sampling.
            "INPUT.MIN_SIZE_TRAIN",
            (128, 160, 192),
            "INPUT.MAX_SIZE_TRAIN",
            256,
            "INPUT.CROP.ENABLED",
            True,
            "INPUT.CROP.TYPE",
            "relative_range",
            "INPUT.CROP.SIZE",
            (0.8, 0.8),
            "MODEL.VIT.HIDDEN_DROPOUT",
            0.1,
        ]
    )
    return cfg


@pytest.fixture
def one_thread():
    # The killed run's data-loader workers share the two cores of a small machine with
    # the model: torch's second thread then mostly waits for a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_resumed_run_reaches_the_weights_of_an_uninterrupted_run(synthetic_train, tmp_path, one_thread):
    dataset, tokenizer = synthetic_train

    def trainer(output_dir, workers):
        cfg = resume_cfg(dataset, tokenizer, str(tmp_path / output_dir), workers)
        seed_all_rng(cfg.SEED)  # as default_setup does: the same initial weights
        return VLTrainer(cfg)

    trainer("straight", workers=0).train()

    # Killed during iteration 3 (0-based 2), after the checkpoint of iteration 2.
    killed = trainer("resumed", workers=2)

    def kill(trainer):
        if trainer.iter == 2:
            raise _Killed

    killed.register_hooks([hooks.CallbackHook(before_step=kill)])
    with pytest.raises(_Killed):
        killed.train()
    del killed
    with open(tmp_path / "resumed" / "last_checkpoint") as f:
        assert f.read().strip() == "model_0000001.pth"
    assert not (tmp_path / "resumed" / "model_final.pth").exists()

    # The loader of the resumed run has another number of workers.
    resumed = trainer("resumed", workers=1)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()

    straight = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=True)["model"]
    final = torch.load(tmp_path / "resumed" / "model_final.pth", weights_only=True)["model"]
    assert straight.keys() == final.keys()
    different = [key for key in straight if not torch.equal(straight[key], final[key])]
    assert different == []
    checkpoint = torch.load(tmp_path / "straight" / "model_0000001.pth", weights_only=True)["model"]
    assert any(not torch.equal(checkpoint[key], straight[key]) for key in straight)
