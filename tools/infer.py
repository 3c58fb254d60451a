#!/usr/bin/env python
"""
Detect the layout of page images and PDFs with a trained ditod model.

    python tools/infer.py --config-file configs/publaynet/cascade_layoutlmv3_text.yaml \\
        --weights output/model_final.pth --input page.png scans/ paper.pdf --output out/ \\
        --opts MODEL.VIT.TOKENIZER path/to/tokenizer

Inputs are image files (png/jpg/jpeg/tif/tiff/bmp), folders (searched recursively for
images and PDFs) and PDFs (each page rendered at --dpi with PyMuPDF; its text layer is
the OCR, a page without one is OCRed). A model that reads text gets the OCR json of an
image from --ocr-dir (same relative path and stem as the image); an image without one
there (a warning each), or every image without --ocr-dir, is OCRed on the fly by
--ocr-engine. Every page goes through the model exactly as the test data loader feeds it
(VLDatasetMapper: same resize, same tokenization).

The class names and their COCO category ids are those of the training data, saved in the
checkpoint by training; --classes overrides the names. For a checkpoint without them,
the names (and ids) are those of the config's first DATASETS.TEST (or TRAIN) dataset.

Written under --output, per page (named after the image, or <pdf stem>_p0001 for PDF
page 1; folder inputs keep their relative layout):
    <name>.png     the page with the boxes, class names and scores drawn
    <name>.json    the detections: class, score, box [x0, y0, x1, y1] in page pixels
    pages/<name>.png, ocr/<name>.json   rendered PDF pages, and OCR made here (reusable
                   with --ocr-dir)
and results.json: every page (COCO "images"), the classes ("categories") and every
detection ("annotations" with "score", bbox [x, y, w, h]) in COCO format.
A page that fails is reported at the end (exit status 1); the others are done.
"""

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pymupdf
import torch
from PIL import Image
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from ditod import load_config
from ditod.data import VLDatasetMapper, register_from_config
from ditod.data.ocr import OCR_ENGINES, build_ocr_engine, pdf_text_layer, render_pdf_page, save_ocr
from ditod.engine import VLDetectionCheckpointer, configure_cpu_memory
from ditod.engine.checkpoint import category_ids

logger = logging.getLogger("ditod.tools.infer")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@dataclass(frozen=True)
class Page:
    """One page to detect: an image file, or page `index` (0-based) of a PDF."""

    name: str  # output name without suffix, relative to --output
    source: Path
    index: int | None = None
    ocr_file: Path | None = None  # --ocr-dir json of an image


def collect_pages(inputs, ocr_dir):
    """The pages of the inputs, in order, and the inputs that cannot be used (with why)."""
    files, failures = [], []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | {".pdf"})
            files.extend((p, p.relative_to(path).with_suffix("")) for p in found)
        elif path.is_file():
            files.append((path, Path(path.stem)))
        else:
            raise SystemExit(f"infer.py: error: --input {path} does not exist")
    pages = []
    for path, name in files:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            ocr_file = Path(ocr_dir) / name.with_suffix(".json") if ocr_dir else None
            pages.append(Page(name.as_posix(), path, ocr_file=ocr_file))
        elif suffix == ".pdf":
            try:
                with pymupdf.open(path) as document:
                    count = document.page_count
            except Exception as e:
                failures.append((str(path), f"cannot open PDF: {e}"))
                continue
            pages.extend(Page(f"{name.as_posix()}_p{i + 1:04d}", path, index=i) for i in range(count))
        else:
            failures.append((str(path), f"not an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or PDF"))
    names = Counter(page.name for page in pages)
    clashes = sorted(name for name, count in names.items() if count > 1)
    if clashes:
        raise SystemExit(f"infer.py: error: several inputs would write {clashes[0]}.json; rename one")
    return pages, failures


def dataset_classes(dataset):
    """The class names of a registered dataset, reading its COCO json if need be."""
    metadata = MetadataCatalog.get(dataset) if dataset else None
    if (
        metadata is not None
        and metadata.get("thing_classes") is None
        and dataset in DatasetCatalog
        and os.path.isfile(metadata.get("json_file", ""))
    ):
        DatasetCatalog.get(dataset)  # loading a COCO json sets its class names
    classes = metadata.get("thing_classes") if metadata is not None else None
    if classes is None:
        raise SystemExit(
            f"infer.py: error: the checkpoint has no class names and those of {dataset or 'DATASETS.TEST'} "
            "are unknown (its json is not here); give them with --classes"
        )
    return classes


def classes_and_ids(cfg, classes, checkpoint, weights):
    """
    The class names and the COCO category id of each contiguous class. Names: --classes,
    else those training saved in the checkpoint, else those of the config's first test
    (or train) dataset. Ids: the checkpoint's, else the dataset's own when known, else 1..N.
    """
    dataset = (list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN) + [None])[0]
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    hint = ""
    if classes:
        source = "--classes"
    elif checkpoint.get("thing_classes"):
        classes, source = checkpoint["thing_classes"], f"the checkpoint {weights}"
        # The model was trained with these classes: the config must say as many.
        hint = f" (--opts MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}?)"
    else:
        classes, source = dataset_classes(dataset), f"dataset {dataset}"
    if len(classes) != num_classes:
        raise SystemExit(
            f"infer.py: error: {len(classes)} class names from {source} for a model of "
            f"MODEL.ROI_HEADS.NUM_CLASSES {num_classes}{hint}: {list(classes)}"
        )
    logger.info(f"Class names from {source}: {list(classes)}")
    ids = checkpoint.get("category_ids")
    if not ids or len(ids) != num_classes:
        ids = category_ids(MetadataCatalog.get(dataset), num_classes) if dataset else list(range(1, num_classes + 1))
    return list(classes), dict(enumerate(ids))


class Detector:
    """The model of a config with its weights, fed by the test mapper, and its OCR.
    `checkpoint` holds what the weights file has besides the weights (class names, ...)."""

    def __init__(self, cfg, weights, ocr_engine, dpi):
        self.cfg = cfg
        self.model = build_model(cfg).eval()
        self.checkpoint = VLDetectionCheckpointer(self.model).load(weights)
        self.mapper = VLDatasetMapper(cfg, is_train=False)
        self.reads_text = self.mapper.ocr_tokenizer is not None
        self.ocr_engine_name = ocr_engine
        self._ocr_engine = None
        self.dpi = dpi
        self.seconds = Counter()

    def ocr(self, image):
        if self._ocr_engine is None:
            self._ocr_engine = build_ocr_engine(self.ocr_engine_name)
        return self._ocr_engine(image)

    def _timed(self, stage, function, *args):
        start = time.perf_counter()
        result = function(*args)
        self.seconds[stage] += time.perf_counter() - start
        return result

    def page_input(self, page, output):
        """The dataset dict of a page, the page as an RGB array and where its OCR came
        from; PDF pages are rendered to output/pages, OCR made here is saved to output/ocr."""
        record, ocr, source = {"image_id": page.name}, None, "none"
        if page.index is None:
            image = self._timed("load", read_image, str(page.source), "RGB")
            record["file_name"] = str(page.source)
            if self.reads_text and page.ocr_file is not None:
                if page.ocr_file.is_file():
                    record["ocr_file"], source = str(page.ocr_file), "ocr json"
                else:
                    logger.warning(
                        f"{page.name}: no OCR json {page.ocr_file}; OCR on the fly with {self.ocr_engine_name}"
                    )
        else:
            with pymupdf.open(page.source) as document:
                image = self._timed("load", render_pdf_page, document[page.index], self.dpi)
                if self.reads_text:
                    ocr, source = self._timed("ocr", pdf_text_layer, document[page.index], self.dpi), "text layer"
            path = output / "pages" / f"{page.name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._timed("load", Image.fromarray(image).save, path)
            record["file_name"] = str(path)
        if self.reads_text and "ocr_file" not in record and not (ocr is not None and len(ocr)):
            ocr, source = self._timed("ocr", self.ocr, image), self.ocr_engine_name
        if ocr is not None:
            save_ocr(output / "ocr" / f"{page.name}.json", ocr)
            record["ocr"] = ocr
        return record, image, source

    @torch.no_grad()
    def __call__(self, record):
        """Instances of the page of `record`, in page pixels, on the CPU."""
        inputs = self._timed("preprocess", self.mapper, record)
        return self._timed("model", lambda: self.model([inputs])[0]["instances"].to("cpu"))


def detections(instances, classes, ids):
    boxes = instances.pred_boxes.tensor.tolist()
    return [
        {"class": classes[c], "category_id": ids[c], "score": round(s, 4), "bbox": [round(v, 2) for v in box]}
        for c, s, box in zip(instances.pred_classes.tolist(), instances.scores.tolist(), boxes)
    ]


def setup_cfg(args):
    try:
        cfg = load_config(args.config_file, args.opts)
        cfg.MODEL.WEIGHTS = args.weights
        cfg.MODEL.DEVICE = args.device
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.score_thresh
        cfg.freeze()
        register_from_config(cfg)
    except ValueError as e:
        raise SystemExit(f"infer.py: error: {e}") from None
    return cfg


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", required=True, help="the model's checkpoint (.pth)")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders, PDFs")
    parser.add_argument("--output", required=True, help="folder for the drawn pages and the JSONs")
    parser.add_argument(
        "--ocr-dir",
        help="folder of existing OCR jsons of the images (same relative path and stem); "
        "an image without one is OCRed on the fly (default: all are)",
    )
    parser.add_argument("--ocr-engine", default="rapidocr", choices=sorted(OCR_ENGINES), help="OCR on the fly")
    parser.add_argument("--score-thresh", type=float, default=0.5, help="keep detections scoring at least this")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--classes", nargs="+", help="class names (default: those in the checkpoint, else those of DATASETS.TEST)"
    )
    parser.add_argument("--dpi", type=float, default=144, help="resolution of rendered PDF pages")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ..., last")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="ditod")
    setup_logger(name="detectron2")
    if args.ocr_dir and not os.path.isdir(args.ocr_dir):
        problem = "is not a folder" if os.path.exists(args.ocr_dir) else "does not exist"
        raise SystemExit(f"infer.py: error: --ocr-dir {args.ocr_dir} {problem}")
    if "://" not in args.weights and not os.path.isfile(args.weights):  # URLs are fetched when loading
        problem = "is not a file" if os.path.exists(args.weights) else "does not exist"
        raise SystemExit(f"infer.py: error: --weights {args.weights} {problem}")
    cfg = setup_cfg(args)
    configure_cpu_memory(cfg)
    output = Path(args.output)
    pages, failures = collect_pages(args.input, args.ocr_dir)
    detector = Detector(cfg, args.weights, args.ocr_engine, args.dpi)
    classes, ids = classes_and_ids(cfg, args.classes, detector.checkpoint, args.weights)
    metadata = Metadata(name="infer", thing_classes=classes)

    images, annotations, sources = [], [], Counter()
    start = time.perf_counter()
    for page in tqdm(pages, desc="pages", unit="page"):
        try:
            record, image, source = detector.page_input(page, output)
            instances = detector(record)
        except Exception as e:
            failures.append((page.name, f"{type(e).__name__}: {e}"))
            logger.warning(f"{page.name}: {type(e).__name__}: {e}")
            continue
        sources[source] += 1
        found = detections(instances, classes, ids)
        height, width = image.shape[:2]
        (output / page.name).parent.mkdir(parents=True, exist_ok=True)
        Visualizer(image, metadata).draw_instance_predictions(instances).save(str(output / f"{page.name}.png"))
        result = {
            "input": str(page.source),
            "page": None if page.index is None else page.index + 1,
            "image": record["file_name"],
            "width": width,
            "height": height,
            "ocr": source,
            "detections": found,
        }
        with open(output / f"{page.name}.json", "w", encoding="utf-8") as f:
            json.dump(result, f, ensure_ascii=False)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": record["file_name"], "width": width, "height": height})
        for d in found:
            x0, y0, x1, y1 = d["bbox"]
            box = [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": d["category_id"],
                    "bbox": box,
                    "area": box[2] * box[3],
                    "score": d["score"],
                    "iscrowd": 0,
                }
            )
    seconds = time.perf_counter() - start

    output.mkdir(parents=True, exist_ok=True)
    categories = [{"id": ids[i], "name": name} for i, name in enumerate(classes)]
    with open(output / "results.json", "w", encoding="utf-8") as f:
        json.dump({"images": images, "categories": categories, "annotations": annotations}, f, ensure_ascii=False)

    done = max(len(images), 1)
    print(
        f"\n{len(images)} page(s) in {seconds:.1f} s, {len(annotations)} detections "
        f"(score >= {args.score_thresh}), {len(failures)} failed; written to {output}\n"
        f"seconds per page: OCR {detector.seconds['ocr'] / done:.3f}, model {detector.seconds['model'] / done:.3f} "
        f"on {cfg.MODEL.DEVICE} (reading/rendering {detector.seconds['load'] / done:.3f}, "
        f"resize + tokens {detector.seconds['preprocess'] / done:.3f})\n"
        f"OCR from: {', '.join(f'{k} {v}' for k, v in sorted(sources.items())) or '-'}"
    )
    for name, error in failures:
        print(f"FAILED {name}: {error}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
