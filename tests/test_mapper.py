"""VLDatasetMapper: OCR tokens follow the image through resize/crop/flip; bad input."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures.masks import polygons_to_bitmask
from detectron2.utils.events import EventStorage

import ditod.layoutlmv3 as layoutlmv3
from conftest import tiny_cfg
from ditod.data.mapper import UnreadableDatasetError, VLDatasetMapper
from ditod.data.ocr import OCRFormatError, PageOCR, save_ocr
from ditod.data.tokens import OCRTokenizer, train_tokenizer

WIDTH, HEIGHT = 320, 240
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]


def page_lines():
    """A two-column page: a title, 5 lines per column, a footer. Each line has two words
    of its own and a colour of its own; returned in reading order as (text, xywh, rgb)."""
    boxes = [[40, 10, 240, 16]]
    boxes += [[20, 40 + 30 * i, 130, 14] for i in range(5)]
    boxes += [[170, 40 + 30 * i, 130, 14] for i in range(5)]
    boxes += [[20, 200, 280, 14]]
    texts = [f"{WORDS[2 * i]} {WORDS[2 * i + 1]}" for i in range(len(boxes))]
    colors = [((37 * i) % 200, (91 * i + 60) % 200, (53 * i + 120) % 200) for i in range(len(boxes))]
    return texts, np.array(boxes, dtype=float), colors


def draw_page(path, boxes, colors, size=(WIDTH, HEIGHT)):
    image = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    for (x, y, w, h), color in zip(boxes.astype(int), colors):
        image[y : y + h, x : x + w] = color
    Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    rng = np.random.RandomState(0)
    corpus = [" ".join(rng.choice(WORDS, 4)) for _ in range(300)]
    train_tokenizer(corpus, out, vocab_size=400)
    return str(out)


@pytest.fixture
def page(tmp_path):
    """A record of the coloured page, its OCR json written in reading order reversed."""
    texts, boxes, colors = page_lines()
    draw_page(tmp_path / "page.png", boxes, colors)
    order = np.arange(len(texts))[::-1]
    save_ocr(tmp_path / "page.json", PageOCR(WIDTH, HEIGHT, [texts[i] for i in order], boxes[order]))
    record = {
        "file_name": str(tmp_path / "page.png"),
        "ocr_file": str(tmp_path / "page.json"),
        "image_id": 0,
        "height": HEIGHT,
        "width": WIDTH,
        "annotations": [],
    }
    return record, texts, boxes, colors


def make_cfg(tokenizer_dir, *overrides):
    return tiny_cfg("MODEL.VIT.TOKENIZER", tokenizer_dir, *overrides)


def mapper_with(cfg, augmentations, is_train=True):
    return VLDatasetMapper(
        is_train,
        augmentations=augmentations,
        image_format="RGB",
        ocr_tokenizer=OCRTokenizer.from_config(cfg),
        missing_ocr=cfg.INPUT.OCR.MISSING,
    )


def token_lines(out, tokenizer):
    """The mapped page's tokens grouped into lines (runs of one box): [(text, box)]."""
    ids, boxes = out["input_ids"], out["token_boxes"]
    lines, start = [], 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or not torch.equal(boxes[end], boxes[start]):
            lines.append((tokenizer.decode(ids[start:end]).strip(), boxes[start].numpy()))
            start = end
    return lines


def assert_boxes_cover_their_words(out, lines, texts, colors):
    """Every token box lies in the image and, inside, shows the colour its line was drawn in."""
    image = out["image"].permute(1, 2, 0).numpy().astype(int)
    height, width = image.shape[:2]
    for text, (x0, y0, x1, y1) in lines:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (text, (x0, y0, x1, y1))
        # The middle half of the box, away from the colours blended at its edges by resizing.
        cx0, cx1 = int(np.ceil(x0 + (x1 - x0) / 4)), int(np.floor(x1 - (x1 - x0) / 4))
        cy0, cy1 = int(np.ceil(y0 + (y1 - y0) / 4)), int(np.floor(y1 - (y1 - y0) / 4))
        inner = image[cy0 : max(cy1, cy0 + 1), cx0 : max(cx1, cx0 + 1)].reshape(-1, 3)
        expected = np.array(colors[texts.index(text)])
        assert (np.abs(inner - expected).max(axis=1) <= 30).mean() > 0.9, text


def test_crop_resize_flip_move_tokens_with_the_page(tokenizer_dir, page):
    record, texts, boxes, colors = page
    cfg = make_cfg(tokenizer_dir)
    # Crop x 60..260, y 30..230 (cuts the title at both ends and the footer, drops
    # the line at y 40..54 of neither column: its centre y 47 stays inside), then
    # resize 200x200 -> 300x300, then flip.
    crop = (60, 30, 200, 200)
    mapper = mapper_with(cfg, [T.CropTransform(*crop), T.ResizeTransform(200, 200, 300, 300), T.HFlipTransform(300)])
    out = mapper(record)
    lines = token_lines(out, mapper.ocr_tokenizer.tokenizer)

    expected = []
    for text, (x, y, w, h) in zip(texts, boxes):  # texts are in reading order
        cx, cy = x + w / 2 - crop[0], y + h / 2 - crop[1]
        if not (0 <= cx <= crop[2] and 0 <= cy <= crop[3]):
            continue
        x0, x1 = np.clip([x - crop[0], x + w - crop[0]], 0, crop[2]) * 1.5
        y0, y1 = np.clip([y - crop[1], y + h - crop[1]], 0, crop[3]) * 1.5
        expected.append((text, [300 - x1, y0, 300 - x0, y1]))
    assert [t for t, _ in lines] == [t for t, _ in expected]
    assert 0 < len(expected) < len(texts)
    for (_, box), (_, expected_box) in zip(lines, expected):
        np.testing.assert_allclose(box, expected_box, atol=1e-3)
    assert_boxes_cover_their_words(out, lines, texts, colors)


@pytest.mark.parametrize("seed", range(6))
def test_random_augmentations_keep_tokens_on_their_words(tokenizer_dir, page, seed):
    record, texts, _, colors = page
    cfg = make_cfg(
        tokenizer_dir,
        "INPUT.CROP.DETR_STYLE",
        True,
        "INPUT.CROP.ENABLED",
        True,
        "INPUT.CROP.TYPE",
        "absolute_range",
        "INPUT.CROP.SIZE",
        (100, 220),
        "INPUT.RANDOM_FLIP",
        "horizontal",
        "INPUT.MIN_SIZE_TRAIN",
        (200, 280, 360),
    )
    mapper = VLDatasetMapper(cfg, is_train=True)
    np.random.seed(seed)
    out = mapper(record)
    lines = token_lines(out, mapper.ocr_tokenizer.tokenizer)
    assert_boxes_cover_their_words(out, lines, texts, colors)
    kept = [texts.index(t) for t, _ in lines]
    assert kept == sorted(kept), "lines must stay in reading order"


def test_ocr_order_keeps_the_file_order(tokenizer_dir, page):
    record, texts, _, _ = page
    mapper = mapper_with(make_cfg(tokenizer_dir, "INPUT.OCR.ORDER", "ocr"), [])
    lines = token_lines(mapper(record), mapper.ocr_tokenizer.tokenizer)
    assert [t for t, _ in lines] == texts[::-1]


def test_tokenizer_loaded_once_per_process(tokenizer_dir, page, monkeypatch):
    record = page[0]
    loads = []
    original = layoutlmv3.AutoTokenizer.from_pretrained

    def counting(*args, **kwargs):
        loads.append(args)
        return original(*args, **kwargs)

    layoutlmv3.load_tokenizer.cache_clear()
    monkeypatch.setattr(layoutlmv3.AutoTokenizer, "from_pretrained", counting)
    cfg = make_cfg(tokenizer_dir)
    train_mapper, test_mapper = VLDatasetMapper(cfg, is_train=True), VLDatasetMapper(cfg, is_train=False)
    for _ in range(25):
        assert len(train_mapper(record)["input_ids"]) > 0
        assert len(test_mapper(record)["input_ids"]) > 0
    assert len(loads) == 1
    layoutlmv3.load_tokenizer.cache_clear()


def test_image_only_reads_no_ocr(tokenizer_dir, page):
    record = dict(page[0], ocr_file="/nonexistent/page.json")
    out = VLDatasetMapper(make_cfg(tokenizer_dir, "MODEL.IMAGE_ONLY", True), is_train=True)(record)
    assert "input_ids" not in out and "token_boxes" not in out
    assert out["image"].shape == (3, 320, 427)


def test_annotations_without_segmentation(tokenizer_dir, page):
    record = dict(
        page[0],
        annotations=[
            {"bbox": [20.0, 40.0, 130.0, 150.0], "bbox_mode": 1, "category_id": 0, "iscrowd": 0},
            {"bbox": [170.0, 40.0, 130.0, 150.0], "bbox_mode": 1, "category_id": 3, "iscrowd": 0},
        ],
    )
    out = VLDatasetMapper(make_cfg(tokenizer_dir), is_train=True)(record)
    instances = out["instances"]
    assert instances.gt_classes.tolist() == [0, 3]
    boxes = instances.gt_boxes.tensor.numpy()
    height, width = out["image"].shape[1:]
    np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], [130 * width / WIDTH] * 2, rtol=1e-4)
    np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], [150 * height / HEIGHT] * 2, rtol=1e-4)
    test_out = VLDatasetMapper(make_cfg(tokenizer_dir), is_train=False)(record)
    assert "instances" not in test_out and "annotations" not in test_out


def test_ocr_of_another_size_is_rescaled(tokenizer_dir, page, tmp_path, caplog):
    record, texts, boxes, _ = page
    save_ocr(tmp_path / "big.json", PageOCR(2 * WIDTH, 2 * HEIGHT, texts, boxes * 2))
    mapper = mapper_with(make_cfg(tokenizer_dir), [])
    with caplog.at_level(logging.WARNING):
        lines = token_lines(mapper(dict(record, ocr_file=str(tmp_path / "big.json"))), mapper.ocr_tokenizer.tokenizer)
    assert "big.json" in caplog.text and "rescal" in caplog.text
    for text, box in lines:
        x, y, w, h = boxes[texts.index(text)]
        np.testing.assert_allclose(box, [x, y, x + w, y + h], atol=1e-3)


def test_in_memory_ocr(tokenizer_dir, page):
    record, texts, boxes, _ = page
    mapper = mapper_with(make_cfg(tokenizer_dir), [])
    ocr = PageOCR(WIDTH // 2, HEIGHT // 2, texts, boxes / 2)
    out = mapper(dict(record, ocr_file=None, ocr=ocr))
    lines = token_lines(out, mapper.ocr_tokenizer.tokenizer)
    assert [t for t, _ in lines] == texts
    x, y, w, h = boxes[0]
    np.testing.assert_allclose(lines[0][1], [x, y, x + w, y + h], atol=1e-3)
    assert "ocr" not in out


def test_boxes_outside_the_page(tokenizer_dir, page, tmp_path):
    record = page[0]
    texts = ["alpha bravo", "charlie delta", "echo foxtrot", "golf hotel"]
    boxes = [[-50, 10, 100, 10], [300, 50, 100, 10], [400, 100, 50, 10], [10, 500, 50, 10]]
    save_ocr(tmp_path / "out.json", PageOCR(WIDTH, HEIGHT, texts, boxes))
    mapper = mapper_with(make_cfg(tokenizer_dir, "INPUT.OCR.ORDER", "ocr"), [])
    lines = token_lines(mapper(dict(record, ocr_file=str(tmp_path / "out.json"))), mapper.ocr_tokenizer.tokenizer)
    # Centre inside: kept and clipped; centre outside: dropped.
    assert [t for t, _ in lines] == ["alpha bravo"]
    np.testing.assert_allclose(lines[0][1], [0, 10, 50, 20])
    texts[1], boxes[1] = "charlie delta", [250, 50, 100, 10]
    save_ocr(tmp_path / "out.json", PageOCR(WIDTH, HEIGHT, texts, boxes))
    lines = token_lines(mapper(dict(record, ocr_file=str(tmp_path / "out.json"))), mapper.ocr_tokenizer.tokenizer)
    assert [t for t, _ in lines] == ["alpha bravo", "charlie delta"]
    np.testing.assert_allclose(lines[1][1], [250, 50, 320, 60])


def test_ten_thousand_words(tokenizer_dir, page, tmp_path):
    record = page[0]
    rng = np.random.RandomState(0)
    texts = [" ".join(rng.choice(WORDS, 3)) for _ in range(10_000)]
    xy = rng.rand(10_000, 2) * [WIDTH - 20, HEIGHT - 5]
    save_ocr(tmp_path / "many.json", PageOCR(WIDTH, HEIGHT, texts, np.concatenate([xy, np.full((10_000, 2), 5.0)], 1)))
    cfg = make_cfg(tokenizer_dir)
    out = VLDatasetMapper(cfg, is_train=True)(dict(record, ocr_file=str(tmp_path / "many.json")))
    assert len(out["input_ids"]) == cfg.INPUT.OCR.MAX_TOKENS
    height, width = out["image"].shape[1:]
    boxes = out["token_boxes"]
    assert (boxes >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


def test_empty_ocr_gives_zero_tokens(tokenizer_dir, page, tmp_path):
    record = page[0]
    (tmp_path / "empty.json").write_text(json.dumps({"W": WIDTH, "H": HEIGHT, "words": [], "bbox": []}))
    out = VLDatasetMapper(make_cfg(tokenizer_dir), is_train=True)(dict(record, ocr_file=str(tmp_path / "empty.json")))
    assert out["input_ids"].shape == (0,) and out["input_ids"].dtype == torch.long
    assert out["token_boxes"].shape == (0, 4) and out["token_boxes"].dtype == torch.float32


BAD_OCR = {
    "truncated.json": b'{"W": 320, "H": 240, "words": ["alpha"], "bbox": [[1, 2,',
    "latin1.json": '{"W": 320, "H": 240, "words": ["caf\u00e9"], "bbox": [[1, 2, 3, 4]]}'.encode("latin-1"),
}


@pytest.mark.parametrize("name, problem", [("truncated.json", "not valid JSON"), ("latin1.json", "not UTF-8")])
def test_unusable_ocr_file(tokenizer_dir, page, tmp_path, caplog, name, problem):
    record = page[0]
    (tmp_path / name).write_bytes(BAD_OCR[name])
    record = dict(record, ocr_file=str(tmp_path / name))
    with pytest.raises(OCRFormatError, match=f"{name}.*{problem}"):
        VLDatasetMapper(make_cfg(tokenizer_dir), is_train=True)(record)
    mapper = VLDatasetMapper(make_cfg(tokenizer_dir, "INPUT.OCR.MISSING", "empty"), is_train=True)
    with caplog.at_level(logging.WARNING, logger="ditod.data.mapper"):
        out = mapper(record)
    assert out["input_ids"].shape == (0,) and out["token_boxes"].shape == (0, 4)
    assert name in caplog.text and problem in caplog.text


def test_missing_ocr_file(tokenizer_dir, page, tmp_path, caplog):
    record = dict(page[0], ocr_file="/nonexistent/dir/page.json")
    with pytest.raises(FileNotFoundError, match="/nonexistent/dir/page.json"):
        VLDatasetMapper(make_cfg(tokenizer_dir), is_train=True)(record)
    mapper = mapper_with(make_cfg(tokenizer_dir, "INPUT.OCR.MISSING", "empty"), [])
    # 150 pages, each mapped twice (two epochs): counted once each.
    pages = []
    for i in range(150):
        (tmp_path / f"page{i}.png").symlink_to(record["file_name"])
        pages.append(dict(record, file_name=str(tmp_path / f"page{i}.png")))
    with caplog.at_level(logging.WARNING, logger="ditod.data.mapper"):
        for epoch_page in pages + pages:
            assert mapper(epoch_page)["input_ids"].shape == (0,)
    warnings = [r for r in caplog.records if "without usable OCR" in r.getMessage()]
    assert len(warnings) == 2 and "101 page(s)" in warnings[1].getMessage()
    assert len(mapper.pages_without_ocr) == 150


def test_corrupt_image(tokenizer_dir, page, tmp_path, caplog):
    record = page[0]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    record = dict(record, file_name=str(tmp_path / "corrupt.png"))
    with caplog.at_level(logging.WARNING, logger="ditod.data.mapper"):
        assert VLDatasetMapper(make_cfg(tokenizer_dir), is_train=True)(record) is None
    assert "corrupt.png" in caplog.text
    with pytest.raises(OSError, match="corrupt.png: cannot read the image"):
        VLDatasetMapper(make_cfg(tokenizer_dir), is_train=False)(record)


def test_exif_orientation(tokenizer_dir, page, tmp_path, caplog):
    """A photo stored sideways with an EXIF rotation: the OCR of the upright page fits."""
    record, texts, boxes, colors = page
    draw_page(tmp_path / "upright.png", boxes, colors)
    stored = Image.open(tmp_path / "upright.png").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    record = dict(record, file_name=str(tmp_path / "sideways.jpg"))
    mapper = mapper_with(make_cfg(tokenizer_dir), [])
    with caplog.at_level(logging.WARNING):
        out = mapper(record)
    assert "rescal" not in caplog.text
    assert out["image"].shape == (3, HEIGHT, WIDTH)
    assert_boxes_cover_their_words(out, token_lines(out, mapper.ocr_tokenizer.tokenizer), texts, colors)


@pytest.mark.slow
def test_mapped_pages_train_the_model(tokenizer_dir, page, tmp_path):
    """Two mapped pages (one without text) through one training step of the tiny model."""
    annotation = {"bbox": [20.0, 40.0, 130.0, 150.0], "bbox_mode": 1, "category_id": 0, "iscrowd": 0}
    record = dict(page[0], annotations=[annotation])
    (tmp_path / "none.json").write_text(json.dumps({"W": WIDTH, "H": HEIGHT, "words": [], "bbox": []}))
    cfg = make_cfg(tokenizer_dir, "INPUT.MIN_SIZE_TRAIN", (160,))
    mapper = VLDatasetMapper(cfg, is_train=True)
    batch = [mapper(record), mapper(dict(record, ocr_file=str(tmp_path / "none.json")))]
    assert len(batch[0]["input_ids"]) > 0 and len(batch[1]["input_ids"]) == 0
    model = build_model(cfg)
    model.train()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    embeddings = model.backbone.bottom_up.layoutlmv3.embeddings.word_embeddings.weight
    assert embeddings.grad is not None and embeddings.grad[batch[0]["input_ids"]].abs().sum() > 0


@pytest.mark.parametrize("seed", range(6))
def test_polygon_masks_stay_on_their_objects_through_crop_resize_flip(tokenizer_dir, page, tmp_path, seed):
    """With MODEL.MASK_ON the annotations' polygons move with the page: after a random
    crop, resize and flip, each mask covers the pixels of the object it outlines."""
    record = page[0]
    objects = {  # colour: polygon (x, y, ...) of a triangle and a notched rectangle
        (200, 30, 30): [40, 30, 150, 60, 60, 150],
        (30, 30, 200): [180, 40, 300, 40, 300, 200, 240, 200, 240, 120, 180, 120],
    }
    image = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    for color, polygon in objects.items():
        cv2.fillPoly(image, [np.array(polygon, dtype=np.int32).reshape(-1, 2)], color)
    Image.fromarray(image).save(tmp_path / "shapes.png")
    annotations = []
    for index, polygon in enumerate(objects.values()):
        xs, ys = polygon[0::2], polygon[1::2]
        box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        annotations.append({"bbox": box, "bbox_mode": 1, "category_id": index, "segmentation": [polygon], "iscrowd": 0})
    record = dict(record, file_name=str(tmp_path / "shapes.png"), annotations=annotations)
    cfg = make_cfg(
        tokenizer_dir,
        "MODEL.MASK_ON",
        True,
        "INPUT.CROP.ENABLED",
        True,
        "INPUT.CROP.DETR_STYLE",
        False,
        "INPUT.CROP.TYPE",
        "absolute_range",
        "INPUT.CROP.SIZE",
        (150, 230),
        "INPUT.RANDOM_FLIP",
        "horizontal",
        "INPUT.MIN_SIZE_TRAIN",
        (200, 280, 360),
    )
    np.random.seed(seed)
    out = VLDatasetMapper(cfg, is_train=True)(record)
    instances = out["instances"]
    mapped = out["image"].permute(1, 2, 0).numpy().astype(int)
    height, width = mapped.shape[:2]
    assert len(instances) > 0
    for polygons, category, box in zip(instances.gt_masks.polygons, instances.gt_classes, instances.gt_boxes.tensor):
        color = np.array(list(objects)[category])
        mask = polygons_to_bitmask(polygons, height, width)
        painted = np.abs(mapped - color).max(axis=2) <= 40
        # The mask lies on the object's pixels, and covers those of them the crop kept.
        assert painted[mask].mean() > 0.9, (seed, category.item())
        assert mask[painted].mean() > 0.9, (seed, category.item())
        # Boxes are the masks' (recomputed after the crop).
        ys, xs = np.nonzero(mask)
        np.testing.assert_allclose(box.numpy(), [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=2)


# What a clone without `git lfs pull` has in place of an image.
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a2146\nsize 12345\n"


def test_training_stops_after_consecutive_unreadable_pages(tokenizer_dir, page, tmp_path, caplog):
    record = page[0]
    (tmp_path / "pointer.png").write_text(LFS_POINTER)
    unreadable = [dict(record, file_name=str(tmp_path / f"gone{i}.png")) for i in range(3)]
    unreadable.append(dict(record, file_name=str(tmp_path / "pointer.png")))
    mapper = VLDatasetMapper(make_cfg(tokenizer_dir, "DATALOADER.MAX_CONSECUTIVE_UNREADABLE", 5), is_train=True)
    # A readable page ends a run: 4 + 4 unreadable pages in all, at most 4 in a row.
    with caplog.at_level(logging.WARNING, logger="ditod.data.mapper"):
        assert all(mapper(p) is None for p in unreadable)
        assert mapper(record) is not None
        assert all(mapper(p) is None for p in unreadable)
    assert "pointer.png: cannot read the image (a Git LFS pointer file, not the image" in caplog.text
    with pytest.raises(UnreadableDatasetError) as error:
        mapper(unreadable[0])
    message = str(error.value)
    assert message.startswith("5 pages in a row could not be read (9 in all in this data-loader process), the first: ")
    assert f"{tmp_path / 'gone0.png'} (missing); {tmp_path / 'gone1.png'} (missing); " in message
    assert "DATALOADER.MAX_CONSECUTIVE_UNREADABLE" in message
    # 0: skip unreadable pages, never stop.
    patient = VLDatasetMapper(make_cfg(tokenizer_dir, "DATALOADER.MAX_CONSECUTIVE_UNREADABLE", 0), is_train=True)
    assert all(patient(p) is None for p in unreadable * 50)
    with pytest.raises(ValueError, match="MAX_CONSECUTIVE_UNREADABLE must be >= 0"):
        VLDatasetMapper(make_cfg(tokenizer_dir, "DATALOADER.MAX_CONSECUTIVE_UNREADABLE", -1), is_train=True)


def test_ocr_lines_far_off_the_page_are_counted_in_a_warning(tokenizer_dir, page, tmp_path, caplog):
    record, texts, boxes, _ = page
    # Line 3 at x = 1e12 (left out), line 7 stretched from -1e12 to 1e12 (clipped into a
    # stripe across the page); a line a little past the edge is not worth a word.
    boxes = boxes.copy()
    boxes[3, 0] = 1e12
    boxes[7, [0, 2]] = [-1e12, 2e12]
    boxes[9, 2] += 30
    save_ocr(tmp_path / "absurd.json", PageOCR(WIDTH, HEIGHT, texts, boxes))
    mapper = mapper_with(make_cfg(tokenizer_dir, "INPUT.OCR.ORDER", "ocr"), [])
    record = dict(record, ocr_file=str(tmp_path / "absurd.json"))
    with caplog.at_level(logging.WARNING, logger="ditod.data.ocr"):
        lines = token_lines(mapper(record), mapper.ocr_tokenizer.tokenizer)
        mapper(record)  # the next epoch: warned once
    warnings = [r.getMessage() for r in caplog.records if r.name == "ditod.data.ocr"]
    assert warnings == [
        f"{tmp_path / 'absurd.json'}: 2 of the {len(texts)} OCR lines lie off the {WIDTH}x{HEIGHT} page or reach "
        "more than a page beyond it (a line whose centre is off the page is left out, the others are clipped to "
        f"the page), the first: bbox[3] {boxes[3].tolist()} of {texts[3]!r}"
    ]
    assert [t for t, _ in lines] == texts[:3] + texts[4:]
    np.testing.assert_allclose(lines[6][1], [0, boxes[7, 1], WIDTH, boxes[7, 1] + boxes[7, 3]])
