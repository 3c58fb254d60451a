#!/usr/bin/env python
"""Generate synthetic document pages: COCO boxes of the 10 CDLA classes, page images, OCR jsons.

    python tools/make_synthetic.py --out datasets/synthetic --split train --num-pages 200
    python tools/make_synthetic.py --out datasets/synthetic --splits train:200 val:50 --hard-text --workers 2

Each split is written as <out>/<split>.json, <out>/<split>/images/ and <out>/<split>/ocr/,
ready for `register_vl_coco(name, "<out>/<split>.json", "<out>/<split>/images")`.
"""
import argparse
import logging
import sys

from ditod.data.synthetic import CATEGORIES, SyntheticOptions, find_cjk_font, generate_split


def split_count(text):
    name, sep, count = text.partition(":")
    if not sep or not name or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:PAGES such as train:200, got {text!r}")
    return name, int(count)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="dataset folder")
    parser.add_argument("--split", default="train", help="split name (with --num-pages)")
    parser.add_argument("--num-pages", type=int, help="pages in --split")
    parser.add_argument("--splits", nargs="+", type=split_count, metavar="NAME:PAGES",
                        help="several splits at once, e.g. train:200 val:50 (instead of --split/--num-pages)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same pages (byte for byte)")
    parser.add_argument("--lang", choices=("en", "zh", "mixed"), default="en",
                        help="mixed: each page is English or Chinese at random")
    parser.add_argument("--hard-text", action="store_true",
                        help="Text, captions and references look alike: only their words tell them apart")
    parser.add_argument("--height", type=int, default=1000, help="page height in pixels (A4 aspect)")
    parser.add_argument("--ocr-drop", type=float, default=0.0, help="probability that an OCR line is missing")
    parser.add_argument("--ocr-swap", type=float, default=0.0, help="probability that a character is misread")
    parser.add_argument("--ocr-jitter", type=float, default=0.0,
                        help="OCR box edge noise, standard deviation as a fraction of the line height")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering pages")
    args = parser.parse_args(argv)
    if args.splits is None:
        if args.num_pages is None or args.num_pages < 1:
            parser.error("give --num-pages N (N >= 1) for --split, or --splits NAME:PAGES ...")
        args.splits = [(args.split, args.num_pages)]
    if args.lang == "zh" and find_cjk_font() is None:
        parser.error("--lang zh needs a CJK font and none was found: apt-get install fonts-wqy-microhei")
    try:
        args.options = SyntheticOptions(height=args.height, lang=args.lang, hard_text=args.hard_text,
                                        ocr_drop=args.ocr_drop, ocr_swap=args.ocr_swap, ocr_jitter=args.ocr_jitter)
    except ValueError as e:
        parser.error(str(e))
    return args


def print_summary(summaries):
    width = max(len(name) for name in CATEGORIES)
    print(f"\n{'class':<{width}}" + "".join(f"{s.split:>10}" for s in summaries))
    for name in CATEGORIES:
        print(f"{name:<{width}}" + "".join(f"{s.annotations_per_class[name]:>10}" for s in summaries))
    for s in summaries:
        print(f"{s.split}: {s.num_pages} pages, {sum(s.annotations_per_class.values())} blocks in "
              f"{s.seconds:.1f} s ({s.pages_per_second:.1f} pages/s) -> {s.json_path}, {s.image_root}")


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summaries = [
        generate_split(args.out, split, num_pages, seed=args.seed, options=args.options,
                       workers=args.workers, progress=True)
        for split, num_pages in args.splits
    ]
    print_summary(summaries)


if __name__ == "__main__":
    sys.exit(main())
