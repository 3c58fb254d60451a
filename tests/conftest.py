import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TEXT_CONFIG = os.path.join(REPO, "configs", "tiny", "cascade_layoutlmv3_text.yaml")


def tiny_cfg(*overrides):
    """The tiny CPU config without a tokenizer (vocabulary from MODEL.VIT.VOCAB_SIZE)."""
    from detectron2.config import get_cfg

    import ditod

    cfg = get_cfg()
    ditod.add_vit_config(cfg)
    cfg.merge_from_file(TINY_TEXT_CONFIG)
    cfg.MODEL.VIT.VOCAB_SIZE = 300
    cfg.merge_from_list(list(overrides))
    return cfg


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """The device a test runs on: the CPU, and CUDA (marked gpu, skipped without it)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)
