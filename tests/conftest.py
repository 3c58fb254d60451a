import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TEXT_CONFIG = os.path.join(REPO, "configs", "tiny", "cascade_layoutlmv3_text.yaml")


def tiny_cfg(*overrides):
    """The tiny CPU config without a tokenizer (vocabulary from MODEL.VIT.VOCAB_SIZE)."""
    from ditod import load_config

    return load_config(TINY_TEXT_CONFIG, ["MODEL.VIT.VOCAB_SIZE", 300, *overrides])


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
