#!/usr/bin/env python
"""Train a small tokenizer on the words of OCR jsons, saved in the Hugging Face format.

    python tools/train_tokenizer.py --ocr-dir datasets/synthetic/train/ocr --out output/tokenizer \\
        --vocab-size 2000 --kind bpe

Point MODEL.VIT.TOKENIZER at the output folder to use it with a model built from
size keys (no MODEL.VIT.PRETRAINED): the model's vocabulary then follows the
tokenizer. A pretrained LayoutLMv3 needs the tokenizer it was trained with instead.

OCR jsons are found recursively. An unreadable one is skipped and reported; the
exit status is 1 when no line at all could be read. --vocab-size is at least 261 for
bpe (its 256 byte symbols and 5 special tokens); for sentencepiece it must hold every
distinct character of the text, which is checked once the text is read.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from detectron2.utils.logger import setup_logger

from ditod.data.ocr import OCRFormatError, load_ocr
from ditod.data.tokens import train_tokenizer

logger = logging.getLogger("ditod.tools.train_tokenizer")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ocr-dir", action="append", required=True, help="folder of OCR jsons (repeatable)")
    parser.add_argument("--out", required=True, help="output folder of the tokenizer")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument(
        "--kind",
        choices=("bpe", "sentencepiece"),
        default="bpe",
        help="bpe: byte-level BPE like LayoutLMv3-base; sentencepiece: Unigram like XLM-R / LayoutLMv3-Chinese",
    )
    args = parser.parse_args(argv)
    # Found before training, which transformers' save would fail only after.
    out = Path(args.out)
    existing = next(path for path in (out, *out.parents) if os.path.lexists(path))
    if not existing.is_dir():
        where = "" if existing == out else f": {existing}"
        parser.error(f"--out {args.out}{where} is not a folder")
    return args


class OCRCorpus:
    """The lines of the OCR jsons under some folders, read lazily, with counts of what was read."""

    def __init__(self, folders):
        self.files = sorted(path for folder in folders for path in Path(folder).rglob("*.json"))
        self.pages = self.lines = 0
        self.failures = []

    def __iter__(self):
        for path in tqdm(self.files, desc="OCR jsons", unit="page"):
            try:
                page = load_ocr(path)
            except (OSError, OCRFormatError) as e:
                self.failures.append((path, str(e)))
                logger.warning(f"Skipping {path}: {e}")
                continue
            self.pages += 1
            self.lines += len(page.words)
            yield from page.words


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="ditod")
    corpus = OCRCorpus(args.ocr_dir)
    if not corpus.files:
        print(f"No OCR json under {', '.join(args.ocr_dir)}", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        tokenizer = train_tokenizer(corpus, args.out, vocab_size=args.vocab_size, kind=args.kind)
    except ValueError as e:
        print(f"train_tokenizer.py: error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(
        f"Tokenizer ({args.kind}, {len(tokenizer)} tokens) trained on {corpus.lines} lines of "
        f"{corpus.pages} pages in {seconds:.1f} s, saved to {args.out}; {len(corpus.failures)} file(s) skipped"
    )
    for path, error in corpus.failures:
        print(f"  skipped {path}: {error}")
    if not corpus.lines:
        print("No OCR line could be read: the tokenizer knows only its base symbols", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
