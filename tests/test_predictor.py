"""VLPredictor: the detections of the evaluation pipeline; pages as BGR, RGB or PIL images,
PDF pages and batches; OCR given, made on the fly or absent; class names and ids."""

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from conftest import tiny_cfg
from ditod.data import load_ocr
from ditod.data.pages import read_rgb_image
from ditod.data.synthetic import CATEGORIES
from ditod.engine import VLDetectionCheckpointer, VLPredictor, VLTrainer, model_classes

# The untrained model scores about 1/11 per class: a low threshold keeps some boxes.
THRESH = 0.05


def thresholded(cfg):
    cfg = cfg.clone()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = THRESH
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def predictor(tiny_model):
    root, _, cfg = tiny_model
    return VLPredictor(thresholded(cfg), str(root / "weights.pth"), input_format="RGB")


def pages_with_ocr(root):
    paths = sorted((root / "val" / "images").glob("*.png"))
    return [read_rgb_image(p) for p in paths], [load_ocr(root / "val" / "ocr" / f"{p.stem}.json") for p in paths]


def assert_same_detections(a, b):
    assert len(a.detections) == len(b.detections) > 0
    np.testing.assert_allclose([d.bbox for d in a.detections], [d.bbox for d in b.detections], atol=1e-3)
    np.testing.assert_allclose([d.score for d in a.detections], [d.score for d in b.detections], atol=1e-5)
    assert [d.label for d in a.detections] == [d.label for d in b.detections]


@pytest.mark.slow
def test_detections_equal_those_of_the_evaluation_pipeline(tiny_model, predictor):
    root, _, cfg = tiny_model
    cfg = thresholded(cfg)
    model = build_model(cfg).eval()
    VLDetectionCheckpointer(model).load(str(root / "weights.pth"))
    pages = 0
    with torch.no_grad():
        for inputs in VLTrainer.build_test_loader(cfg, "infer_val"):
            assert inputs[0]["input_ids"].numel() > 0
            instances = model(inputs)[0]["instances"]
            name = inputs[0]["file_name"].rsplit("/", 1)[-1].removesuffix(".png")
            result = predictor(
                read_rgb_image(inputs[0]["file_name"]), ocr=load_ocr(root / "val" / "ocr" / f"{name}.json")
            )
            assert len(result.detections) == len(instances) > 0
            np.testing.assert_allclose([d.bbox for d in result.detections], instances.pred_boxes.tensor, atol=1e-4)
            np.testing.assert_allclose([d.score for d in result.detections], instances.scores, atol=1e-6)
            assert [CATEGORIES.index(d.label) for d in result.detections] == instances.pred_classes.tolist()
            assert [d.category_id for d in result.detections] == [c + 1 for c in instances.pred_classes.tolist()]
            pages += 1
    assert pages == 2


def test_bgr_rgb_pil_and_batches_give_the_same_detections(tiny_model, predictor):
    root, _, cfg = tiny_model
    images, ocrs = pages_with_ocr(root)
    assert images[0].shape == images[1].shape  # one batch without padding
    single = [predictor(image, ocr=ocr) for image, ocr in zip(images, ocrs)]
    bgr = VLPredictor(thresholded(cfg), str(root / "weights.pth"))  # DefaultPredictor's default
    for image, ocr, expected in zip(images, ocrs, single):
        assert_same_detections(bgr(np.ascontiguousarray(image[:, :, ::-1]), ocr=ocr), expected)
        assert_same_detections(predictor(Image.fromarray(image), ocr=ocr), expected)
    batch = predictor(images, ocr=ocrs)
    assert isinstance(batch, list) and len(batch) == 2
    for got, expected in zip(batch, single):
        assert_same_detections(got, expected)
    for result, ocr in zip(single, ocrs):
        assert result.ocr_source == "given" and (result.width, result.height) == (ocr.width, ocr.height)
        # Every OCR line is in one block or listed apart; blocks are in reading order.
        assert sum(len(b.lines) for b in result.blocks) + len(result.lines_outside_blocks) == len(ocr)
        assert [b.index for b in result.blocks] == list(range(len(result.detections)))
        assert result.seconds["model"] > 0 and "ocr" not in result.seconds
    with pytest.raises(ValueError, match="2 pages but 1 OCR"):
        predictor(images, ocr=ocrs[:1])
    with pytest.raises(ValueError, match=r"H x W x 3 uint8 image array.*\(400, 283\) uint8"):
        predictor(images[0][:, :, 0])


@pytest.mark.slow
def test_pdf_page_text_layer_and_ocr_on_the_fly(tiny_model, predictor, two_page_pdf):
    import pymupdf

    with pymupdf.open(two_page_pdf) as document:
        result = predictor(document[1])
    assert result.ocr_source == "text layer" and result.ocr.words[0] == "Chapter 2"
    assert (result.width, result.height) == (600, 840)  # 144 dpi
    assert "Chapter 2" in [line.text for b in result.blocks for line in b.lines] + [
        line.text for line in result.lines_outside_blocks
    ]
    # An image without OCR is OCRed (rapidocr, built on first use).
    root, _, _ = tiny_model
    image = read_rgb_image(root / "val" / "images" / "val_000000.png")
    result = predictor(image)
    assert result.ocr_source == "rapidocr" and len(result.ocr) > 5 and result.seconds["ocr"] > 0


def test_image_only_model_reads_no_ocr(tmp_path):
    cfg = tiny_cfg("MODEL.IMAGE_ONLY", True, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", THRESH)
    seed_all_rng(0)
    VLDetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("image_only")
    predictor = VLPredictor(cfg, str(tmp_path / "image_only.pth"), classes=CATEGORIES)
    image = np.full((300, 200, 3), 255, np.uint8)
    image[50:80, 20:180] = 0
    result = predictor(image)
    assert result.ocr is None and result.ocr_source == "none" and result.detections
    assert all(not b.lines for b in result.blocks) and result.lines_outside_blocks == []
    assert predictor.category_ids == list(range(1, len(CATEGORIES) + 1))
    assert result.to_dict()["blocks"][0]["text"] == ""


def test_class_names_and_ids(tiny_model):
    _, _, cfg = tiny_model
    own = {"thing_classes": [f"c{i}" for i in range(10)], "category_ids": [11 * (i + 1) for i in range(10)]}
    assert model_classes(cfg, own) == (own["thing_classes"], own["category_ids"])
    # Names given: they win; ids still from the checkpoint.
    names = [f"n{i}" for i in range(10)]
    assert model_classes(cfg, own, names) == (names, own["category_ids"])
    # Without names in the checkpoint: those of DATASETS.TEST, read from its json.
    assert model_classes(cfg, {}) == (list(CATEGORIES), list(range(1, 11)))
    with pytest.raises(ValueError, match=r"3 class names from the checkpoint w\.pth .*NUM_CLASSES 3\?"):
        model_classes(cfg, {"thing_classes": ["a", "b", "c"]}, weights="w.pth")
    with pytest.raises(ValueError, match="has no class names and those of synthetic_val are unknown"):
        model_classes(tiny_cfg(), {}, weights="w.pth")
