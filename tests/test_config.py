"""ditod.load_config: the config a tool builds, and its errors."""

import pytest

from conftest import TINY_TEXT_CONFIG
from ditod import load_config


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
