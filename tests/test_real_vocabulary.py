"""The English path with the real vocabulary of microsoft/layoutlmv3-base (RoBERTa's
byte-level BPE, ../shared/data/roberta-base-tokenizer) on a real PubLayNet page OCRed
with rapidocr: the mapper's tokens are those of transformers' LayoutLMv3Tokenizer, a
base-size model gets the released vocabulary, and the token budget and the reading order
hold on a two-column page."""

import json
import os

import numpy as np
import pytest
import torch

from detectron2.data.detection_utils import read_image

from conftest import REPO, shared_data
from ditod import load_config
from ditod.data import VLDatasetMapper
from ditod.data.ocr import build_ocr_engine, save_ocr
from ditod.data.tokens import OCRTokenizer
from ditod.layoutlmv3 import build_layoutlmv3_config, get_tokenizer, max_text_tokens

TEXT_CONFIG = os.path.join(REPO, "configs", "publaynet", "cascade_layoutlmv3_text.yaml")
# A two-column page of the samples (running header, then two columns of text, no figure).
TWO_COLUMNS = "PMC5432924_00001"


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """The released vocabulary and merges as a LayoutLMv3Tokenizer saved with
    save_pretrained (how its README builds it with transformers 5)."""
    from transformers import LayoutLMv3Tokenizer

    source = shared_data("roberta-base-tokenizer")
    with open(os.path.join(source, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(source, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]
    out = tmp_path_factory.mktemp("roberta-base")
    tokenizer = LayoutLMv3Tokenizer(vocab=vocab, merges=merges)
    tokenizer.save_pretrained(out)
    return str(out), tokenizer


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The two-column sample page, its rapidocr OCR (made once) and its record."""
    samples = shared_data("publaynet-samples")
    with open(os.path.join(samples, "samples.json"), encoding="utf-8") as f:
        coco = json.load(f)
    image_info = next(i for i in coco["images"] if i["file_name"].startswith(TWO_COLUMNS))
    file_name = os.path.join(samples, image_info["file_name"])
    ocr = build_ocr_engine("rapidocr")(read_image(file_name, format="RGB"))
    path = tmp_path_factory.mktemp("ocr") / f"{TWO_COLUMNS}.json"
    save_ocr(path, ocr)
    record = {
        "file_name": file_name,
        "ocr_file": str(path),
        "image_id": image_info["id"],
        "height": image_info["height"],
        "width": image_info["width"],
    }
    regions = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_info["id"]]
    return record, ocr, regions


def english_cfg(tokenizer_dir, *overrides):
    """The PubLayNet text config with the real tokenizer and a base-size model built from
    the size keys (no hub)."""
    return load_config(
        TEXT_CONFIG,
        ["MODEL.VIT.PRETRAINED", "", "MODEL.VIT.TOKENIZER", tokenizer_dir, "MODEL.DEVICE", "cpu", *overrides],
    )


def test_base_model_gets_the_released_vocabulary_and_padding(roberta):
    tokenizer_dir, _ = roberta
    cfg = english_cfg(tokenizer_dir)
    config = build_layoutlmv3_config(cfg, get_tokenizer(cfg))
    # microsoft/layoutlmv3-base's config.json
    assert (config.vocab_size, config.pad_token_id, config.hidden_size) == (50265, 1, 768)
    assert max_text_tokens(config) == 512
    assert OCRTokenizer.from_config(cfg).max_tokens == 510
    assert OCRTokenizer.from_config(english_cfg(tokenizer_dir, "INPUT.OCR.ADD_SPECIAL_TOKENS", True)).max_tokens == 510


def resized_line_boxes(ocr, out, record):
    """The OCR line boxes (x0, y0, x1, y1) on the page as the test mapper resized it."""
    height, width = out["image"].shape[1:]
    scale = np.array([width / record["width"], height / record["height"]] * 2)
    return torch.as_tensor(ocr.boxes_xyxy() * scale, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("special", [False, True])
def test_mapper_tokens_are_layoutlmv3_tokenizers(roberta, page, special):
    """For the page's OCR lines in OCR order: the mapper's input_ids are what
    LayoutLMv3Tokenizer gives for the same words with boxes (cut to the token budget),
    and every token carries its line's box."""
    tokenizer_dir, tokenizer = roberta
    record, ocr, _ = page
    cfg = english_cfg(tokenizer_dir, "INPUT.OCR.ORDER", "ocr", "INPUT.OCR.ADD_SPECIAL_TOKENS", special)
    out = VLDatasetMapper(cfg, is_train=False)(dict(record))

    words, owners = [], []
    for index, line in enumerate(ocr.words):
        words += line.split()
        owners += [index] * len(line.split())
    # The line index as each word's box, to see which line a reference token comes from.
    reference = tokenizer(words, boxes=[[i, 0, 0, 0] for i in owners], add_special_tokens=False)
    assert len(reference["input_ids"]) > 510, "the page should fill the budget"
    expected = reference["input_ids"][:510]
    lines = [box[0] for box in reference["bbox"][:510]]
    ids = out["input_ids"].tolist()
    if special:
        assert (ids[0], ids[-1]) == (tokenizer.cls_token_id, tokenizer.sep_token_id) == (0, 2)
        assert tokenizer(words[:3], boxes=[[0, 0, 0, 0]] * 3)["input_ids"][0] == ids[0]
        assert out["token_boxes"][[0, -1]].abs().sum() == 0
        ids, token_boxes = ids[1:-1], out["token_boxes"][1:-1]
    else:
        token_boxes = out["token_boxes"]
    assert ids == expected
    line_boxes = resized_line_boxes(ocr, out, record)[lines]
    assert torch.allclose(token_boxes, line_boxes, atol=1e-3)


@pytest.mark.slow
def test_budget_and_reading_order_on_a_two_column_page(roberta, page):
    tokenizer_dir, _ = roberta
    record, ocr, regions = page
    # The first 4 tokens of each line (as configs/tiny does), so that the budget reaches
    # into the right column; the page has more than that.
    budget = 400
    cfg = english_cfg(tokenizer_dir, "INPUT.OCR.MAX_TOKENS", budget, "INPUT.OCR.MAX_TOKENS_PER_LINE", 4)
    mapper = VLDatasetMapper(cfg, is_train=False)
    out = mapper(dict(record))
    assert len(out["input_ids"]) == budget

    # The line of each token, from its box (resized with the page).
    line_boxes = resized_line_boxes(ocr, out, record)
    token_lines = [int(torch.isclose(line_boxes, box, atol=1e-3).all(1).nonzero()[0]) for box in out["token_boxes"]]
    order = list(dict.fromkeys(token_lines))  # lines in the order their tokens come

    def column_of(line):
        x0, y0, x1, y1 = ocr.boxes_xyxy()[line]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        for x, y, w, h in regions:
            if x <= cx <= x + w and y <= cy <= y + h:
                return "left" if x + w < record["width"] / 2 else "right" if x > record["width"] / 2 else None
        return None

    columns = [column_of(line) for line in order]
    assert "left" in columns and "right" in columns
    # Down the left column, then down the right one; the budget is spent in that order.
    assert max(i for i, c in enumerate(columns) if c == "left") < min(i for i, c in enumerate(columns) if c == "right")
    line_ids = mapper.ocr_tokenizer.line_ids
    left = [line for line in range(len(ocr.words)) if column_of(line) == "left" and line_ids(ocr.words[line])]
    right = [line for line in range(len(ocr.words)) if column_of(line) == "right" and line_ids(ocr.words[line])]
    assert set(left) <= set(order), "every left-column line comes before the budget runs out"
    assert not set(right) <= set(order), "the budget runs out in the right column"
    for column in ("left", "right"):
        tops = [ocr.boxes_xyxy()[line][1] for line in order if column_of(line) == column]
        assert tops == sorted(tops), f"{column} column read top to bottom"
    # Lines inside the budget are whole but the last one.
    for line in order[:-1]:
        assert token_lines.count(line) == len(line_ids(ocr.words[line]))
