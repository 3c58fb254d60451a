"""ditod.load_config: the config a tool builds, and its errors."""

import logging
import os

import pytest
import torch
import yaml
from transformers import AutoTokenizer, LayoutLMv3Config

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from conftest import REPO, TINY_TEXT_CONFIG
from ditod import add_vit_config, load_config
from ditod.data import register_all_builtin, register_from_config, train_tokenizer
from ditod.engine import build_optimizer

# The tiny config and its base as they were before the VERSION 3 renames, verbatim.
OLD_TINY_CONFIG = os.path.join(REPO, "tests", "data", "config_v2", "tiny", "cascade_layoutlmv3_text.yaml")


def test_file_and_overrides_are_merged():
    cfg = load_config(TINY_TEXT_CONFIG, ["SOLVER.MAX_ITER", "7", "MODEL.VIT.ATTENTION", "eager"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.VIT.ATTENTION == "eager"
    assert cfg.MODEL.META_ARCHITECTURE == "VLGeneralizedRCNN"  # from the file


def test_a_dumped_config_loads_again(tmp_path):
    # detectron2 dumps the full config as OUTPUT_DIR/config.yaml, and tools/export.py
    # beside the exported model: both are configs a user runs again (--config-file).
    cfg = load_config(TINY_TEXT_CONFIG, ["SOLVER.MAX_ITER", "7"])
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    # Compared as plain values: nested tuples (the cascade's weights) come back as lists.
    assert yaml.safe_load(load_config(str(dumped)).dump()) == yaml.safe_load(cfg.dump())


def test_a_config_dumped_with_the_old_model_kwargs_loads(tmp_path, caplog):
    # ditod dumped MODEL.VIT.MODEL_KWARGS as '{}' until 2026-12-07, which yacs reads back
    # as a dict; the key means nothing here, so the file loads as if it lacked it.
    cfg = load_config(TINY_TEXT_CONFIG, ["SOLVER.MAX_ITER", "7"])
    cfg.MODEL.VIT.MODEL_KWARGS = "{}"
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    assert "MODEL_KWARGS: '{}'" in dumped.read_text()
    with caplog.at_level(logging.WARNING, logger="ditod.config"):
        loaded = load_config(str(dumped))
    assert loaded.MODEL.VIT.MODEL_KWARGS == "" and loaded.SOLVER.MAX_ITER == 7
    assert loaded.MODEL.ROI_HEADS.NAME == cfg.MODEL.ROI_HEADS.NAME
    assert not [r for r in caplog.records if "MODEL_KWARGS" in r.getMessage()]


def test_a_dict_model_kwargs_over_a_base_is_reported_as_ignored(tmp_path, caplog):
    config = tmp_path / "unilm.yaml"
    config.write_text(f'_BASE_: "{UNILM_CONFIG}"\nMODEL:\n  VIT:\n    MODEL_KWARGS: "{{\'use_abs_pos_emb\': True}}"\n')
    with caplog.at_level(logging.WARNING, logger="ditod.config"):
        cfg = load_config(str(config), ["SOLVER.MAX_ITER", "3"])
        load_config(str(config))
    assert cfg.MODEL.VIT.MODEL_KWARGS == "" and cfg.SOLVER.MAX_ITER == 3
    # The base's settings and its upgrade from VERSION 2 still apply.
    assert yaml.safe_load(cfg.dump()) == yaml.safe_load(load_config(UNILM_CONFIG, ["SOLVER.MAX_ITER", "3"]).dump())
    (message,) = [r.getMessage() for r in caplog.records if "MODEL_KWARGS" in r.getMessage()]
    assert message.startswith(
        f"{config}: config key MODEL.VIT.MODEL_KWARGS (\"{{'use_abs_pos_emb': True}}\") is ignored"
    )


@pytest.mark.parametrize(
    "config_file, opts, message",
    [
        ("missing.yaml", [], "config file missing.yaml does not exist"),
        (TINY_TEXT_CONFIG, ["SOLVER.MAX_ITERS", "7"], "Non-existent key: SOLVER.MAX_ITERS"),
        (TINY_TEXT_CONFIG, ["SOLVER.MAX_ITER", "many"], "for config key: SOLVER.MAX_ITER"),
        (TINY_TEXT_CONFIG, ["SOLVER.MAX_ITER"], "KEY VALUE pairs"),
        (TINY_TEXT_CONFIG, ["SOLVER.MAX_ITER", "7", "--resume"], "--resume comes after the KEY VALUE config overrides"),
    ],
)
def test_errors_name_the_file_or_the_override(config_file, opts, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_config(config_file, opts)


def test_unknown_key_in_the_file(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f'_BASE_: "{TINY_TEXT_CONFIG}"\nMODEL:\n  VIT:\n    HIDEN_SIZE: 96\n')
    with pytest.raises(ValueError, match=f"config file {config}: .*MODEL.VIT.HIDEN_SIZE"):
        load_config(str(config))


def test_config_of_version_2_is_upgraded_with_a_notice_per_old_key(caplog):
    with caplog.at_level(logging.WARNING, logger="ditod.config"):
        old = load_config(OLD_TINY_CONFIG)
    notices = [r.getMessage() for r in caplog.records if r.name == "ditod.config"]
    # The old tiny config uses two of the renamed keys (AUG.DETR via its base).
    assert len(notices) == 2, notices
    assert any("INPUT.OCR.MAX_TOKENS_PER_WORD is now INPUT.OCR.MAX_TOKENS_PER_LINE" in n for n in notices)
    assert any("AUG.DETR is now INPUT.CROP.DETR_STYLE" in n for n in notices)
    assert old.INPUT.OCR.MAX_TOKENS_PER_LINE == 4 and old.INPUT.CROP.DETR_STYLE is False
    # The old files mean what the new ones say, key for key, except for the lists that
    # now default to MODEL.VIT.OUT_FEATURES.
    new = load_config(TINY_TEXT_CONFIG)
    assert old.MODEL.FPN.IN_FEATURES == old.MODEL.VIT.OUT_FEATURES == new.MODEL.VIT.OUT_FEATURES
    old.MODEL.FPN.IN_FEATURES = old.MODEL.TEXT_FUSION.LEVELS = []
    assert old == new


def test_detectron2_merge_from_file_upgrades_too():
    # The plain detectron2 way: get_cfg, add_vit_config, merge_from_file.
    cfg = get_cfg()
    add_vit_config(cfg)
    cfg.merge_from_file(OLD_TINY_CONFIG)
    assert cfg.VERSION == 3 and cfg.INPUT.OCR.MAX_TOKENS_PER_LINE == 4 and "AUG" not in cfg


def test_detectron2_configs_without_ditod_keys_still_load(tmp_path):
    config = tmp_path / "plain.yaml"
    config.write_text("VERSION: 2\nMODEL:\n  MASK_ON: True\nSOLVER:\n  BASE_LR: 0.5\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(config))
    assert cfg.MODEL.MASK_ON and cfg.SOLVER.BASE_LR == 0.5


@pytest.mark.parametrize("place", ["file", "override"])
def test_old_key_in_a_version_3_config_names_its_new_name(tmp_path, place):
    config = tmp_path / "new.yaml"
    text = f'_BASE_: "{TINY_TEXT_CONFIG}"\n'
    if place == "file":
        text += "INPUT:\n  OCR:\n    MAX_TOKENS_PER_WORD: 3\n"
    config.write_text(text)
    opts = ["INPUT.OCR.MAX_TOKENS_PER_WORD", 3] if place == "override" else []
    with pytest.raises(ValueError, match="INPUT.OCR.MAX_TOKENS_PER_WORD is now INPUT.OCR.MAX_TOKENS_PER_LINE"):
        load_config(str(config), opts)


# unilm's layoutlmv3/examples/object_detection/cascade_layoutlmv3.yaml (the published
# LayoutLMv3-base PubLayNet recipe): its keys and values, in its order, without its comments.
UNILM_CONFIG = os.path.join(REPO, "tests", "data", "unilm", "cascade_layoutlmv3.yaml")


@pytest.fixture
def builtin_publaynet():
    """Put the built-in PubLayNet registration back after a test that replaces it."""
    yield
    for name in ("publaynet_train", "publaynet_val"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_all_builtin()


def test_unilm_published_config_loads_and_builds(caplog, builtin_publaynet):
    with caplog.at_level(logging.WARNING, logger="ditod.config"):
        cfg = load_config(UNILM_CONFIG)
    notices = [r.getMessage() for r in caplog.records if r.name == "ditod.config"]
    assert any("MODEL.VIT.IMG_SIZE is now MODEL.VIT.INPUT_SIZE" in n for n in notices), notices
    assert any("AUG.DETR is now INPUT.CROP.DETR_STYLE" in n for n in notices), notices
    # Every key means here what it meant there.
    assert cfg.MODEL.VIT.DROP_PATH == 0.1 and cfg.MODEL.VIT.INPUT_SIZE == 224 and cfg.MODEL.VIT.POS_TYPE == "abs"
    assert cfg.MODEL.MASK_ON and cfg.MODEL.IMAGE_ONLY and cfg.INPUT.CROP.DETR_STYLE
    assert cfg.CACHE_DIR == "/path/to/cache/huggingface" and cfg.MODEL.VIT.PRETRAINED == ""
    register_from_config(cfg)
    for name, split in (("publaynet_train", "train"), ("publaynet_val", "val")):
        metadata = MetadataCatalog.get(name)
        assert metadata.json_file == f"/path/to/data/PubLayNet/publaynet/{split}.json"
        assert metadata.image_root == f"/path/to/data/PubLayNet/publaynet/{split}"
        assert metadata.ocr_root == f"/path/to/data/PubLayNet/publaynet/ocr/{split}"
        assert metadata.thing_classes == ["text", "title", "list", "table", "figure"]

    # A narrow model of the same shape (12 layers, the same taps), built without the hub.
    small = ["MODEL.VIT.NAME", "layoutlmv3_custom", "MODEL.VIT.HIDDEN_SIZE", 48, "MODEL.VIT.NUM_HEADS", 4]
    cfg = load_config(
        UNILM_CONFIG, [*small, "MODEL.VIT.INTERMEDIATE_SIZE", 96, "MODEL.VIT.PRETRAINED", "", "MODEL.DEVICE", "cpu"]
    )
    model = build_model(cfg)
    assert model.roi_heads.mask_on and len(model.roi_heads.box_predictor) == 3
    layers = model.backbone.bottom_up.layoutlmv3.encoder.layer
    assert len(layers) == 12 and layers[-1].output.dropout[1].drop_prob == pytest.approx(0.1)
    assert isinstance(build_optimizer(cfg, model), torch.optim.AdamW)  # "ADAMW"


def test_unilm_keys_without_a_meaning_here_are_reported_once(tmp_path, caplog):
    config = tmp_path / "unilm.yaml"
    config.write_text(
        f'_BASE_: "{UNILM_CONFIG}"\nMODEL:\n  CONFIG_PATH: "/models/layoutlmv3-base"\n'
        "  VIT:\n    MODEL_KWARGS: \"`{'use_abs_pos_emb': True}`\"\nICDAR_DATA_DIR_TRAIN: /data/icdar/train\n"
    )
    with caplog.at_level(logging.WARNING, logger="ditod.config"):
        load_config(str(config))
        load_config(str(config))
    ignored = [r.getMessage() for r in caplog.records if "is ignored" in r.getMessage()]
    assert len(ignored) == 3, ignored
    assert any(m.startswith("config key MODEL.CONFIG_PATH ('/models/layoutlmv3-base') is ignored:") for m in ignored)
    assert any("ICDAR_DATA_DIR_TRAIN" in m and "DATASETS.REGISTER" in m for m in ignored)
    assert any("MODEL.VIT.MODEL_KWARGS" in m and "BEiT/DiT" in m for m in ignored)
    # Values equal to the defaults change nothing and are not reported.
    config.write_text(f'_BASE_: "{UNILM_CONFIG}"\nMODEL:\n  CONFIG_PATH: ""\n')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ditod.config"):
        load_config(str(config))
    assert "is ignored" not in caplog.text


def test_image_size_of_a_version_2_file(tmp_path):
    config = tmp_path / "v2.yaml"
    config.write_text(f'_BASE_: "{UNILM_CONFIG}"\nMODEL:\n  VIT:\n    IMG_SIZE: [384, 384]\n')
    assert load_config(str(config)).MODEL.VIT.INPUT_SIZE == 384
    # This project's own VERSION 2 files named it INPUT_SIZE.
    config.write_text(f'_BASE_: "{OLD_TINY_CONFIG}"\nMODEL:\n  VIT:\n    INPUT_SIZE: 448\n')
    assert load_config(str(config)).MODEL.VIT.INPUT_SIZE == 448
    config.write_text(f'_BASE_: "{UNILM_CONFIG}"\nMODEL:\n  VIT:\n    IMG_SIZE: [224, 320]\n')
    with pytest.raises(ValueError, match=f"config file {config}: MODEL.VIT.IMG_SIZE .* square"):
        load_config(str(config))
    with pytest.raises(ValueError, match="MODEL.VIT.IMG_SIZE is now MODEL.VIT.INPUT_SIZE"):
        load_config(TINY_TEXT_CONFIG, ["MODEL.VIT.IMG_SIZE", "[224, 224]"])


def test_relative_position_types_are_refused():
    with pytest.raises(ValueError, match="MODEL.VIT.POS_TYPE must be 'abs'"):
        build_model(load_config(TINY_TEXT_CONFIG, ["MODEL.VIT.POS_TYPE", "shared_rel", "MODEL.VIT.VOCAB_SIZE", 300]))


def test_cache_dir_is_where_hugging_face_downloads_go(tmp_path, monkeypatch):
    import ditod.layoutlmv3 as layoutlmv3

    calls = []

    def recording(load):
        def wrapper(name, **kwargs):
            calls.append((name, kwargs.get("cache_dir")))
            return load(name, **kwargs)

        return wrapper

    train_tokenizer(["layout analysis finds titles"] * 20, tmp_path / "hf", vocab_size=270)
    LayoutLMv3Config(hidden_size=48, num_attention_heads=4, intermediate_size=96, vocab_size=270).save_pretrained(
        tmp_path / "hf"
    )
    monkeypatch.setattr(layoutlmv3.AutoTokenizer, "from_pretrained", recording(AutoTokenizer.from_pretrained))
    monkeypatch.setattr(layoutlmv3.LayoutLMv3Config, "from_pretrained", recording(LayoutLMv3Config.from_pretrained))
    layoutlmv3.load_tokenizer.cache_clear()
    layoutlmv3._pretrained_config.cache_clear()
    cfg = load_config(
        TINY_TEXT_CONFIG, ["MODEL.VIT.PRETRAINED", str(tmp_path / "hf"), "CACHE_DIR", str(tmp_path / "c")]
    )
    layoutlmv3.build_layoutlmv3_config(cfg, layoutlmv3.get_tokenizer(cfg))
    assert calls == [(str(tmp_path / "hf"), str(tmp_path / "c"))] * 2
    layoutlmv3.load_tokenizer.cache_clear()
    layoutlmv3._pretrained_config.cache_clear()
