"""OCR words to LayoutLMv3 token ids and boxes.

A page's OCR lines become one token sequence: lines are put in reading order,
each line is split into whitespace words, every word is tokenized the way
LayoutLMv3's processor tokenizes pre-split words (a word-start prefix on every
word), and every token carries its line's box. The tokenizer is loaded once per
process; words already seen are not tokenized again.
"""

import json
import logging

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LayoutLMv3Tokenizer, XLMRobertaTokenizer

from ..layoutlmv3 import build_layoutlmv3_config, get_tokenizer, max_text_tokens
from .reading_order import reading_order

__all__ = ["OCRTokenizer", "train_tokenizer", "transform_ocr_boxes"]

logger = logging.getLogger(__name__)

# RoBERTa / XLM-R special tokens, in id order: <s>=0, <pad>=1, </s>=2, <unk>=3.
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
# The word-start marker of SentencePiece-style tokenizers (XLM-R, LayoutLMv3-Chinese).
WORD_START = "\u2581"
# What released LayoutLMv3 tokenizers declare; the model allows 512 text tokens.
MODEL_MAX_LENGTH = 512


def train_tokenizer(texts, out_dir, vocab_size=1000, kind="bpe"):
    """
    Train a small tokenizer on `texts` and save it in the Hugging Face format, so that
    ``AutoTokenizer.from_pretrained(out_dir)`` loads it like a released one.

    Args:
        texts: iterable of strings (e.g. OCR lines); read once.
        vocab_size: target vocabulary size, special tokens included. A byte-level BPE
            always keeps its 256 byte symbols, so it needs at least 261; a sentencepiece
            vocabulary needs at least the 5 special tokens, and room for every distinct
            character of `texts` (the "▁" word-start piece included; one more when
            they are fewer than 10).
        kind: "bpe": a byte-level BPE like RoBERTa's and LayoutLMv3-base's
            (`LayoutLMv3Tokenizer`, word-start prefix on every word);
            "sentencepiece": a Unigram model with the "▁" word-start piece like XLM-R's
            and LayoutLMv3-base-chinese's (`XLMRobertaTokenizer`).
            Both number <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.

    Returns:
        The saved tokenizer, as `AutoTokenizer` loads it.

    Raises:
        ValueError: for an unknown kind or a vocab_size below these minimums (the
            characters of `texts` are known only once they are read).
    """
    if kind == "bpe":
        byte_symbols = len(pre_tokenizers.ByteLevel.alphabet())
        if vocab_size < byte_symbols + len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocabulary size {vocab_size} is below the minimum of a byte-level BPE, "
                f"{byte_symbols + len(SPECIAL_TOKENS)} ({byte_symbols} byte symbols and "
                f"{len(SPECIAL_TOKENS)} special tokens)"
            )
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "sentencepiece":
        if vocab_size < len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocabulary size {vocab_size} is below the minimum of a sentencepiece vocabulary, "
                f"{len(SPECIAL_TOKENS)} (its special tokens)"
            )
        backend = Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.WhitespaceSplit(),
                pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always"),
            ]
        )
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="<unk>", show_progress=False
        )
    else:
        raise ValueError(f"Tokenizer kind must be 'bpe' or 'sentencepiece', got {kind!r}")

    def checking_size(lines):
        """Yield `lines`, then raise ValueError when the Unigram trainer cannot make a
        vocabulary of `vocab_size` from them."""
        seen = set()
        for line in lines:
            seen.update(line)
            yield line
        # The characters of the words (whitespace as the pre-tokenizer splits it), each
        # word starting with "▁". The backend itself is locked while it trains.
        split = pre_tokenizers.WhitespaceSplit().pre_tokenize_str
        chars = {c for c in seen if split(c)}
        chars |= {WORD_START} if chars else set()
        # The trainer keeps a piece per character of the words ("▁" included) and one for
        # unknown pieces, and prunes until it holds at most 1.1 x vocab_size: a smaller
        # size fails, or never finishes.
        minimum = len(chars) if len(chars) * 11 // 10 > len(chars) else len(chars) + 1
        if vocab_size < minimum:
            raise ValueError(
                f"vocabulary size {vocab_size} is too small for the text: its words have {len(chars)} "
                f"distinct characters (the word-start {WORD_START!r} included), which need a "
                f"sentencepiece vocabulary size of at least {minimum}"
            )

    backend.train_from_iterator(checking_size(texts) if kind == "sentencepiece" else texts, trainer)

    # The transformers classes rebuild their pipeline (pre-tokenizer, post-processor)
    # from the vocabulary, exactly as they do for the released checkpoints.
    model = json.loads(backend.to_str())["model"]
    if kind == "bpe":
        merges = [tuple(merge) for merge in model["merges"]]
        tokenizer = LayoutLMv3Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=MODEL_MAX_LENGTH)
    else:
        vocab = [tuple(piece) for piece in model["vocab"]]
        tokenizer = XLMRobertaTokenizer(vocab=vocab, model_max_length=MODEL_MAX_LENGTH)
    tokenizer.save_pretrained(out_dir)
    logger.info(f"Saved a {kind} tokenizer of {len(tokenizer)} tokens to {out_dir}")
    return AutoTokenizer.from_pretrained(out_dir)


# ---------------------------------------------------------------- page encoding


def transform_ocr_boxes(boxes, transforms, image_shape):
    """
    Line boxes (N, 4 x0, y0, x1, y1) through the image's transforms.

    A line whose centre leaves the transformed image is dropped (most of it was cropped
    away); the others are clipped to the image, so a line cut by the crop keeps the box
    of its visible part.

    Returns:
        boxes (K, 4) in pixels of the transformed image, and the indices (K,) of the
        kept lines.
    """
    if len(boxes) == 0:
        return np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=np.int64)
    boxes = transforms.apply_box(np.asarray(boxes, dtype=np.float64))
    height, width = image_shape
    center_x = (boxes[:, 0] + boxes[:, 2]) / 2
    center_y = (boxes[:, 1] + boxes[:, 3]) / 2
    keep = np.flatnonzero((center_x >= 0) & (center_x <= width) & (center_y >= 0) & (center_y <= height))
    boxes = boxes[keep]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes, keep


class OCRTokenizer:
    """
    Turns one page's OCR lines and boxes into LayoutLMv3 text inputs.

    Every line is split into whitespace words; each word is tokenized as LayoutLMv3's
    processor tokenizes pre-split words (`is_split_into_words`: the word-start prefix
    "Ġ" or "▁" on every word) and all tokens of a line carry the line's box. Word ids
    are cached, so repeated words cost a dict lookup.

    Args:
        tokenizer: a Hugging Face tokenizer backed by the `tokenizers` library.
        max_tokens: token budget per page, special tokens not included; the lines
            are taken in order until it is spent (the last one possibly in part).
        max_tokens_per_line: cap on the tokens of one OCR entry (a line); 0 = no cap.
        order: "reading" (see `reading_order`) or "ocr" (as the OCR gave them).
        drop_unk: leave out tokens that are the tokenizer's unknown token.
        drop_leading_space: leave out the word-start marker "▁" when it is a token of
            its own (what XLM-R-style tokenizers emit before Chinese characters).
        add_special_tokens: wrap the page's tokens in the tokenizer's CLS/SEP tokens,
            whose boxes are [0, 0, 0, 0] as in LayoutLMv3's processor (a page without
            tokens stays empty).
        cache_size: the word cache is emptied when it holds this many words, bounding
            its memory over a large corpus.
    """

    ORDERS = ("reading", "ocr")

    def __init__(
        self,
        tokenizer,
        max_tokens=510,
        max_tokens_per_line=0,
        order="reading",
        drop_unk=True,
        drop_leading_space=True,
        add_special_tokens=False,
        cache_size=1 << 20,
    ):
        if order not in self.ORDERS:
            raise ValueError(f"INPUT.OCR.ORDER must be one of {self.ORDERS}, got {order!r}")
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(tokenizer).__name__} is not backed by the tokenizers library; "
                "OCR tokenization needs a fast tokenizer"
            )
        if max_tokens < 0 or max_tokens_per_line < 0:
            raise ValueError(
                f"INPUT.OCR.MAX_TOKENS ({max_tokens}) and MAX_TOKENS_PER_LINE ({max_tokens_per_line}) "
                "must not be negative"
            )
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.max_tokens_per_line = max_tokens_per_line
        self.order = order
        self.add_special_tokens = add_special_tokens
        self.drop_unk = drop_unk
        self.drop_leading_space = drop_leading_space
        self.cache_size = cache_size
        self._backend = tokenizer.backend_tokenizer
        dropped = set()
        if drop_unk and tokenizer.unk_token_id is not None:
            dropped.add(tokenizer.unk_token_id)
        word_start = self._backend.token_to_id(WORD_START)
        if drop_leading_space and word_start is not None:
            dropped.add(word_start)
        self._dropped_ids = frozenset(dropped)
        self._word_ids = {}

    @classmethod
    def from_config(cls, cfg):
        """The encoder of `cfg`'s INPUT.OCR keys with `get_tokenizer(cfg)`; MAX_TOKENS is
        lowered (with a warning) to what the model's text positions allow."""
        tokenizer = get_tokenizer(cfg)
        if tokenizer is None:
            raise ValueError(
                "The model reads OCR text (MODEL.IMAGE_ONLY False) but no tokenizer is configured: "
                "set MODEL.VIT.TOKENIZER or MODEL.VIT.PRETRAINED"
            )
        ocr = cfg.INPUT.OCR
        num_special = 2 if ocr.ADD_SPECIAL_TOKENS else 0
        limit = max_text_tokens(build_layoutlmv3_config(cfg, tokenizer)) - num_special
        max_tokens = ocr.MAX_TOKENS
        if max_tokens > limit:
            logger.warning(
                f"INPUT.OCR.MAX_TOKENS {max_tokens} is more than the model's text positions allow "
                f"({limit} tokens{' besides CLS/SEP' if num_special else ''}); using {limit}"
            )
            max_tokens = limit
        return cls(
            tokenizer,
            max_tokens=max_tokens,
            max_tokens_per_line=ocr.MAX_TOKENS_PER_LINE,
            order=ocr.ORDER,
            drop_unk=ocr.DROP_UNK,
            drop_leading_space=ocr.DROP_LEADING_SPACE,
            add_special_tokens=ocr.ADD_SPECIAL_TOKENS,
        )

    def settings(self) -> dict:
        """The arguments besides the tokenizer that build this encoder again (an exported
        model records them: `OCRTokenizer(tokenizer, **settings)` tokenizes as this one)."""
        return {
            "max_tokens": self.max_tokens,
            "max_tokens_per_line": self.max_tokens_per_line,
            "order": self.order,
            "drop_unk": self.drop_unk,
            "drop_leading_space": self.drop_leading_space,
            "add_special_tokens": self.add_special_tokens,
        }

    def line_order(self, boxes):
        """Indices of the lines with `boxes` (N, 4 x0, y0, x1, y1) in the configured order."""
        if self.order == "reading":
            return reading_order(boxes)
        return np.arange(len(boxes))

    def _cache_words(self, words):
        new = list(dict.fromkeys(w for w in words if w not in self._word_ids))
        if not new:
            return
        if len(self._word_ids) + len(new) > self.cache_size:
            self._word_ids.clear()
            new = list(dict.fromkeys(words))
        encodings = self._backend.encode_batch([[w] for w in new], is_pretokenized=True, add_special_tokens=False)
        for word, encoding in zip(new, encodings):
            self._word_ids[word] = [i for i in encoding.ids if i not in self._dropped_ids]

    def line_ids(self, line):
        """Token ids of one OCR line (after the unk / word-start drops and the per-line cap)."""
        words = line.split()
        self._cache_words(words)
        ids = [i for word in words for i in self._word_ids[word]]
        return ids[: self.max_tokens_per_line] if self.max_tokens_per_line else ids

    def encode(self, lines, boxes):
        """
        Token ids and boxes of `lines`, taken in the given order until the budget is spent.

        Args:
            lines: list of N strings.
            boxes: (N, 4) x0, y0, x1, y1 of the lines (any unit; returned as given).

        Returns:
            input_ids: LongTensor (T,); token_boxes: FloatTensor (T, 4), each token with
            its line's box.
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(boxes) != len(lines):
            raise ValueError(f"{len(lines)} lines but {len(boxes)} boxes")
        ids, owners = [], []
        budget = self.max_tokens
        for index, line in enumerate(lines):
            if budget <= 0:
                break
            line_ids = self.line_ids(line)[:budget]
            ids.extend(line_ids)
            owners.extend([index] * len(line_ids))
            budget -= len(line_ids)
        token_boxes = boxes[owners]
        # A page without text stays without tokens (the model reads its image alone).
        if self.add_special_tokens and ids:
            ids = [self.tokenizer.cls_token_id, *ids, self.tokenizer.sep_token_id]
            zero = np.zeros((1, 4), dtype=np.float32)
            token_boxes = np.concatenate([zero, token_boxes, zero])
        return torch.tensor(ids, dtype=torch.long), torch.from_numpy(token_boxes.reshape(-1, 4))

    def encode_page(self, page, transforms, image_shape):
        """
        The tokens of a page's OCR on the page's image after `transforms`: the lines in the
        configured order on the page as it is, their boxes moved by the transforms (see
        `transform_ocr_boxes`), then `encode`d.

        Args:
            page: the `PageOCR` of the page before the transforms.
            transforms: what was applied to the image; its `apply_box` moves boxes (a
                detectron2 `Transform` or anything with that method).
            image_shape: (height, width) of the transformed image.

        Returns:
            input_ids, token_boxes as `encode` (boxes in pixels of the transformed image).
        """
        boxes = page.boxes_xyxy()
        order = self.line_order(boxes)
        boxes, kept = transform_ocr_boxes(boxes[order], transforms, image_shape)
        return self.encode([page.words[i] for i in order[kept]], boxes)
