"""ditod.load_config: the config a tool builds, and its errors."""

import logging
import os

import pytest

from detectron2.config import get_cfg

from conftest import REPO, TINY_TEXT_CONFIG
from ditod import add_vit_config, load_config

# The tiny config and its base as they were before the VERSION 3 renames, verbatim.
OLD_TINY_CONFIG = os.path.join(REPO, "tests", "data", "config_v2", "tiny", "cascade_layoutlmv3_text.yaml")


def test_file_and_overrides_are_merged():
    cfg = load_config(TINY_TEXT_CONFIG, ["SOLVER.MAX_ITER", "7", "MODEL.VIT.ATTENTION", "eager"])
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.VIT.ATTENTION == "eager"
    assert cfg.MODEL.META_ARCHITECTURE == "VLGeneralizedRCNN"  # from the file


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
