"""Fonts and spacing of a page, drawn once per page."""

from dataclasses import dataclass

from .fonts import Face, find_cjk_font, get_face, latin_families
from .text import TextStyle


@dataclass(frozen=True)
class PageStyle:
    text: TextStyle
    title: TextStyle
    caption: TextStyle
    reference: TextStyle
    small: Face  # headers, footers
    label: Face  # figure labels
    table: Face
    table_header: Face
    equation: Face
    block_gap: int  # space around figures, tables and equations


def page_style(rng, lang, scale, hard_text):
    """A random style; `scale` is the page height over 1000 px."""
    family = rng.choice(latin_families())
    cjk = find_cjk_font() if lang == "zh" else None
    regular, bold, italic = (cjk, cjk, cjk) if cjk else (family.regular, family.bold, family.italic)

    def face(path, size):
        return get_face(path, max(6, round(size * scale)))

    size = rng.randint(11, 14)
    body = face(regular, size)
    leading = round(body.line_height * rng.uniform(1.05, 1.35))
    para_gap = round(leading * rng.uniform(0.3, 1.0))
    indent = rng.choice((0, 0, round(body.width("M") * 2)))
    text = TextStyle(body, leading, para_gap, first_indent=indent)
    if hard_text:
        # Captions and references are indistinguishable from paragraphs; headings only by weight.
        caption = reference = text
        title = TextStyle(face(bold, size + (1 if cjk else 0)), leading, round(para_gap * 1.5) + leading // 2)
    else:
        caption_face = face(italic, size) if rng.random() < 0.5 else face(regular, size - 1)
        caption = TextStyle(
            caption_face, round(caption_face.line_height * 1.15), leading // 2, center=rng.random() < 0.3
        )
        reference_face = face(regular, size - rng.randint(1, 2))
        reference = TextStyle(
            reference_face,
            round(reference_face.line_height * 1.1),
            leading // 4,
            rest_indent=round(reference_face.width("M") * 1.5),
        )
        title_face = face(bold, size + rng.randint(1, 4))
        title = TextStyle(title_face, round(title_face.line_height * 1.15), para_gap + leading)
    return PageStyle(
        text=text,
        title=title,
        caption=caption,
        reference=reference,
        small=face(regular, size - 2),
        label=face(cjk or family.regular, size - 3),
        table=face(regular, size - 1),
        table_header=face(bold, size - 1),
        equation=face(rng.choice((family.italic, family.regular)), size + 1),
        block_gap=round(leading * rng.uniform(0.8, 1.5)),
    )
