import itertools

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import tiny_cfg
from ditod.engine import AccumulatingTrainer, VLTrainer
from ditod.modeling.rcnn_vl import VLGeneralizedRCNN, normalize_token_boxes


def page(num_tokens, size=(320, 256), original=(640, 512), seed=0):
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    instances = Instances(size)
    instances.gt_boxes = Boxes(torch.tensor([[20.0, 20.0, 200.0, 60.0], [30.0, 100.0, 220.0, 280.0]]))
    instances.gt_classes = torch.tensor([1, 4])
    record = {
        "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator),
        "instances": instances,
        "height": original[0],
        "width": original[1],
    }
    if num_tokens is not None:
        xy = torch.rand(num_tokens, 2, generator=generator) * torch.tensor([width - 40.0, height - 20.0])
        record["input_ids"] = torch.randint(3, 300, (num_tokens,), generator=generator)
        record["token_boxes"] = torch.cat([xy, xy + torch.tensor([40.0, 10.0])], dim=1)
    return record


def train_step(model, batch):
    model.train()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    return losses


def test_text_model_trains_and_gradients_reach_gate_embeddings_and_transformer():
    model = build_model(tiny_cfg())
    assert isinstance(model, VLGeneralizedRCNN)
    losses = train_step(model, [page(25, seed=1), page(0, seed=2)])
    assert {"loss_rpn_cls", "loss_cls_stage0", "loss_box_reg_stage2"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    bottom_up = model.backbone.bottom_up
    lm = bottom_up.layoutlmv3
    for name, param in [
        ("visual gate", bottom_up.text_fusion["layer0"].gate_visual.weight),
        ("text gate", bottom_up.text_fusion["layer1"].gate_text.weight),
        ("text projection", bottom_up.text_fusion["layer3"].text_proj.weight),
        ("word embeddings", lm.embeddings.word_embeddings.weight),
        ("layout embeddings", lm.embeddings.x_position_embeddings.weight),
        ("transformer", lm.encoder.layer[0].attention.self.query.weight),
        ("patch embedding", lm.patch_embed.proj.weight),
    ]:
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    # Only the ids of real tokens get gradient: padding never influences anything.
    assert lm.embeddings.word_embeddings.weight.grad[lm.config.pad_token_id].abs().sum() == 0


def test_text_model_trains_under_autocast():
    # AMP mixes dtypes in the pyramid (deconv levels in half precision, LayerNorm-fed
    # levels in float32); CPU autocast (bfloat16) stands in for CUDA's float16.
    model = build_model(tiny_cfg())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = train_step(model, [page(25, seed=1), page(0, seed=2)])
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.backbone.bottom_up.text_fusion["layer3"].gate_text.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "device", [pytest.param("cpu", marks=pytest.mark.slow), pytest.param("cuda", marks=pytest.mark.gpu)], indirect=True
)
def test_tiny_text_model_learns_under_amp(device):
    """20 steps of the tiny text config under AMP, with the trainer's loop and
    optimizer (float16 and a GradScaler on CUDA, as SOLVER.AMP trains; bfloat16 on the
    CPU), on two small pages lower the loss."""
    cfg = tiny_cfg("MODEL.DEVICE", device.type)
    model = build_model(cfg)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    pages = [page(25, size=(160, 128), seed=1), page(40, size=(160, 128), seed=2)]
    for record in pages:
        record["instances"].gt_boxes.scale(0.5, 0.5)  # page()'s boxes are for 320x256
    trainer = AccumulatingTrainer(
        model,
        itertools.repeat(pages),
        VLTrainer.build_optimizer(cfg, model),
        grad_scaler=torch.amp.GradScaler(device.type),
        amp_dtype=amp_dtype,
    )
    trainer.train(0, 20)
    losses = [value for value, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_image_only_model_trains():
    model = build_model(tiny_cfg("MODEL.IMAGE_ONLY", True))
    losses = train_step(model, [page(None, seed=1), page(None, seed=2)])
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.backbone.bottom_up.layoutlmv3.patch_embed.proj.weight.grad.abs().sum() > 0


def test_batch_without_any_tokens_uses_every_text_parameter():
    # DDP needs every parameter in the graph even when no page of the batch has text.
    model = build_model(tiny_cfg())
    train_step(model, [page(None, seed=1), page(0, seed=2)])
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_inference_returns_instances_in_original_coordinates():
    model = build_model(tiny_cfg()).eval()
    with torch.no_grad():
        outputs = model([page(12, original=(640, 512), seed=3), page(0, original=(480, 384), seed=4)])
    assert len(outputs) == 2
    first, second = outputs[0]["instances"], outputs[1]["instances"]
    assert first.image_size == (640, 512) and second.image_size == (480, 384)
    assert {"pred_boxes", "scores", "pred_classes"} <= set(first.get_fields())
    boxes = first.pred_boxes.tensor
    assert len(boxes) > 0
    assert (boxes[:, 2] <= 512).all() and (boxes[:, 3] <= 640).all() and (boxes >= 0).all()


def test_page_results_do_not_depend_on_batch_mates():
    model = build_model(tiny_cfg()).eval()
    target = page(9, seed=5)
    with torch.no_grad():
        alone = model([target])[0]["instances"]
        batched = model([target, page(40, seed=6)])[0]["instances"]
        without_text_mate = model([target, page(None, seed=7)])[0]["instances"]
    for other in (batched, without_text_mate):
        assert len(alone) == len(other)
        assert torch.allclose(alone.scores, other.scores, atol=1e-4)
        assert torch.allclose(alone.pred_boxes.tensor, other.pred_boxes.tensor, atol=1e-2)


def test_backbone_inputs_pad_and_normalize_each_page_to_its_own_size():
    model = build_model(tiny_cfg()).eval()
    pages = [page(3, size=(320, 256)), page(5, size=(256, 320))]
    pages[0]["token_boxes"] = torch.tensor(
        [[0.0, 0.0, 128.0, 160.0], [256.0, 320.0, 256.0, 320.0], [-5.0, 10.0, 300.0, 400.0]]
    )
    images = model.preprocess_image(pages)
    inputs = model.backbone_inputs(pages, images)
    pad = model.backbone.bottom_up.pad_token_id
    assert inputs["input_ids"].shape == (2, 5)
    assert inputs["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert inputs["input_ids"][0, 3:].tolist() == [pad, pad]
    # 0..1000 of each image's own size (not the padded batch size), clamped.
    assert inputs["bbox"][0].tolist()[:3] == [[0, 0, 500, 500], [1000, 1000, 1000, 1000], [0, 31, 1000, 1000]]
    assert inputs["images"].shape[-2:] == (320, 320)


def test_normalize_token_boxes_uses_width_for_x_and_height_for_y():
    boxes = torch.tensor([[[50.0, 25.0, 100.0, 50.0]]])
    normalized = normalize_token_boxes(boxes, torch.tensor([[100, 200]]))  # height 100, width 200
    assert normalized.tolist() == [[[250, 250, 500, 500]]]


def test_mismatched_ids_and_boxes_name_the_page():
    model = build_model(tiny_cfg()).eval()
    bad = page(4)
    bad["token_boxes"] = bad["token_boxes"][:3]
    bad["file_name"] = "pages/p7.png"
    with pytest.raises(ValueError, match="p7.png"), torch.no_grad():
        model([bad])
