#!/usr/bin/env python
"""Generate synthetic document pages: COCO boxes of the 10 CDLA classes, page images, OCR jsons.

    python tools/make_synthetic.py --out datasets/synthetic --split train --num-pages 200
    python tools/make_synthetic.py --out datasets/synthetic --splits train:200 val:50 --hard-text --workers 2

Each split is written as <out>/<split>.json, <out>/<split>/images/ and <out>/<split>/ocr/,
ready for `register_vl_coco(name, "<out>/<split>.json", "<out>/<split>/images")`.

A split written before (by this tool) is removed first, so a rerun with fewer pages
leaves no stale pages behind. When <out>/<split>.json or <out>/<split>/ holds anything
this tool does not write, nothing is removed and the tool stops with an error.
"""

import argparse
import json
import logging
import os
import re
import sys

from ditod.data.synthetic import CATEGORIES, SyntheticOptions, find_cjk_font, generate_split

logger = logging.getLogger("ditod.tools.make_synthetic")


class ForeignFilesError(RuntimeError):
    pass


def split_name(text):
    # The name becomes a file and a folder name inside --out.
    if not re.fullmatch(r"[\w.-]+", text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"split name must be a plain file name (letters, digits, _ . -), got {text!r}")
    return text


def split_count(text):
    name, sep, count = text.partition(":")
    if not sep or not name or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:PAGES such as train:200, got {text!r}")
    return split_name(name), int(count)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="dataset folder")
    parser.add_argument("--split", default="train", type=split_name, help="split name (with --num-pages)")
    parser.add_argument("--num-pages", type=int, help="pages in --split")
    parser.add_argument(
        "--splits",
        nargs="+",
        type=split_count,
        metavar="NAME:PAGES",
        help="several splits at once, e.g. train:200 val:50 (instead of --split/--num-pages)",
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same pages (byte for byte)")
    parser.add_argument(
        "--lang", choices=("en", "zh", "mixed"), default="en", help="mixed: each page is English or Chinese at random"
    )
    parser.add_argument(
        "--hard-text",
        action="store_true",
        help="Text, captions and references look alike: only their words tell them apart",
    )
    parser.add_argument("--height", type=int, default=1000, help="page height in pixels (A4 aspect)")
    parser.add_argument("--ocr-drop", type=float, default=0.0, help="probability that an OCR line is missing")
    parser.add_argument("--ocr-swap", type=float, default=0.0, help="probability that a character is misread")
    parser.add_argument(
        "--ocr-jitter",
        type=float,
        default=0.0,
        help="OCR box edge noise, standard deviation as a fraction of the line height",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes rendering pages")
    args = parser.parse_args(argv)
    if args.splits is None:
        if args.num_pages is None or args.num_pages < 1:
            parser.error("give --num-pages N (N >= 1) for --split, or --splits NAME:PAGES ...")
        args.splits = [(args.split, args.num_pages)]
    if args.lang == "zh" and find_cjk_font() is None:
        parser.error("--lang zh needs a CJK font and none was found: apt-get install fonts-wqy-microhei")
    try:
        args.options = SyntheticOptions(
            height=args.height,
            lang=args.lang,
            hard_text=args.hard_text,
            ocr_drop=args.ocr_drop,
            ocr_swap=args.ocr_swap,
            ocr_jitter=args.ocr_jitter,
        )
    except ValueError as e:
        parser.error(str(e))
    return args


def _is_own_json(path, split):
    # generate_split names the split and the seed in the json's info.description.
    try:
        with open(path, encoding="utf-8") as f:
            description = json.load(f).get("info", {}).get("description", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(description, str) and description.startswith(f"ditod synthetic pages, split {split}, seed ")


def _foreign(folder, name):
    return ForeignFilesError(f"{folder} holds {name}, which make_synthetic.py does not write")


def _own_files(folder, split, suffix):
    """The files of `folder`: pages of `split`, or temporary files of an interrupted write.

    Raises:
        ForeignFilesError: when it holds anything else.
    """
    name = rf"{re.escape(split)}_\d{{6,}}{re.escape(suffix)}"
    # The second form is what ditod.data.ocr.atomic_write leaves when killed mid-write.
    page = re.compile(rf"{name}|\.{name}\.[0-9a-f]{{8}}\.tmp")
    with os.scandir(folder) as entries:
        entries = sorted(entries, key=lambda e: e.name)
    for entry in entries:
        if not (entry.is_file(follow_symlinks=False) and page.fullmatch(entry.name)):
            raise _foreign(folder, entry.name)
    return [entry.path for entry in entries]


def previous_output(out, split):
    """What an earlier run of this tool left of `split`: its json (None when there is
    none) and the subfolders of <out>/<split>/ with their files (None when there is no
    such folder).

    Raises:
        ForeignFilesError: when <out>/<split>.json or <out>/<split>/ holds anything else.
    """
    json_path, split_dir = os.path.join(out, f"{split}.json"), os.path.join(out, split)
    if not os.path.lexists(json_path):
        json_path = None
    elif os.path.islink(json_path) or not os.path.isfile(json_path) or not _is_own_json(json_path, split):
        raise ForeignFilesError(f"{json_path} exists and was not written by make_synthetic.py")
    if not os.path.lexists(split_dir):
        return json_path, None
    if os.path.islink(split_dir) or not os.path.isdir(split_dir):
        raise ForeignFilesError(f"{split_dir} exists and is not a folder written by make_synthetic.py")
    folders = {}
    for entry in sorted(os.listdir(split_dir)):
        path = os.path.join(split_dir, entry)
        suffix = {"images": ".png", "ocr": ".json"}.get(entry)
        if not suffix or os.path.islink(path) or not os.path.isdir(path):
            raise _foreign(split_dir, entry)
        folders[path] = _own_files(path, split, suffix)
    return json_path, folders


def remove_previous_output(out, splits):
    """Remove the earlier output of every split in `splits`, after checking all of them."""
    previous = {split: previous_output(out, split) for split in dict.fromkeys(splits)}
    for split, (json_path, folders) in previous.items():
        if json_path is None and folders is None:
            continue
        files = sum(len(paths) for paths in (folders or {}).values())
        logger.info(
            f"Removing the earlier {split} split from {out} ({f'{split}.json and ' if json_path else ''}"
            f"{files} files under {split}/) before writing it"
        )
        if json_path:
            os.remove(json_path)
        if folders is not None:
            for folder, paths in folders.items():
                for path in paths:
                    os.remove(path)
                os.rmdir(folder)
            os.rmdir(os.path.join(out, split))


def print_summary(summaries):
    width = max(len(name) for name in CATEGORIES)
    print(f"\n{'class':<{width}}" + "".join(f"{s.split:>10}" for s in summaries))
    for name in CATEGORIES:
        print(f"{name:<{width}}" + "".join(f"{s.annotations_per_class[name]:>10}" for s in summaries))
    for s in summaries:
        print(
            f"{s.split}: {s.num_pages} pages, {sum(s.annotations_per_class.values())} blocks in "
            f"{s.seconds:.1f} s ({s.pages_per_second:.1f} pages/s) -> {s.json_path}, {s.image_root}"
        )


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        remove_previous_output(args.out, [split for split, _ in args.splits])
    except ForeignFilesError as e:
        raise SystemExit(f"make_synthetic.py: error: {e}; move it away or choose another --out") from None
    summaries = [
        generate_split(
            args.out, split, num_pages, seed=args.seed, options=args.options, workers=args.workers, progress=True
        )
        for split, num_pages in args.splits
    ]
    print_summary(summaries)


if __name__ == "__main__":
    sys.exit(main())
