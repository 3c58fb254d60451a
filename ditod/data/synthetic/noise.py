"""The OCR of a page: its drawn lines, some dropped, misread or with jittered boxes."""

from ..ocr import PageOCR

# Characters OCR engines commonly confuse; anything else is swapped with its neighbour.
CONFUSIONS = {
    "l": "1",
    "1": "l",
    "O": "0",
    "0": "O",
    "e": "c",
    "c": "e",
    "m": "rn",
    "S": "5",
    "5": "S",
    "I": "l",
    "B": "8",
    "8": "B",
    "g": "q",
    "a": "o",
    "o": "a",
    "u": "v",
    "n": "h",
}


def _misread(rng, text, probability):
    chars = list(text)
    for i, char in enumerate(chars):
        if rng.random() < probability:
            if char in CONFUSIONS:
                chars[i] = CONFUSIONS[char]
            elif i + 1 < len(chars):
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def noisy_ocr(canvas, options, rng):
    """PageOCR of the canvas lines with the noise of `options` (SyntheticOptions)."""
    words, boxes = [], []
    for text, (x0, y0, x1, y1) in canvas.lines:
        if options.ocr_drop and rng.random() < options.ocr_drop:
            continue
        if options.ocr_swap:
            text = _misread(rng, text, options.ocr_swap)
        if options.ocr_jitter:
            sigma = options.ocr_jitter * (y1 - y0)
            x0, y0, x1, y1 = (v + round(rng.gauss(0, sigma)) for v in (x0, y0, x1, y1))
            x0, y0 = min(max(x0, 0), canvas.width - 1), min(max(y0, 0), canvas.height - 1)
            x1, y1 = min(max(x1, x0 + 1), canvas.width), min(max(y1, y0 + 1), canvas.height)
        words.append(text)
        boxes.append([x0, y0, x1 - x0, y1 - y0])
    return PageOCR(canvas.width, canvas.height, words, boxes)
