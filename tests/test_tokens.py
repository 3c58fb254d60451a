"""Tokenizer training, page encoding (budget, drops, special tokens, cache), reading order."""

import importlib.util
import json
import logging
import os
import random

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LayoutLMv3Config

from detectron2.layers import ShapeSpec

from conftest import tiny_cfg
from ditod.data.reading_order import reading_order
from ditod.data.tokens import OCRTokenizer, train_tokenizer
from ditod.layoutlmv3 import build_layoutlmv3_config, load_tokenizer, max_text_tokens
from ditod.modeling import build_vit_fpn_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGLISH = [
    "layout",
    "analysis",
    "finds",
    "the",
    "regions",
    "of",
    "a",
    "page",
    "table",
    "figure",
    "caption",
    "introduction",
    "results",
    "method",
    "we",
    "propose",
    "model",
    "text",
    "title",
    "header",
    "footer",
    "reference",
    "equation",
    "document",
    "detection",
]
CHINESE = "文档版面分析是识别页面中的文本标题表格图片公式页眉页脚参考文献区域的任务我们提出一个多模态模型"


def english_corpus(n=400, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(ENGLISH) for _ in range(rng.randint(3, 10))) for _ in range(n)]


def chinese_corpus(n=400, seed=0):
    rng = random.Random(seed)
    lines = ["".join(rng.choice(CHINESE) for _ in range(rng.randint(2, 12))) for _ in range(n)]
    return lines + english_corpus(50, seed)


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    train_tokenizer(english_corpus(), out, vocab_size=400, kind="bpe")
    return str(out)


@pytest.fixture(scope="module")
def bpe(bpe_dir):
    return AutoTokenizer.from_pretrained(bpe_dir)


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    out = tmp_path_factory.mktemp("spm")
    train_tokenizer(chinese_corpus(), out, vocab_size=300, kind="sentencepiece")
    return AutoTokenizer.from_pretrained(str(out))


def test_trained_tokenizers_load_like_released_ones(bpe, spm):
    assert type(bpe).__name__ == "LayoutLMv3Tokenizer"
    assert type(spm).__name__ == "XLMRobertaTokenizer"
    for tok in (bpe, spm):
        assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
        assert tok.mask_token_id is not None
    # Byte-level BPE: every word starts with the "Ġ" prefix, like LayoutLMv3-base.
    ids = bpe(["analysis"], boxes=[[0, 0, 0, 0]], add_special_tokens=False)["input_ids"]
    assert bpe.convert_ids_to_tokens(ids)[0].startswith("Ġ")


def test_encoding_matches_layoutlmv3_processor(bpe):
    """Words are tokenized as LayoutLMv3's tokenizer does with pre-split words and boxes."""
    encoder = OCRTokenizer(bpe, max_tokens=1000, order="ocr")
    lines = ["Layout analysis finds", "the  Table 2:", "regions, of a-page"]
    boxes = np.array([[10, 10, 200, 20], [10, 30, 100, 40], [10, 50, 300, 60]], dtype=float)
    ids, token_boxes = encoder.encode(lines, boxes)

    expected_ids, expected_boxes = [], []
    for line, box in zip(lines, boxes):
        words = line.split()
        encoded = bpe(words, boxes=[[0, 0, 0, 0]] * len(words), add_special_tokens=False)["input_ids"]
        expected_ids += encoded
        expected_boxes += [box] * len(encoded)
    assert ids.tolist() == expected_ids
    assert ids.dtype == torch.long and token_boxes.dtype == torch.float32
    np.testing.assert_array_equal(token_boxes.numpy(), np.array(expected_boxes, dtype=np.float32))
    assert bpe.decode(ids).split() == " ".join(lines).split()


def test_budget_cuts_lines_in_order(bpe):
    lines = english_corpus(30, seed=1)
    boxes = np.array([[0, 10 * i, 100, 10 * i + 8] for i in range(len(lines))], dtype=float)
    full = OCRTokenizer(bpe, max_tokens=10**6, order="ocr").encode(lines, boxes)[0]
    for budget in (0, 1, 7, 50, len(full) - 1, len(full), len(full) + 5):
        ids, token_boxes = OCRTokenizer(bpe, max_tokens=budget, order="ocr").encode(lines, boxes)
        assert ids.tolist() == full[:budget].tolist()
        assert len(token_boxes) == len(ids)


def test_per_line_cap(bpe):
    lines = ["layout analysis finds the regions", "text"]
    boxes = np.array([[0, 0, 10, 10], [0, 20, 10, 30]], dtype=float)
    encoder = OCRTokenizer(bpe, max_tokens_per_line=3, order="ocr")
    ids, token_boxes = encoder.encode(lines, boxes)
    first = bpe(lines[0].split(), boxes=[[0, 0, 0, 0]] * 5, add_special_tokens=False)["input_ids"][:3]
    second = bpe(["text"], boxes=[[0, 0, 0, 0]], add_special_tokens=False)["input_ids"][:3]
    assert ids.tolist() == first + second
    assert token_boxes[:3, 1].tolist() == [0, 0, 0] and (token_boxes[3:, 1] == 20).all()


def test_special_tokens_wrap_the_page(bpe):
    encoder = OCRTokenizer(bpe, max_tokens=5, add_special_tokens=True, order="ocr")
    ids, token_boxes = encoder.encode(["layout analysis finds the regions of a page"], [[5, 5, 50, 15]])
    assert len(ids) == 7
    assert ids[0] == bpe.cls_token_id and ids[-1] == bpe.sep_token_id
    assert token_boxes[0].tolist() == [0, 0, 0, 0] and token_boxes[-1].tolist() == [0, 0, 0, 0]
    assert (token_boxes[1:-1] == torch.tensor([5.0, 5.0, 50.0, 15.0])).all()
    ids, token_boxes = encoder.encode([" "], [[5, 5, 50, 15]])
    assert ids.shape == (0,) and token_boxes.shape == (0, 4)


def test_empty_page_and_blank_lines(bpe):
    encoder = OCRTokenizer(bpe)
    ids, token_boxes = encoder.encode([], np.zeros((0, 4)))
    assert ids.shape == (0,) and token_boxes.shape == (0, 4)
    ids, token_boxes = encoder.encode(["  ", ""], [[0, 0, 1, 1], [0, 0, 1, 1]])
    assert ids.shape == (0,) and token_boxes.shape == (0, 4)


def test_chinese_drops_lone_word_start_piece(spm):
    line = "表格图片 识别区域"
    raw = spm(line.split(), is_split_into_words=True, add_special_tokens=False)["input_ids"]
    pieces = spm.convert_ids_to_tokens(raw)
    assert pieces.count("▁") == 2, f"the test needs lone word-start pieces, got {pieces}"

    kept = OCRTokenizer(spm, drop_leading_space=False).encode([line], [[0, 0, 10, 10]])[0]
    dropped = OCRTokenizer(spm, drop_leading_space=True).encode([line], [[0, 0, 10, 10]])[0]
    assert kept.tolist() == raw
    assert dropped.tolist() == [i for i, p in zip(raw, pieces) if p != "▁"]
    assert spm.decode(dropped).replace(" ", "") == line.replace(" ", "")


def test_drop_unk(spm):
    line = "文档Ω分析"  # Ω is not in the vocabulary
    raw = spm([line], is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert spm.unk_token_id in raw
    kept = OCRTokenizer(spm, drop_unk=False, drop_leading_space=False).encode([line], [[0, 0, 1, 1]])[0]
    dropped = OCRTokenizer(spm, drop_unk=True, drop_leading_space=False).encode([line], [[0, 0, 1, 1]])[0]
    assert kept.tolist() == raw
    assert dropped.tolist() == [i for i in raw if i != spm.unk_token_id]


class CountingBackend:
    """A tokenizers backend that counts the words it is asked to tokenize."""

    def __init__(self, backend):
        self.backend, self.words = backend, []

    def encode_batch(self, batch, **kwargs):
        self.words += [w for words in batch for w in words]
        return self.backend.encode_batch(batch, **kwargs)


@pytest.mark.parametrize("cache_size", [1 << 20, 4])
def test_word_cache(bpe, cache_size):
    encoder = OCRTokenizer(bpe, order="ocr", cache_size=cache_size)
    reference = OCRTokenizer(bpe, order="ocr").encode
    counting = encoder._backend = CountingBackend(encoder._backend)
    lines = english_corpus(20, seed=2)
    boxes = np.zeros((len(lines), 4))
    for _ in range(3):
        assert encoder.encode(lines, boxes)[0].tolist() == reference(lines, boxes)[0].tolist()
    distinct = {w for line in lines for w in line.split()}
    if cache_size > len(distinct):
        assert sorted(counting.words) == sorted(distinct)  # each word tokenized once over 3 pages
    else:
        assert len(encoder._word_ids) <= cache_size + max(len(set(line.split())) for line in lines)


def test_ten_thousand_lines_are_cut_by_the_budget(bpe):
    rng = np.random.RandomState(0)
    lines = [" ".join(rng.choice(ENGLISH, 3)) for _ in range(10_000)]
    xy = rng.rand(10_000, 2) * 1000
    boxes = np.concatenate([xy, xy + rng.rand(10_000, 2) * 200], axis=1)
    encoder = OCRTokenizer(bpe, max_tokens=510)
    order = encoder.line_order(boxes)
    assert sorted(order.tolist()) == list(range(10_000))
    ids, token_boxes = encoder.encode([lines[i] for i in order], boxes[order])
    assert len(ids) == 510 and token_boxes.shape == (510, 4)


def test_max_tokens_follows_the_model_positions(bpe_dir, caplog):
    cfg = tiny_cfg("MODEL.VIT.TOKENIZER", bpe_dir, "INPUT.OCR.MAX_TOKENS", 600)
    backbone = build_vit_fpn_backbone(cfg, ShapeSpec(channels=3))
    limit = backbone.bottom_up.max_text_tokens
    assert limit == max_text_tokens(build_layoutlmv3_config(cfg, AutoTokenizer.from_pretrained(bpe_dir)))
    with caplog.at_level(logging.WARNING, logger="ditod.data.tokens"):
        assert OCRTokenizer.from_config(cfg).max_tokens == limit
    assert "MAX_TOKENS 600" in caplog.text
    cfg.INPUT.OCR.ADD_SPECIAL_TOKENS = True
    assert OCRTokenizer.from_config(cfg).max_tokens == limit - 2
    cfg.INPUT.OCR.MAX_TOKENS = 100
    assert OCRTokenizer.from_config(cfg).max_tokens == 100


def test_from_config_needs_a_tokenizer():
    with pytest.raises(ValueError, match="MODEL.VIT.TOKENIZER"):
        OCRTokenizer.from_config(tiny_cfg())


@pytest.mark.parametrize("key", ["MODEL.VIT.TOKENIZER", "MODEL.VIT.PRETRAINED"])
def test_missing_tokenizer_or_model_directory_names_the_key(key, tmp_path):
    from ditod.layoutlmv3 import get_tokenizer

    missing = str(tmp_path / "tokenizr")
    with pytest.raises(ValueError, match=f"^{key} {missing}: no such directory$"):
        get_tokenizer(tiny_cfg(key, missing))
    if key == "MODEL.VIT.PRETRAINED":
        with pytest.raises(ValueError, match=f"^{key} {missing}: no such directory$"):
            build_vit_fpn_backbone(tiny_cfg(key, missing, "MODEL.IMAGE_ONLY", True), ShapeSpec(channels=3))


def test_directory_without_tokenizer_files_names_the_key(tmp_path):
    from ditod.layoutlmv3 import get_tokenizer

    with pytest.raises(ValueError, match=f"^MODEL.VIT.TOKENIZER {tmp_path}: cannot be loaded from this directory"):
        get_tokenizer(tiny_cfg("MODEL.VIT.TOKENIZER", str(tmp_path)))


def two_column_page():
    """Named line boxes of a paper page: title, centred authors, an abstract, a centred
    heading over the gutter, two columns with aligned rows and ragged ends, a figure
    caption over both columns, two more columns, a footer; in reading order."""
    lines = [("title", [100, 20, 500, 40]), ("authors", [220, 45, 380, 55])]
    lines += [(f"abstract{i}", [50, 70 + 12 * i, 550, 80 + 12 * i]) for i in range(6)]
    lines += [("heading", [260, 150, 340, 160])]

    def columns(prefix, top, rows):
        left = [(f"{prefix}L{i}", [50, top + 12 * i, 290 - 25 * (i % 3 == 2), top + 12 * i + 10]) for i in range(rows)]
        right = [
            (f"{prefix}R{i}", [310, top + 12 * i, 550 - 40 * (i % 4 == 3), top + 12 * i + 10]) for i in range(rows - 2)
        ]
        return left + right

    lines += columns("a", 170, 8)
    lines += [("caption", [60, 280, 540, 290])]
    lines += columns("b", 300, 5)
    lines += [("footer", [50, 380, 550, 390])]
    return [name for name, _ in lines], np.array([box for _, box in lines], dtype=float)


def test_reading_order_two_columns():
    names, boxes = two_column_page()
    perm = np.random.RandomState(0).permutation(len(names))
    order = reading_order(boxes[perm])
    assert [names[perm[i]] for i in order] == names


@pytest.mark.parametrize("order", ["reading", "ocr"])
def test_configured_order_then_budget(bpe, order):
    """Lines named by their role decode back in the configured order, cut by the budget."""
    names, boxes = two_column_page()
    perm = np.random.RandomState(1).permutation(len(names))
    lines, boxes = [names[i] for i in perm], boxes[perm]
    expected = names if order == "reading" else lines
    encoder = OCRTokenizer(bpe, max_tokens=10**6, order=order)
    line_order = encoder.line_order(boxes)
    ids = encoder.encode([lines[i] for i in line_order], boxes[line_order])[0]
    assert bpe.decode(ids).split() == expected
    # A budget of the first 12 lines' tokens keeps exactly those lines.
    budget = sum(len(bpe([n], boxes=[[0, 0, 0, 0]], add_special_tokens=False)["input_ids"]) for n in expected[:12])
    encoder = OCRTokenizer(bpe, max_tokens=budget, order=order)
    ids = encoder.encode([lines[i] for i in line_order], boxes[line_order])[0]
    assert bpe.decode(ids).split() == expected[:12]


def test_reading_order_single_column_is_top_to_bottom():
    rng = np.random.RandomState(3)
    # Indented first lines, short last lines of paragraphs.
    x0 = 50 + 20 * (np.arange(30) % 5 == 0)
    x1 = 550 - rng.randint(0, 300, 30) * (np.arange(30) % 5 == 4)
    boxes = np.stack([x0, 20 * np.arange(30), x1, 20 * np.arange(30) + 12], axis=1).astype(float)
    perm = rng.permutation(30)
    assert perm[reading_order(boxes[perm])].tolist() == list(range(30))


def train_tokenizer_tool():
    path = os.path.join(REPO, "tools", "train_tokenizer.py")
    spec = importlib.util.spec_from_file_location("train_tokenizer_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def write_ocr_pages(folder, lines):
    folder.mkdir(parents=True)
    for i, line in enumerate(lines):
        (folder / f"p{i}.json").write_text(json.dumps({"W": 100, "H": 100, "words": [line], "bbox": [[0, 0, 10, 10]]}))


def test_train_tokenizer_tool(tmp_path, capsys):
    tool = train_tokenizer_tool()
    pages = tmp_path / "ocr" / "sub"
    write_ocr_pages(pages, english_corpus(40))
    (pages / "broken.json").write_text('{"W": 100, "H"')
    out = tmp_path / "tok"
    assert tool.main(["--ocr-dir", str(tmp_path / "ocr"), "--out", str(out), "--vocab-size", "300"]) == 0
    summary = capsys.readouterr().out
    assert "40 lines of 40 pages" in summary and "1 file(s) skipped" in summary and "broken.json" in summary
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == 300


@pytest.mark.parametrize(
    "kind, vocab_size, texts, message",
    [
        ("bpe", 260, ENGLISH, "vocabulary size 260 is below the minimum of a byte-level BPE, 261 "),
        ("bpe", 0, [], "vocabulary size 0 is below the minimum of a byte-level BPE, 261 "),
        ("sentencepiece", 4, [], "vocabulary size 4 is below the minimum of a sentencepiece vocabulary, 5 "),
        # 23 distinct characters with "▁"; fewer than 10 need one more (the trainer never finishes on 8).
        ("sentencepiece", 22, ENGLISH, "its words have 23 distinct characters .* at least 23$"),
        ("sentencepiece", 7, ["文档 版面", "abc"], "its words have 8 distinct characters .* at least 9$"),
    ],
)
def test_train_tokenizer_vocabulary_too_small(tmp_path, kind, vocab_size, texts, message):
    with pytest.raises(ValueError, match=message):
        train_tokenizer(texts, tmp_path, vocab_size=vocab_size, kind=kind)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "kind, vocab_size, texts",
    [("bpe", 261, ENGLISH), ("sentencepiece", 23, ENGLISH), ("sentencepiece", 9, ["文档 版面", "abc"])],
)
def test_train_tokenizer_smallest_vocabulary(tmp_path, kind, vocab_size, texts):
    tokenizer = train_tokenizer(texts, tmp_path, vocab_size=vocab_size, kind=kind)
    assert len(tokenizer) >= vocab_size
    assert tokenizer.unk_token_id not in tokenizer.backend_tokenizer.encode(texts[0]).ids


@pytest.mark.parametrize(
    "args, message",
    [
        (["--vocab-size", "10"], "vocabulary size 10 is below the minimum of a byte-level BPE, 261 "),
        (["--kind", "sentencepiece", "--vocab-size", "10"], "too small for the text: its words have 23 distinct"),
    ],
)
def test_train_tokenizer_tool_vocabulary_too_small(tmp_path, capsys, args, message):
    write_ocr_pages(tmp_path / "ocr", [" ".join(ENGLISH)])
    out = tmp_path / "tok"
    assert train_tokenizer_tool().main(["--ocr-dir", str(tmp_path / "ocr"), "--out", str(out), *args]) == 1
    error = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert error.startswith("train_tokenizer.py: error: ") and message in error
    assert not out.exists()


@pytest.mark.parametrize("out", ["tok", "tok/sub"])
def test_train_tokenizer_tool_out_must_be_a_folder(tmp_path, capsys, monkeypatch, out):
    write_ocr_pages(tmp_path / "ocr", english_corpus(3))
    (tmp_path / "tok").write_text("not a folder")
    tool = train_tokenizer_tool()
    monkeypatch.setattr(tool, "train_tokenizer", lambda *args, **kwargs: pytest.fail("trained"))
    with pytest.raises(SystemExit) as error:
        tool.main(["--ocr-dir", str(tmp_path / "ocr"), "--out", str(tmp_path / out)])
    assert error.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"{tmp_path / 'tok'} is not a folder")


def test_folder_without_tokenizer_files_is_a_clear_error(tmp_path):
    LayoutLMv3Config(vocab_size=300).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no tokenizer"):
        load_tokenizer(str(tmp_path))
