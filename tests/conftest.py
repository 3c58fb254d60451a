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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Two synthetic pages (400 px high) with OCR, a tokenizer, and the weights of a randomly
    initialised tiny text model: (root folder, config overrides, config); the weights are
    root/weights.pth, the pages root/val/images (COCO json root/val.json, registered as
    infer_val), their OCR root/val/ocr. One per session: the dataset name is registered once."""
    from detectron2.modeling import build_model
    from detectron2.utils.env import seed_all_rng

    from ditod.data import load_ocr, register_from_config, train_tokenizer
    from ditod.data.synthetic import SyntheticOptions, generate_split
    from ditod.engine import VLDetectionCheckpointer

    root = tmp_path_factory.mktemp("tiny_model")
    generate_split(str(root), "val", 2, seed=2, options=SyntheticOptions(height=400))
    lines = [line for path in sorted((root / "val" / "ocr").glob("*.json")) for line in load_ocr(path).words]
    train_tokenizer(lines, str(root / "tokenizer"), vocab_size=400)
    opts = [
        "MODEL.VIT.TOKENIZER",
        str(root / "tokenizer"),
        "DATASETS.REGISTER",
        repr([["infer_val", str(root / "val.json"), str(root / "val" / "images"), ""]]),
        "DATASETS.TEST",
        '("infer_val",)',
    ]
    cfg = tiny_cfg(*opts)
    register_from_config(cfg)
    seed_all_rng(0)
    VLDetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("weights")
    return root, opts, cfg


@pytest.fixture(scope="session")
def two_page_pdf(tmp_path_factory):
    """report.pdf: two 300 x 420 pt pages with a text layer ("Chapter 1", "Chapter 2" and a line)."""
    import pymupdf

    path = tmp_path_factory.mktemp("pdf") / "report.pdf"
    with pymupdf.open() as document:
        for number in (1, 2):
            page = document.new_page(width=300, height=420)
            page.insert_text((30, 50), f"Chapter {number}", fontsize=16)
            page.insert_text((30, 90), "Layout analysis finds the regions of a page.", fontsize=9)
        document.save(path)
    return path


def shared_data(name):
    """
    The folder `name` of ../shared/data next to the repository, where the project keeps
    real data too large or not ours to commit (see its README or SOURCE.md); next to
    the main checkout when the repository is a git worktree. Skips the calling test
    when the folder is absent.
    """
    roots = [os.path.join(REPO, "..")]
    git = os.path.join(REPO, ".git")
    if os.path.isfile(git):  # a worktree: .git says "gitdir: <main checkout>/.git/worktrees/<name>"
        with open(git, encoding="utf-8") as f:
            gitdir = f.read().partition("gitdir:")[2].strip()
        roots.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(gitdir))), ".."))
    for root in roots:
        path = os.path.normpath(os.path.join(root, "shared", "data", name))
        if os.path.isdir(path):
            return path
    pytest.skip(f"needs ../shared/data/{name} next to the repository, which is not there")


def tiny_layoutlmv3(**overrides):
    """A transformers LayoutLMv3Model the size of tiny_cfg()'s transformer (configs/tiny,
    vocabulary 300; `overrides` change its config) with distinctive weights: normal with
    std 0.2 everywhere (transformers starts pos_embed at zero)."""
    from transformers import LayoutLMv3Config, LayoutLMv3Model

    config = dict(
        hidden_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=192,
        coordinate_size=16,
        shape_size=16,
        vocab_size=300,
        max_position_embeddings=514,
        has_relative_attention_bias=False,
        has_spatial_attention_bias=False,
    )
    torch.manual_seed(5)
    model = LayoutLMv3Model(LayoutLMv3Config(**{**config, **overrides}))
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(std=0.2)
    return model


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """The device a test runs on: the CPU, and CUDA (marked gpu, skipped without it)."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)
