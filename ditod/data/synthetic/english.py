"""English text of a page, and the Latin-script references that Chinese papers cite too."""

from .writer import DATASETS, Writer, words

NOUNS = words(
    "model method approach network layout document page region feature representation dataset "
    "benchmark detector transformer encoder decoder backbone annotation baseline experiment result "
    "framework module embedding token image table figure caption header structure task domain "
    "sample label box metric score pipeline classifier object paragraph character line column"
)
ADJECTIVES = words(
    "proposed multimodal visual textual robust efficient accurate novel simple effective large small "
    "semantic spatial hierarchical pretrained lightweight strong consistent different complex scanned "
    "printed noisy global local joint"
)
VERBS = words(
    "improve combine learn predict capture detect encode reduce require achieve use extend refine "
    "align fuse generate evaluate outperform"
)
ADVERBS = words("significantly consistently substantially slightly clearly jointly further")
PREPOSITIONS = words("on for in with from across over under")
INTRO_VERBS = words("propose introduce present design evaluate train study")
TEMPLATES = (
    "The {adj} {noun} {verbs} the {noun} of {nouns} {prep} {adj} {nouns}.",
    "We {intro} a {adj} {noun} that {verbs} {nouns} and {nouns} {adv}.",
    "In this {noun}, we {intro} the {noun} {prep} {noun} {nouns}.",
    "Our {noun} {adv} {verbs} the {adj} {noun} by {pct} on {dataset}.",
    "As shown in {xref}, the {noun} {verbs} {nouns} {prep} the {noun}.",
    "This {noun} {verbs} {adj} {nouns}, which {verb} the {noun} [{cite}].",
    "However, {adj} {nouns} {adv} {verb} the {noun} when the {noun} is {adj}.",
    "{Adj} {nouns} are {adj} for {noun} {noun} tasks [{cite}].",
    "Compared with {dataset}, the {adj} {nouns} {verb} {adj} {nouns} {prep} {nouns}.",
    "The {noun} is trained for {int} epochs with a {adj} {noun} of {float}.",
)
SECTIONS = (
    "Introduction",
    "Related Work",
    "Method",
    "Approach",
    "Experiments",
    "Results",
    "Discussion",
    "Conclusion",
    "Implementation Details",
    "Ablation Study",
    "Datasets",
    "Evaluation Metrics",
    "Limitations",
    "Preliminaries",
)
CAPTION_OPENERS = (
    "Comparison of",
    "Examples of",
    "Overview of",
    "Results of",
    "Ablation study on",
    "Visualization of",
    "Statistics of",
    "Performance of",
    "Qualitative results of",
)
SURNAMES = words(
    "Smith Wang Li Zhang Chen Kumar Garcia Müller Huang Tanaka Kim Nguyen Rossi Silva Brown "
    "Johnson Liu Zhou Xu Yang Schmidt Dubois Ivanov Sato Park Lopez Martin Lee Clark Lewis"
)
JOURNALS = (
    "Pattern Recognition",
    "IEEE Transactions on Pattern Analysis and Machine Intelligence",
    "International Journal on Document Analysis and Recognition",
    "In Proceedings of CVPR",
    "In Proceedings of ICDAR",
    "In Proceedings of ACL",
    "Neural Computation",
    "Advances in Neural Information Processing Systems",
    "arXiv preprint",
    "Computer Vision and Image Understanding",
)


def plural(noun):
    return noun + ("es" if noun.endswith(("s", "x", "ch")) else "s")


def initials_name(rng):
    return f"{chr(65 + rng.randrange(26))}. {rng.choice(SURNAMES)}"


def latin_reference(rng, number, style):
    """ "[12] A. Author, B. Author. Title of the paper. Journal, 2019." in one of three common styles."""
    authors = [initials_name(rng) for _ in range(rng.randint(1, 4))]
    names = authors[0] if len(authors) == 1 else ", ".join(authors[:-1]) + " and " + authors[-1]
    title = " ".join(
        w.capitalize()
        for w in (
            rng.choice(ADJECTIVES),
            rng.choice(NOUNS),
            rng.choice(PREPOSITIONS),
            rng.choice(ADJECTIVES),
            rng.choice(NOUNS),
            plural(rng.choice(NOUNS)),
        )
    )
    venue, year = rng.choice(JOURNALS), rng.randint(1995, 2023)
    volume, first_page = rng.randint(1, 60), rng.randint(1, 900)
    pages = f"{first_page}–{first_page + rng.randint(5, 20)}"
    if style == 0:
        return f"[{number}] {names}. {title}. {venue}, {year}."
    if style == 1:
        return f"[{number}] {names}, “{title},” {venue}, vol. {volume}, pp. {pages}, {year}."
    return f"{number}. {names} ({year}). {title}. {venue}, {volume}:{pages}."


class EnglishWriter(Writer):
    templates = TEMPLATES
    sections = SECTIONS
    xref_kinds = ("Figure", "Table", "Section", "Eq.")
    figure_labels = ("Figure {}: ", "Fig. {}. ", "Figure {}. ")
    table_labels = ("Table {}: ", "TABLE {}. ", "Table {}. ")
    table_corners = ("Method", "Model", "Setting")
    metrics = words("Precision Recall F1 mAP AP50 AP75 Params FPS Accuracy")
    methods = words("Baseline Ours LayoutLM LayoutLMv3 DiT Faster-RCNN Mask-RCNN DETR YOLOv5 BERT ViT ResNet-50")
    axes = ("Epoch", "Iterations", "Accuracy (%)", "Loss", "Recall", "Threshold", "Time (s)", "Page size")
    box_names = words("Input Encoder Fusion Decoder Output Backbone FPN RPN Head OCR Tokens Image")
    series = ("Ours", "Baseline", "Image only", "Text only", "w/o fusion")

    def word_slots(self):
        rng = self.rng
        return {
            "adj": lambda: rng.choice(ADJECTIVES),
            "Adj": lambda: rng.choice(ADJECTIVES).capitalize(),
            "noun": lambda: rng.choice(NOUNS),
            "nouns": lambda: plural(rng.choice(NOUNS)),
            "verb": lambda: rng.choice(VERBS),
            "verbs": lambda: rng.choice(VERBS) + "s",
            "adv": lambda: rng.choice(ADVERBS),
            "prep": lambda: rng.choice(PREPOSITIONS),
            "intro": lambda: rng.choice(INTRO_VERBS),
        }

    def paragraph(self, num_words):
        sentences, count = [], 0
        while count < num_words:
            sentences.append(self.sentence())
            count += len(sentences[-1].split())
        return " ".join(sentences)

    def references_heading(self):
        return self.rng.choice(("References", "REFERENCES", "Bibliography"))

    def paper_title(self):
        rng = self.rng
        return (
            f"{rng.choice(ADJECTIVES).capitalize()} {plural(rng.choice(NOUNS)).capitalize()} for "
            f"{rng.choice(ADJECTIVES).capitalize()} {rng.choice(NOUNS).capitalize()} "
            f"{rng.choice(('Detection', 'Analysis', 'Understanding', 'Recognition'))}"
        )

    def authors(self):
        return ", ".join(f"{initials_name(self.rng)}{self.rng.randint(1, 3)}" for _ in range(self.rng.randint(2, 5)))

    def affiliation(self):
        return f"{self.rng.randint(1, 3)} Department of Computer Science, University of {self.rng.choice(SURNAMES)}"

    def caption_body(self, num_words):
        rng = self.rng
        text = (
            f"{rng.choice(CAPTION_OPENERS)} the {rng.choice(ADJECTIVES)} "
            f"{plural(rng.choice(NOUNS))} on {rng.choice(DATASETS)}."
        )
        if num_words > 12:
            text += " " + self.paragraph(num_words - 10)
        return text

    def reference(self, number):
        return latin_reference(self.rng, number, self.reference_style)

    def header_items(self, page_number):
        rng = self.rng
        left = rng.choice((rng.choice(JOURNALS), f"{initials_name(rng)} et al.", self.paper_title()))
        volume = f"Vol. {rng.randint(1, 60)}, No. {rng.randint(1, 12)}, {rng.randint(2000, 2024)}"
        return left, rng.choice((str(page_number), volume))

    def footer_items(self, page_number):
        rng = self.rng
        left = rng.choice(
            (
                f"© {rng.randint(2000, 2024)} Elsevier Ltd. All rights reserved.",
                f"Preprint submitted to {rng.choice(JOURNALS)}",
                f"doi:10.{rng.randint(1000, 9999)}/j.patcog.{rng.randint(2000, 2024)}.{rng.randint(100000, 999999)}",
            )
        )
        return left, rng.choice((str(page_number), f"Page {page_number}", f"- {page_number} -"))
