"""The published LayoutLMv3 recipe (configs/publaynet/cascade_mask_layoutlmv3*.yaml): its
settings, a Cascade Mask R-CNN step and prediction, and box and mask AP in metrics.json."""

import json
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.structures.masks import polygons_to_bitmask
from detectron2.utils.events import EventStorage

from conftest import REPO, shared_data
from ditod import load_config
from ditod.data import VLDatasetMapper, register_vl_coco, train_tokenizer
from ditod.data.ocr import PageOCR, save_ocr
from ditod.engine import VLTrainer, write_metrics

RECIPE = os.path.join(REPO, "configs", "publaynet", "cascade_mask_layoutlmv3.yaml")
RECIPE_TEXT = os.path.join(REPO, "configs", "publaynet", "cascade_mask_layoutlmv3_text.yaml")
# A narrow model of the recipe's shape, on the CPU, without the hub.
SMALL = [
    "MODEL.VIT.NAME",
    "layoutlmv3_custom",
    "MODEL.VIT.PRETRAINED",
    "",
    "MODEL.VIT.HIDDEN_SIZE",
    48,
    "MODEL.VIT.NUM_LAYERS",
    4,
    "MODEL.VIT.NUM_HEADS",
    4,
    "MODEL.VIT.INTERMEDIATE_SIZE",
    96,
    "MODEL.VIT.OUT_FEATURES",
    ["layer0", "layer1", "layer2", "layer3"],
    "MODEL.FPN.OUT_CHANNELS",
    32,
    "MODEL.DEVICE",
    "cpu",
    "INPUT.MIN_SIZE_TRAIN",
    (160,),
    "INPUT.MAX_SIZE_TRAIN",
    256,
    "INPUT.MIN_SIZE_TEST",
    160,
    "INPUT.MAX_SIZE_TEST",
    256,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    200,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST",
    200,
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    100,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    64,
]


@pytest.mark.parametrize("config_file", [RECIPE, RECIPE_TEXT])
def test_recipe_configs_hold_the_published_settings(config_file):
    """The settings of the README's table "The published recipe"."""
    cfg = load_config(config_file)
    vit = cfg.MODEL.VIT
    assert (vit.NAME, vit.PRETRAINED, vit.OUT_FEATURES) == (
        "layoutlmv3_base",
        "microsoft/layoutlmv3-base",
        ["layer3", "layer5", "layer7", "layer11"],
    )
    assert vit.DROP_PATH == 0.1 and vit.POS_TYPE == "abs" and vit.INPUT_SIZE == 224
    image_only = config_file == RECIPE
    assert cfg.MODEL.IMAGE_ONLY is image_only
    assert cfg.MODEL.MASK_ON and cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads" and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5
    mask_head = cfg.MODEL.ROI_MASK_HEAD
    assert (mask_head.NAME, mask_head.NUM_CONV, mask_head.POOLER_RESOLUTION) == ("MaskRCNNConvUpsampleHead", 4, 14)
    # Multi-scale resize only: unilm's mapper crops and flips nothing for LayoutLMv3.
    assert not cfg.INPUT.CROP.ENABLED and cfg.INPUT.RANDOM_FLIP == "none"
    assert cfg.INPUT.MIN_SIZE_TRAIN == (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
    assert (cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1333, 800, 1333)
    solver = cfg.SOLVER
    assert solver.OPTIMIZER.lower() == "adamw" and solver.BASE_LR == 2e-4 and solver.WEIGHT_DECAY == 0.05
    assert (solver.LR_SCHEDULER_NAME, solver.WARMUP_ITERS, solver.WARMUP_FACTOR) == ("WarmupCosineLR", 1000, 0.01)
    assert (solver.MAX_ITER, solver.IMS_PER_BATCH, solver.AMP.ENABLED) == (60000, 32, True)
    assert solver.CLIP_GRADIENTS.ENABLED and solver.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert solver.CLIP_GRADIENTS.CLIP_VALUE == 1.0
    assert tuple(cfg.DATASETS.TRAIN) == ("publaynet_train",) and tuple(cfg.DATASETS.TEST) == ("publaynet_val",)


def shapes_page(folder):
    """A page with a red triangle and a blue notched rectangle, their OCR, and a record
    whose annotations outline them with polygons."""
    objects = [[40, 30, 150, 60, 60, 150], [180, 40, 300, 40, 300, 200, 240, 200, 240, 120, 180, 120]]
    image = np.full((240, 320, 3), 255, dtype=np.uint8)
    annotations = []
    for index, (polygon, color) in enumerate(zip(objects, [(200, 30, 30), (30, 30, 200)])):
        cv2.fillPoly(image, [np.array(polygon, dtype=np.int32).reshape(-1, 2)], color)
        xs, ys = polygon[0::2], polygon[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        annotations.append({"bbox": box, "bbox_mode": 1, "category_id": index, "segmentation": [polygon], "iscrowd": 0})
    Image.fromarray(image).save(folder / "page.png")
    save_ocr(
        folder / "page.json",
        PageOCR(320, 240, ["a red triangle", "a blue shape"], [[40, 30, 110, 20], [180, 40, 120, 20]]),
    )
    return {
        "file_name": str(folder / "page.png"),
        "ocr_file": str(folder / "page.json"),
        "image_id": 1,
        "height": 240,
        "width": 320,
        "annotations": annotations,
    }


@pytest.mark.slow
def test_the_text_recipe_trains_and_predicts_masks(tmp_path):
    train_tokenizer(["a red triangle", "a blue shape"] * 20, tmp_path / "tokenizer", vocab_size=270)
    cfg = load_config(RECIPE_TEXT, [*SMALL, "MODEL.VIT.TOKENIZER", str(tmp_path / "tokenizer")])
    record = shapes_page(tmp_path)
    model = build_model(cfg).train()
    batch = [VLDatasetMapper(cfg, is_train=True)(record)]
    assert len(batch[0]["instances"].gt_masks) == 2 and len(batch[0]["input_ids"]) > 0
    with EventStorage(0):
        losses = model(batch)
    assert {"loss_mask", "loss_cls_stage2", "loss_rpn_cls"} <= set(losses)
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        instances = model([VLDatasetMapper(cfg, is_train=False)(record)])[0]["instances"]
    assert instances.has("pred_masks") and instances.pred_masks.shape[1:] == (240, 320)


def test_box_and_mask_ap_in_metrics_json(tmp_path):
    """The ground truth of real PubLayNet pages, given back as predictions with their
    polygons as masks, scores 100 box AP and 100 mask AP."""
    samples = shared_data("publaynet-samples")
    name = f"recipe_{uuid.uuid4().hex[:8]}"
    register_vl_coco(name, os.path.join(samples, "samples.json"), samples)
    records = DatasetCatalog.get(name)
    cfg = load_config(RECIPE, ["OUTPUT_DIR", str(tmp_path), "DATASETS.TEST", f'("{name}",)'])
    evaluator = VLTrainer.build_evaluator(cfg, name)
    evaluator.reset()
    for record in records:
        height, width = record["height"], record["width"]
        result = Instances((height, width))
        annotations = record["annotations"]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
        result.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        result.scores = torch.ones(len(annotations))
        result.pred_classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.long)
        masks = [polygons_to_bitmask([np.array(p) for p in a["segmentation"]], height, width) for a in annotations]
        result.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, height, width, dtype=bool)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": result}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100) and results["segm"]["AP"] == pytest.approx(100)
    write_metrics(tmp_path / "metrics.json", name, results)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["dataset"] == name and metrics["AP"] == pytest.approx(100)  # the bbox keys stay at the top
    assert metrics["segm"]["AP"] == pytest.approx(100) and metrics["segm"]["AP50"] == pytest.approx(100)
    assert list(metrics["segm"]["per_class_AP"]) == ["text", "title", "list", "table", "figure"]
