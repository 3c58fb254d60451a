import json
import logging
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import LayoutLMv3Tokenizer

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from conftest import tiny_cfg, tiny_layoutlmv3
from ditod.data import register_vl_coco
from ditod.data.tokens import train_tokenizer
from ditod.engine.checkpoint import VLDetectionCheckpointer, WeightsError, checkpoint_info
from ditod.layoutlmv3 import load_tokenizer

# A narrower LayoutLMv3 than the tiny config's (hidden 48).
NARROW = dict(hidden_size=48, intermediate_size=96, coordinate_size=8, shape_size=8)


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
    source = tiny_layoutlmv3(**NARROW).eval()
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
    total = len(target.state_dict())
    assert (
        f"(a checkpoint of the original LayoutLMv3 detection code): loaded {total} of the model's {total}"
        in caplog.text
    )
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
    assert "loaded 157 of the model's 158 tensors; new (not in the file): 1, roi_heads.box_predictor.0" in caplog.text
    assert "ignored (not in the model): 1, some.unknown.weight" in caplog.text
    assert (
        "another shape, file vs model): 1, roi_heads.box_predictor.0.cls_score.weight (6, 256) vs (11, 256)"
        in caplog.text
    )
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
    # So does checkpoint_info, without a model; a file of weights alone has nothing else.
    assert checkpoint_info(str(tmp_path / "after.pth")) == extras
    assert checkpoint_info(str(tmp_path / "before.pth")) == {}


# ------------------------------------------------------ Hugging Face weights files
TRANSFORMER = "backbone.bottom_up.layoutlmv3."


def write_huggingface_weights(model, folder, form, prefix):
    """The weights as a user has them: `form` "bin" (pytorch_model.bin), "safetensors"
    (model.safetensors) or "directory" (save_pretrained); keys with or without the
    "layoutlmv3." prefix of transformers' task models, which also have a head."""
    folder.mkdir(parents=True, exist_ok=True)
    if form == "directory":
        model.save_pretrained(folder)
        return folder
    state = {("layoutlmv3." if prefix else "") + k: v.contiguous() for k, v in model.state_dict().items()}
    if prefix:
        state["classifier.weight"] = torch.zeros(3, model.config.hidden_size)
    if form == "bin":
        torch.save(state, folder / "pytorch_model.bin")
        return folder / "pytorch_model.bin"
    save_file(state, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


@pytest.mark.parametrize(
    "form, prefix", [("bin", True), ("bin", False), ("safetensors", True), ("safetensors", False), ("directory", False)]
)
def test_huggingface_weights_go_into_the_transformer(tmp_path, caplog, form, prefix):
    source = tiny_layoutlmv3()
    path = write_huggingface_weights(source, tmp_path / "hf", form, prefix)
    torch.manual_seed(2)
    target = build_model(tiny_cfg())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    query = TRANSFORMER + "encoder.layer.2.attention.self.query.weight"
    assert not torch.allclose(before[query], source.state_dict()["encoder.layer.2.attention.self.query.weight"])

    with caplog.at_level(logging.INFO, logger="ditod.engine.checkpoint"):
        VLDetectionCheckpointer(target).load(str(path))
    after = target.state_dict()
    for name, value in source.state_dict().items():
        assert torch.equal(after[TRANSFORMER + name], value), name
    # Everything else (pyramid, fusion, FPN, heads) keeps its fresh initialisation.
    others = [k for k in after if not k.startswith(TRANSFORMER)]
    assert any(k.startswith("roi_heads.") for k in others) and any("text_fusion" in k for k in others)
    for name in others:
        assert torch.equal(after[name], before[name]), name
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Weights from"))
    assert "Hugging Face LayoutLMv3 weights" in summary
    assert f"loaded {len(source.state_dict())} of the model's {len(after)} tensors" in summary
    assert f"new (not in the file): {len(others)}, backbone.fpn_lateral" in summary
    if prefix:
        assert "ignored (not in the model): 1, classifier.weight" in summary


def test_patch_position_embeddings_of_another_grid_are_resized(tmp_path):
    # Pre-trained at 448 px: a 28 x 28 grid of patch position embeddings, ours is 14 x 14.
    source = tiny_layoutlmv3(input_size=448)
    path = write_huggingface_weights(source, tmp_path / "hf", "safetensors", prefix=False)
    target = build_model(tiny_cfg())
    VLDetectionCheckpointer(target).load(str(path))
    loaded = target.backbone.bottom_up.layoutlmv3.pos_embed
    stored = source.pos_embed.detach()
    grid = stored[:, 1:].reshape(1, 28, 28, 96).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(14, 14), mode="bicubic", align_corners=False)
    assert loaded.shape == (1, 197, 96)
    assert torch.equal(loaded[:, :1], stored[:, :1])  # the [CLS] position is kept
    assert torch.allclose(loaded[:, 1:], expected.flatten(2).transpose(1, 2), atol=1e-6)


def test_weights_that_fit_nothing_stop_with_what_the_file_is(tmp_path):
    target = build_model(tiny_cfg())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    # LayoutLMv3 weights of another size (hidden 48): every tensor has another shape.
    other_size = write_huggingface_weights(tiny_layoutlmv3(**NARROW), tmp_path / "small", "bin", True)
    with pytest.raises(WeightsError, match=rf"{other_size}: none of its .* Hugging Face LayoutLMv3 weights .*"):
        VLDetectionCheckpointer(target).load(str(other_size))
    with pytest.raises(WeightsError, match="MODEL.VIT.PRETRAINED"):
        VLDetectionCheckpointer(target).load(str(other_size))
    # Weights of something else entirely.
    torch.save({"bert.pooler.dense.weight": torch.zeros(4, 4)}, tmp_path / "bert.bin")
    with pytest.raises(WeightsError, match=r"bert.bin: .*names mean nothing.*bert.pooler.dense.weight.*MODEL.WEIGHTS"):
        VLDetectionCheckpointer(target).load(str(tmp_path / "bert.bin"))
    # A directory without weights (here a tokenizer's).
    train_tokenizer(["layout analysis finds titles"] * 20, tmp_path / "tokenizer", vocab_size=270)
    with pytest.raises(WeightsError, match=r"tokenizer: a directory given as weights must hold .*MODEL.VIT.TOKENIZER"):
        VLDetectionCheckpointer(target).load(str(tmp_path / "tokenizer"))
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_model_zoo_pickles_of_arrays_load(tmp_path):
    weight, bias = np.arange(6, dtype=np.float32).reshape(3, 2), np.array([1.0, 2.0, 3.0], dtype=np.float32)
    # Detectron2's model-zoo form, and Caffe2's flat dict of blobs (matched by name heuristics).
    with open(tmp_path / "detectron2.pkl", "wb") as f:
        pickle.dump({"model": {"weight": weight, "bias": bias}, "__author__": "test"}, f)
    with open(tmp_path / "caffe2.pkl", "wb") as f:
        pickle.dump({"blobs": {"weight": weight, "bias": bias, "weight_momentum": weight}}, f, protocol=2)
    for name in ("detectron2.pkl", "caffe2.pkl"):
        model = torch.nn.Linear(2, 3)
        VLDetectionCheckpointer(model).load(str(tmp_path / name))
        assert torch.equal(model.weight.detach(), torch.from_numpy(weight)), name
        assert torch.equal(model.bias.detach(), torch.from_numpy(bias)), name


# ------------------------------------------------------------ tokenizer records
def same_size_other_vocabulary(source_dir, out_dir):
    """The tokenizer of `source_dir` with two tokens' ids swapped: as many tokens, other ids."""
    model = json.loads((source_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]
    vocab, merges = model["vocab"], [tuple(merge) for merge in model["merges"]]
    tokens = {i: token for token, i in vocab.items()}
    vocab[tokens[100]], vocab[tokens[200]] = 200, 100
    LayoutLMv3Tokenizer(vocab=vocab, merges=merges).save_pretrained(out_dir)
    return out_dir


def test_checkpoints_record_their_tokenizer_and_loading_checks_it(tmp_path, caplog):
    texts = ["layout analysis finds titles captions and tables"] * 20
    train_tokenizer(texts, tmp_path / "tokenizer", vocab_size=280)
    other = same_size_other_vocabulary(tmp_path / "tokenizer", tmp_path / "other")
    assert len(load_tokenizer(str(other))) == len(load_tokenizer(str(tmp_path / "tokenizer")))

    model = build_model(tiny_cfg("MODEL.VIT.TOKENIZER", str(tmp_path / "tokenizer")))
    VLDetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    saved = torch.load(tmp_path / "model.pth", weights_only=True)["tokenizer"]
    assert saved["name"] == str(tmp_path / "tokenizer") and saved["vocab_size"] == 280
    assert len(saved["vocab_sha256"]) == 64
    weights = str(tmp_path / "model.pth")

    # The same tokenizer: loads without a word.
    with caplog.at_level(logging.WARNING, logger="ditod.engine.checkpoint"):
        same = build_model(tiny_cfg("MODEL.VIT.TOKENIZER", str(tmp_path / "tokenizer")))
        assert VLDetectionCheckpointer(same).load(weights)["tokenizer"] == saved
    assert "tokenizer" not in caplog.text

    # Another vocabulary of the same size: evaluation and inference stop ...
    other_model = build_model(tiny_cfg("MODEL.VIT.TOKENIZER", str(other)))
    with pytest.raises(
        WeightsError, match=r"model.pth was trained with the tokenizer .*MODEL.VIT.ALLOW_OTHER_TOKENIZER True"
    ):
        VLDetectionCheckpointer(other_model).load(weights)
    # ... training warns and goes on, and so does evaluation when the user says so.
    allowed = build_model(tiny_cfg("MODEL.VIT.TOKENIZER", str(other), "MODEL.VIT.ALLOW_OTHER_TOKENIZER", True))
    for checkpointer in (VLDetectionCheckpointer(other_model, training=True), VLDetectionCheckpointer(allowed)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ditod.engine.checkpoint"):
            checkpointer.load(weights)
        assert "trained with the tokenizer" in caplog.text and str(other) in caplog.text
    # An image-only model reads no tokens: nothing to check.
    VLDetectionCheckpointer(build_model(tiny_cfg("MODEL.IMAGE_ONLY", True))).load(weights)
