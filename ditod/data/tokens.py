"""OCR words to LayoutLMv3 token ids and boxes."""
import functools
import logging

from transformers import AutoTokenizer

__all__ = ["get_tokenizer", "load_tokenizer"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def load_tokenizer(name):
    """Load a tokenizer (hub id or directory) once per process."""
    logger.info(f"Loading tokenizer {name}")
    return AutoTokenizer.from_pretrained(name)


def get_tokenizer(cfg):
    """The tokenizer of MODEL.VIT.TOKENIZER (or MODEL.VIT.PRETRAINED); None when neither is set."""
    name = cfg.MODEL.VIT.TOKENIZER or cfg.MODEL.VIT.PRETRAINED
    return load_tokenizer(name) if name else None
