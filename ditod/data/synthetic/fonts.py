"""Font files found on the machine (Latin families, a CJK font) and fonts loaded at a pixel size."""

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import ImageFont

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
# Regular, bold and italic file of each Latin family (Debian's fonts-dejavu; matplotlib ships most).
LATIN_FAMILIES = {
    "sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf"),
    "serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf"),
    "sans-condensed": (
        "DejaVuSansCondensed.ttf",
        "DejaVuSansCondensed-Bold.ttf",
        "DejaVuSansCondensed-Oblique.ttf",
    ),
    "serif-condensed": (
        "DejaVuSerifCondensed.ttf",
        "DejaVuSerifCondensed-Bold.ttf",
        "DejaVuSerifCondensed-Italic.ttf",
    ),
}
NO_CJK_FONT = "Chinese pages need a CJK font and none was found: apt-get install fonts-wqy-microhei"
CJK_FONT_FILES = (
    "wqy-microhei.ttc",
    "wqy-zenhei.ttc",
    "NotoSansCJK-Regular.ttc",
    "NotoSerifCJK-Regular.ttc",
    "DroidSansFallbackFull.ttf",
)


@dataclass(frozen=True)
class FontFamily:
    regular: str
    bold: str
    italic: str


@functools.cache
def _font_files():
    """File name -> path of the fonts in the usual directories, then matplotlib's bundled ones."""
    dirs = [Path(d).expanduser() for d in FONT_DIRS]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        dirs.append(Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf")
    files = {}
    for directory in dirs:
        for root, subdirs, names in os.walk(directory):
            subdirs.sort()  # a stable walk keeps the chosen file, hence the pages, stable
            for name in sorted(names):
                files.setdefault(name, os.path.join(root, name))
    return files


@functools.cache
def latin_families():
    files = _font_files()
    families = tuple(
        FontFamily(*(files[f] for f in names)) for names in LATIN_FAMILIES.values() if all(f in files for f in names)
    )
    if not families:
        raise RuntimeError("no DejaVu fonts found: install Debian's fonts-dejavu (or matplotlib)")
    return families


def find_cjk_font():
    """Path of a font with Chinese glyphs, or None (install fonts-wqy-microhei)."""
    files = _font_files()
    return next((files[name] for name in CJK_FONT_FILES if name in files), None)


class Face:
    """A font file at one pixel size.

    Short strings (words, cells, labels) come back again and again, so their widths are cached.
    The basic layout engine measures text many times faster than raqm with the big CJK fonts,
    and pages need no complex script shaping.
    """

    def __init__(self, path, size):
        self.font = ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
        ascent, descent = self.font.getmetrics()
        self.line_height = ascent + descent
        self._widths = {}

    def width(self, text):
        if len(text) > 24:
            return self.font.getlength(text)
        width = self._widths.get(text)
        if width is None:
            width = self._widths[text] = self.font.getlength(text)
        return width


@functools.cache
def get_face(path, size):
    return Face(path, size)
