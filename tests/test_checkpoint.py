import json
import logging

import torch
from transformers import LayoutLMv3Config, LayoutLMv3Model

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from conftest import tiny_cfg
from ditod.data import register_vl_coco
from ditod.data.tokens import train_tokenizer
from ditod.engine.checkpoint import VLDetectionCheckpointer

SOURCE_CONFIG = dict(
    hidden_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=96,
    coordinate_size=8,
    shape_size=8,
    vocab_size=300,
    has_relative_attention_bias=False,
    has_spatial_attention_bias=False,
)


def sample_inputs():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 224, 224, generator=generator)
    input_ids = torch.randint(3, 300, (2, 6), generator=generator)
    xy = torch.rand(2, 6, 2, generator=generator) * 180
    token_boxes = torch.cat([xy, xy + 20], dim=-1)
    bbox = (token_boxes / 224 * 1000).long()
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    return {
        "images": images,
        "input_ids": input_ids,
        "bbox": bbox,
        "attention_mask": attention_mask,
        "token_boxes": token_boxes,
    }


def test_huggingface_checkpoint_loads_with_from_pretrained_semantics(tmp_path):
    source = LayoutLMv3Model(LayoutLMv3Config(**SOURCE_CONFIG)).eval()
    with torch.no_grad():
        for param in source.parameters():
            param.normal_(std=0.2)
    source.save_pretrained(tmp_path / "hf")
    # A real checkpoint folder holds its tokenizer next to the weights.
    train_tokenizer(["layout analysis finds titles captions and tables"] * 20, tmp_path / "hf", vocab_size=280)

    cfg = tiny_cfg("MODEL.VIT.PRETRAINED", str(tmp_path / "hf"), "MODEL.TEXT_FUSION.MODE", "none")
    model = build_model(cfg).eval()
    loaded = model.backbone.bottom_up.layoutlmv3
    assert loaded.config.hidden_size == 48  # the architecture comes from the checkpoint
    assert loaded.pos_embed.shape == source.pos_embed.shape  # kept at the pre-training grid
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name

    inputs = sample_inputs()
    with torch.no_grad():
        ours = model.backbone.bottom_up(inputs)["layer2"]
        reference = source(
            input_ids=inputs["input_ids"],
            bbox=inputs["bbox"],
            attention_mask=inputs["attention_mask"],
            pixel_values=inputs["images"],
            output_hidden_states=True,
        ).hidden_states[3]
    assert torch.allclose(ours, reference[:, 7:].transpose(1, 2).reshape(2, 48, 14, 14), atol=1e-5)


def to_original_layout(state_dict):
    renamed = {}
    for key, value in state_dict.items():
        key = key.replace("backbone.bottom_up.layoutlmv3.", "backbone.bottom_up.backbone.")
        key = key.replace("backbone.bottom_up.fpn", "backbone.bottom_up.backbone.encoder.fpn")
        renamed[key] = value
    return renamed


def detections(model):
    generator = torch.Generator().manual_seed(3)
    batch = [
        {
            "image": torch.randint(0, 256, (3, 224, 192), dtype=torch.uint8, generator=generator),
            "input_ids": torch.randint(3, 300, (5,), generator=generator),
            "token_boxes": torch.tensor([[10.0, 10.0, 90.0, 30.0]] * 5),
        }
    ]
    with torch.no_grad():
        return model.eval()(batch)[0]["instances"]


def test_original_layout_detection_checkpoint_gives_identical_outputs(tmp_path, caplog):
    torch.manual_seed(1)
    source = build_model(tiny_cfg())
    with torch.no_grad():
        for param in source.backbone.bottom_up.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    state = to_original_layout(source.state_dict())
    assert any(k.startswith("backbone.bottom_up.backbone.encoder.fpn1.") for k in state)
    torch.save({"model": state}, tmp_path / "original.pth")

    torch.manual_seed(2)
    target = build_model(tiny_cfg())
    with caplog.at_level(logging.INFO):
        VLDetectionCheckpointer(target).load(str(tmp_path / "original.pth"))
    assert "original-layout" in caplog.text
    expected, got = detections(source), detections(target)
    assert len(expected) > 0
    assert torch.equal(expected.pred_boxes.tensor, got.pred_boxes.tensor)
    assert torch.equal(expected.scores, got.scores)


def test_own_checkpoint_round_trip_and_shape_mismatch_is_skipped(tmp_path, caplog):
    torch.manual_seed(1)
    source = build_model(tiny_cfg())
    VLDetectionCheckpointer(source, save_dir=str(tmp_path)).save("model_a")
    state = torch.load(tmp_path / "model_a.pth", weights_only=True)
    # A checkpoint trained with another number of classes and an extra key.
    state["model"]["roi_heads.box_predictor.0.cls_score.weight"] = torch.zeros(6, 256)
    state["model"]["some.unknown.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "model_b.pth")

    torch.manual_seed(2)
    target = build_model(tiny_cfg())
    before = target.roi_heads.box_predictor[0].cls_score.weight.clone()
    with caplog.at_level(logging.WARNING):
        VLDetectionCheckpointer(target).load(str(tmp_path / "model_b.pth"))
    assert "incompatible shapes" in caplog.text
    assert "some.unknown.weight" in caplog.text
    assert torch.equal(target.roi_heads.box_predictor[0].cls_score.weight, before)
    assert torch.equal(target.backbone.bottom_up.layoutlmv3.pos_embed, source.backbone.bottom_up.layoutlmv3.pos_embed)


def test_non_checkpoint_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    model = build_model(tiny_cfg())
    try:
        VLDetectionCheckpointer(model).load(str(bad))
    except RuntimeError as error:
        assert "broken.pth" in str(error)
    else:
        raise AssertionError("loading a broken file did not fail")


def test_save_writes_the_class_names_and_category_ids_of_the_training_dataset(tmp_path, caplog):
    # Non-contiguous ids, listed out of order: the classes are ordered by id.
    coco = {
        "images": [{"id": 1, "file_name": "page.png", "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}],
        "categories": [{"id": 12, "name": "Picture"}, {"id": 3, "name": "Paragraph"}, {"id": 7, "name": "Heading"}],
    }
    (tmp_path / "train.json").write_text(json.dumps(coco))
    register_vl_coco("checkpoint_classes_train", str(tmp_path / "train.json"), str(tmp_path))
    model = torch.nn.Linear(2, 2)
    checkpointer = VLDetectionCheckpointer(model, str(tmp_path), dataset_name="checkpoint_classes_train")

    # Before the dataset is loaded its classes are unknown: the checkpoint goes without them.
    with caplog.at_level(logging.WARNING):
        checkpointer.save("before")
    assert "checkpoint_classes_train are not known" in caplog.text
    assert set(torch.load(tmp_path / "before.pth", weights_only=True)) == {"model"}

    DatasetCatalog.get("checkpoint_classes_train")
    checkpointer.save("after", iteration=5)
    saved = torch.load(tmp_path / "after.pth", weights_only=True)
    assert saved["thing_classes"] == ["Paragraph", "Heading", "Picture"]
    assert saved["category_ids"] == [3, 7, 12]
    assert saved["iteration"] == 5
    # load() hands back the non-model entries.
    extras = VLDetectionCheckpointer(torch.nn.Linear(2, 2)).load(str(tmp_path / "after.pth"))
    assert extras == {"thing_classes": ["Paragraph", "Heading", "Picture"], "category_ids": [3, 7, 12], "iteration": 5}
