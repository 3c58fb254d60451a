"""Two-model text recognition: a fast model reads every line, an accurate one rereads the doubtful ones.

Recognition is about 90% of rapidocr's time on a document page, and most lines of
printed text are easy: PP-OCRv6 tiny reads them about 5x faster than the small model
with the same words. Its confidence (the mean of its characters' probabilities) tells
the lines it may have misread; only those go to the accurate model.
"""

import dataclasses
import time

from rapidocr.ch_ppocr_rec import TextRecInput, TextRecOutput

__all__ = ["CascadeTextRecognizer"]


class CascadeTextRecognizer:
    """A rapidocr text recognizer (``RapidOCR.text_rec``) made of two.

    Args:
        fast: recognizer that reads every line first.
        accurate: recognizer that reads again the lines `fast` read with a confidence
            under `reread_below`; its reading replaces the fast one.
        reread_below: confidence threshold; 0 keeps every fast reading, above 1
            rereads every line.

    ``lines`` and ``reread_lines`` count the lines read so far and those read again.
    """

    def __init__(self, fast, accurate, reread_below: float):
        self.fast = fast
        self.accurate = accurate
        self.reread_below = float(reread_below)
        self.lines = 0
        self.reread_lines = 0

    def __call__(self, args: TextRecInput) -> TextRecOutput:
        start = time.perf_counter()
        first = self.fast(args)
        reread = [i for i, score in enumerate(first.scores) if score < self.reread_below]
        self.lines += len(first.scores)
        self.reread_lines += len(reread)
        if not reread:
            return first
        second = self.accurate(TextRecInput(img=[first.imgs[i] for i in reread], return_word_box=args.return_word_box))
        txts, scores, words = list(first.txts), list(first.scores), list(first.word_results)
        for j, i in enumerate(reread):
            txts[i], scores[i], words[i] = second.txts[j], second.scores[j], second.word_results[j]
        return dataclasses.replace(
            first, txts=tuple(txts), scores=tuple(scores), word_results=tuple(words), elapse=time.perf_counter() - start
        )
