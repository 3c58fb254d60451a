"""ONNX export and the ONNX Runtime predictor: painting in its exportable form equals the
training one, the runtime's preprocessing equals the test loader's on real pages, the
exported text and image-only models find what PyTorch finds on pages of other sizes and
token counts than the traced one, the runtime imports no detectron2, and the command
lines (tools/export.py, tools/infer.py --onnx)."""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from conftest import REPO, TINY_TEXT_CONFIG, shared_data, tiny_cfg
from ditod.data import PageOCR, load_ocr
from ditod.data.mapper import VLDatasetMapper
from ditod.data.pages import read_rgb_image
from ditod.data.synthetic import CATEGORIES
from ditod.engine import VLDetectionCheckpointer, VLPredictor
from ditod.engine.export import export_onnx
from ditod.modeling.fusion import paint_tokens
from ditod.runtime import ExportSpec, OnnxPredictor
from ditod.runtime.resize import ShortestEdgeResize

pytest.importorskip("onnx")

# The untrained model scores about 1/11 per class: a low threshold keeps some boxes.
THRESH = 0.05


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def text_export(tiny_model, tmp_path_factory):
    """The tiny text model exported by tools/export.py: (folder, the tool's summary, its config)."""
    root, opts, _ = tiny_model
    out = tmp_path_factory.mktemp("exported") / "text"
    overrides = [*opts, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(THRESH)]
    args = ["--config-file", TINY_TEXT_CONFIG, "--weights", str(root / "weights.pth"), "--output", str(out)]
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        assert load_tool("export").main([*args, "--opts", *overrides]) == 0
    return out, summary.getvalue(), tiny_cfg(*overrides)


@pytest.fixture(scope="module")
def image_only_export(tmp_path_factory):
    """A tiny image-only model, its weights and its export: (folder, config, weights)."""
    root = tmp_path_factory.mktemp("image_only")
    cfg = tiny_cfg("MODEL.IMAGE_ONLY", True, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", THRESH)
    seed_all_rng(0)
    VLDetectionCheckpointer(build_model(cfg), save_dir=str(root)).save("weights")
    out = root / "exported"
    export_onnx(cfg, str(root / "weights.pth"), out, classes=list(CATEGORIES))
    return out, cfg, str(root / "weights.pth")


def real_pages(count):
    """`count` PubLayNet pages (RGB) and an OCR of each: a line per annotated region (its
    box, made-up words), as many lines as the page has regions."""
    folder = shared_data("publaynet-samples")
    with open(os.path.join(folder, "samples.json"), encoding="utf-8") as f:
        coco = json.load(f)
    pages = []
    for image in coco["images"][:count]:
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"]]
        words = [f"region {i} of page {image['id']} text" for i in range(len(boxes))]
        pages.append(
            (
                read_rgb_image(os.path.join(folder, image["file_name"])),
                PageOCR(image["width"], image["height"], words, np.asarray(boxes)),
            )
        )
    return pages


def crowded_page(tokens_per_line=4, lines=160):
    """A 500 x 700 page with `lines` OCR lines of several words: more tokens than the budget."""
    rng = np.random.default_rng(3)
    image = rng.integers(180, 256, (700, 500, 3), dtype=np.uint8)
    boxes = [[20 + 240 * (i % 2), 10 + 4.3 * (i // 2), 220, 4] for i in range(lines)]
    words = [" ".join(f"w{i}x{j}" for j in range(tokens_per_line)) for i in range(lines)]
    return image, PageOCR(500, 700, words, np.asarray(boxes))


def matched(a, b, top=20, score_tol=1e-3):
    """Whether each of the `top` best detections of `a` is in `b`: same class, box within 1
    pixel, score within `score_tol` (matching by value: equal scores may come in either order)."""
    for det in a.detections[:top]:
        if not any(
            d.label == det.label
            and abs(d.score - det.score) <= score_tol
            and np.abs(np.subtract(d.bbox, det.bbox)).max() <= 1
            for d in b.detections
        ):
            return False
    return True


def assert_same_detections(onnx_result, torch_result):
    assert onnx_result.detections and torch_result.detections
    assert abs(len(onnx_result.detections) - len(torch_result.detections)) <= 1  # a score at the threshold
    assert matched(onnx_result, torch_result) and matched(torch_result, onnx_result)
    scores = [[d.score for d in r.detections[:20]] for r in (onnx_result, torch_result)]
    np.testing.assert_allclose(*scores, atol=1e-3)


def test_painting_for_export_equals_training(monkeypatch):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 30, 8, generator=g, requires_grad=True)
    corner = torch.rand(2, 30, 2, generator=g) * torch.tensor([60.0, 80.0])
    boxes = torch.cat([corner, corner + torch.rand(2, 30, 2, generator=g) * 30], dim=-1)
    mask = torch.ones(2, 30)
    mask[1, 20:] = 0
    weights = torch.randn(2, 8, 20, 15, generator=g)
    results = []
    for exporting in (False, True):
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda exporting=exporting: exporting)
        painted = paint_tokens(feats, boxes, mask, (20, 15), 4)
        (grad,) = torch.autograd.grad((painted * weights).sum(), feats)
        results.append((painted.detach(), grad))
    assert results[0][0].abs().sum() > 0
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_resize_equals_detectron2_on_real_pages():
    for image, ocr in real_pages(4):
        for short, longest in ((320, 512), (800, 1333), (900, 600), (0, 1000)):
            expected = T.ResizeShortestEdge(short, longest).get_transform(image)
            resize = ShortestEdgeResize.for_image(*image.shape[:2], short, longest)
            np.testing.assert_array_equal(resize.apply_image(image), expected.apply_image(image))
            boxes = ocr.boxes_xyxy()
            np.testing.assert_array_equal(resize.apply_box(boxes), expected.apply_box(boxes))


def test_runtime_preprocessing_equals_the_mapper(text_export):
    out, _, cfg = text_export
    mapper = VLDatasetMapper(cfg, is_train=False)
    runtime = OnnxPredictor(out, input_format="RGB")
    for image, ocr in [*real_pages(3), crowded_page()]:
        expected = mapper.map_image({"ocr": ocr}, image)
        got = runtime.prepare(image, ocr)
        assert (got["height"], got["width"]) == image.shape[:2]
        np.testing.assert_array_equal(got["feeds"]["image"], expected["image"].numpy())
        assert got["feeds"]["input_ids"].size > 0
        np.testing.assert_array_equal(got["feeds"]["input_ids"], expected["input_ids"].numpy())
        np.testing.assert_array_equal(got["feeds"]["token_boxes"], expected["token_boxes"].numpy())


def test_exported_text_model_finds_what_pytorch_finds(tiny_model, text_export):
    root, _, _ = tiny_model
    out, summary, cfg = text_export
    assert f"to {out / 'model.onnx'}" in summary and "ditod_export.json" in summary and "tokenizer/" in summary
    onnx_predictor = OnnxPredictor(out, input_format="RGB", threads=1)
    torch_predictor = VLPredictor(cfg, str(root / "weights.pth"), input_format="RGB")
    assert onnx_predictor.class_names == torch_predictor.class_names == list(CATEGORIES)
    assert onnx_predictor.category_ids == torch_predictor.category_ids
    synthetic = root / "val" / "images" / "val_000000.png"
    image, ocr = read_rgb_image(synthetic), load_ocr(root / "val" / "ocr" / "val_000000.json")
    wide = np.asarray(Image.fromarray(image).resize((700, 450)))
    pages = [(image, ocr), (wide, ocr.rescaled(700, 450)), crowded_page(), (image, PageOCR.empty(*image.shape[1::-1]))]
    sizes = set()
    for page, page_ocr in pages:
        inputs = onnx_predictor.prepare(page, page_ocr)["feeds"]
        sizes.add((inputs["image"].shape, inputs["input_ids"].shape))
        assert_same_detections(onnx_predictor(page, ocr=page_ocr), torch_predictor(page, ocr=page_ocr))
    assert len(sizes) == len(pages)  # other sizes and token counts than the traced page's, 0 and 512 tokens
    assert {s[1][0] for s in sizes} >= {0, 512}
    # A batch runs page by page: the same detections, in order.
    batch = onnx_predictor([page for page, _ in pages[:2]], ocr=[o for _, o in pages[:2]])
    for got, (page, page_ocr) in zip(batch, pages[:2]):
        assert [d.bbox for d in got.detections] == [d.bbox for d in onnx_predictor(page, ocr=page_ocr).detections]


def attention_ops(model_dir):
    """The op types of model_dir/model.onnx that are not in ONNX's own domain, and its MatMuls."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    return sorted(n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")), sum(
        n.op_type == "MatMul" for n in graph.node
    )


def test_fused_and_plain_attention_find_the_same(tiny_model, text_export, tmp_path):
    root, _, _ = tiny_model
    fused, _, cfg = text_export
    plain = tmp_path / "plain"
    export_onnx(cfg, str(root / "weights.pth"), plain, attention="plain")
    layers = len(build_model(cfg).backbone.bottom_up.layoutlmv3.encoder.layer)
    (fused_ops, fused_matmuls), (plain_ops, plain_matmuls) = attention_ops(fused), attention_ops(plain)
    assert (ExportSpec.load(fused).attention, ExportSpec.load(plain).attention) == ("fused", "plain")
    assert fused_ops == ["MultiHeadAttention"] * layers and plain_ops == []
    # Each fused layer takes its two products of attention out of the MatMuls.
    assert plain_matmuls - fused_matmuls == 2 * len(fused_ops)
    synthetic = (
        read_rgb_image(root / "val" / "images" / "val_000000.png"),
        load_ocr(root / "val" / "ocr" / "val_000000.json"),
    )
    for page, page_ocr in (synthetic, crowded_page(), real_pages(1)[0]):
        assert_same_detections(
            OnnxPredictor(fused, input_format="RGB")(page, ocr=page_ocr),
            OnnxPredictor(plain, input_format="RGB")(page, ocr=page_ocr),
        )
    with pytest.raises(ValueError, match="attention must be one of"):
        export_onnx(cfg, str(root / "weights.pth"), tmp_path / "bad", attention="flash")


class TransformerLayers(torch.nn.Module):
    """The tiny model's transformer layers as a function of the hidden states (no mask)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers
        self.hidden_size = layers[0].output.dense.out_features

    def forward(self, hidden):
        for layer in self.layers:
            hidden = layer(hidden, None)
        return hidden


def test_exported_position_embeddings_are_resized_for_every_grid(tmp_path):
    import onnxruntime

    from ditod.engine.export import OPSET, torchscript_exporter_quiet

    bottom_up = build_model(tiny_cfg()).backbone.bottom_up
    stored = tuple(bottom_up.layoutlmv3.patch_embed.patch_shape)
    with torch.no_grad():
        bottom_up.layoutlmv3.pos_embed.normal_(generator=torch.Generator().manual_seed(0))

    class PositionEmbeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bottom_up = bottom_up

        def forward(self, grid_like):
            return self.bottom_up.patch_position_embeddings(grid_like.shape)

    path = tmp_path / "positions.onnx"
    with torch.no_grad(), torchscript_exporter_quiet():
        # An eager call first: its cached result must not become a constant of the trace.
        bottom_up.patch_position_embeddings(stored)
        # Traced at the stored grid, where eager code skips the resize.
        torch.onnx.export(
            PositionEmbeddings(),
            (torch.zeros(stored),),
            str(path),
            input_names=["grid"],
            dynamic_axes={"grid": {0: "rows", 1: "cols"}},
            opset_version=OPSET,
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for grid in (stored, (20, 30), (9, 5)):
        (got,) = session.run(None, {"grid": np.zeros(grid, np.float32)})
        with torch.no_grad():
            expected = bottom_up.patch_position_embeddings(grid).numpy()
        # ONNX Runtime's cubic weights differ from PyTorch's in the last bits.
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_exported_gated_fusion_equals_pytorch(tmp_path):
    import onnxruntime

    from ditod.engine.export import OPSET, torchscript_exporter_quiet
    from ditod.modeling.fusion import TEXT_FUSION_REGISTRY

    cfg = tiny_cfg("MODEL.TEXT_FUSION.IMPL", "reference")
    fusion = TEXT_FUSION_REGISTRY.get("gated")(cfg, 16, 4).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in fusion.parameters():  # gates open and closed in places, as after training
            p.copy_(torch.randn(p.shape, generator=g))

    def inputs(height, width, tokens):
        corner = torch.rand(1, tokens, 2, generator=g) * torch.tensor([width * 4.0, height * 4.0])
        boxes = torch.cat([corner, corner + torch.rand(1, tokens, 2, generator=g) * 20], dim=-1)
        visual = torch.randn(1, 16, height, width, generator=g)
        return visual, torch.randn(1, tokens, 16, generator=g), boxes, torch.ones(1, tokens)

    path = tmp_path / "fusion.onnx"
    names = ["visual", "token_feats", "token_boxes", "mask"]
    with torch.no_grad(), torchscript_exporter_quiet():
        torch.onnx.export(
            fusion,
            inputs(12, 10, 7),
            str(path),
            input_names=names,
            dynamic_axes={"visual": {2: "h", 3: "w"}, **{n: {1: "tokens"} for n in names[1:]}},
            opset_version=OPSET,
            dynamo=False,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in ((12, 10, 7), (30, 21, 40)):
        args = inputs(*size)
        with torch.no_grad():
            expected = fusion(*args).numpy()
        (got,) = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def export_transformer_layers(path):
    """The tiny model's transformer layers (`TransformerLayers`) exported to `path` with fused
    attention, the number of tokens dynamic: (the layers, the attention layers fused)."""
    from ditod.engine.export import OPSET, torchscript_exporter_quiet
    from ditod.layers.onnxruntime_attention import sdpa_as_multihead_attention

    transformer = build_model(tiny_cfg()).backbone.bottom_up.layoutlmv3
    config = transformer.config
    layers = TransformerLayers(transformer.encoder.layer).eval()
    heads = config.num_attention_heads
    fusing = sdpa_as_multihead_attention(heads, config.hidden_size // heads, OPSET)
    with torch.no_grad(), torchscript_exporter_quiet(), fusing as fused:
        torch.onnx.export(
            layers,
            (torch.randn(1, 40, layers.hidden_size),),
            str(path),
            input_names=["hidden"],
            dynamic_axes={"hidden": {1: "tokens"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return layers, fused


def layers_outputs(layers, path, tokens):
    """PyTorch's and ONNX Runtime's outputs of `layers` and their export `path` on random
    hidden states of each number of `tokens`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for count in tokens:
        hidden = torch.randn(1, count, layers.hidden_size, generator=torch.Generator().manual_seed(count))
        with torch.no_grad():
            expected = layers(hidden).numpy()
        yield expected, session.run(None, {"hidden": hidden.numpy()})[0]


def test_fused_attention_equals_pytorch_on_the_transformer(tmp_path):
    import onnxruntime

    from ditod.engine.export import OPSET, torchscript_exporter_quiet
    from ditod.layers.onnxruntime_attention import sdpa_as_multihead_attention

    path = tmp_path / "layers.onnx"
    layers, fused = export_transformer_layers(path)
    heads = layers.layers[0].attention.self.num_attention_heads
    assert len(fused) == len(layers.layers)
    for expected, got in layers_outputs(layers, path, (1, 57, 300)):
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)

    # With a mask, attention keeps PyTorch's standard form.
    class MaskedAttention(torch.nn.Module):
        def forward(self, q, k, v, mask):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = torch.randn(3, 1, heads, 9, 8).unbind(0)
    mask = torch.rand(1, 1, 9, 9) > 0.3
    mask[..., 0] = True
    masked = tmp_path / "masked.onnx"
    with torch.no_grad(), torchscript_exporter_quiet(), sdpa_as_multihead_attention(heads, 8, OPSET) as fused:
        torch.onnx.export(MaskedAttention(), (q, k, v, mask), str(masked), opset_version=OPSET, dynamo=False)
    assert fused == []
    session = onnxruntime.InferenceSession(str(masked), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), (q, k, v, mask))})
    np.testing.assert_allclose(got, MaskedAttention()(q, k, v, mask).numpy(), atol=1e-5)


def test_exported_image_only_model_finds_what_pytorch_finds(image_only_export):
    out, cfg, weights = image_only_export
    spec = ExportSpec.load(out)
    assert not spec.reads_text and spec.tokenizer_dir is None and not (out / "tokenizer").exists()
    onnx_predictor = OnnxPredictor(out)
    torch_predictor = VLPredictor(cfg, weights, classes=list(CATEGORIES))
    for image, _ in real_pages(2):
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        got = onnx_predictor(bgr)
        assert got.ocr is None and got.ocr_source == "none"
        assert_same_detections(got, torch_predictor(bgr))


def test_a_higher_score_threshold_and_bad_folders(text_export, tmp_path):
    out, _, _ = text_export
    image, ocr = crowded_page()
    everything = OnnxPredictor(out)(image, ocr=ocr).detections
    higher = OnnxPredictor(out, score_thresh=0.1)(image, ocr=ocr).detections
    assert higher == [d for d in everything if d.score > 0.1] and len(higher) < len(everything)
    with pytest.raises(ValueError, match=r"below the exported model's 0\.05"):
        OnnxPredictor(out, score_thresh=0.01)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no model.onnx"):
        OnnxPredictor(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "ditod_export.json").write_text('{"format_version": 0}')
    with pytest.raises(ValueError, match="format_version 0, this ditod reads 1"):
        OnnxPredictor(tmp_path)
    # A folder exported before the attention form and the quantization were recorded: what
    # it holds (standard attention, float32); a key of format 1 itself is still required.
    data = json.loads((out / "ditod_export.json").read_text())
    older = {k: v for k, v in data.items() if k not in ("attention", "quantization")}
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "ditod_export.json").write_text(json.dumps(older))
    spec = ExportSpec.load(tmp_path)
    assert (spec.attention, spec.quantization, spec.class_names) == ("plain", "none", data["class_names"])
    del older["score_thresh"]
    (tmp_path / "ditod_export.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match=r"missing keys \['score_thresh'\]"):
        ExportSpec.load(tmp_path)


def test_pdf_pages_and_pil_images(text_export, two_page_pdf):
    import pymupdf

    out, _, _ = text_export
    predictor = OnnxPredictor(out)
    with pymupdf.open(two_page_pdf) as document:
        result = predictor(document[1])
    assert result.ocr_source == "text layer" and result.ocr.words[0] == "Chapter 2"
    assert (result.width, result.height) == (600, 840) and result.detections
    image, ocr = crowded_page()
    from_pil = predictor(Image.fromarray(image), ocr=ocr).detections
    assert from_pil and from_pil == predictor(np.ascontiguousarray(image[:, :, ::-1]), ocr=ocr).detections


RUN_WITHOUT_DETECTRON2 = """
import sys
from ditod.data.ocr import load_ocr
from ditod.runtime import OnnxPredictor
import cv2

predictor = OnnxPredictor(sys.argv[1])
result = predictor(cv2.imread(sys.argv[2]), ocr=load_ocr(sys.argv[3]))
assert result.detections and result.blocks, result
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "detectron2")
assert not loaded, loaded
print(len(result.detections))
"""


def test_the_runtime_runs_without_detectron2(tiny_model, text_export):
    root, _, _ = tiny_model
    out, _, _ = text_export
    page = root / "val" / "images" / "val_000000.png"
    args = [out, page, root / "val" / "ocr" / "val_000000.json"]
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_DETECTRON2, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = OnnxPredictor(out)(np.asarray(Image.open(page).convert("RGB"))[:, :, ::-1], ocr=load_ocr(args[2]))
    assert int(done.stdout.split()[-1]) == len(expected.detections)


def test_infer_runs_an_exported_model(tiny_model, text_export, tmp_path):
    root, _, _ = tiny_model
    out, _, _ = text_export
    infer = load_tool("infer")
    images = root / "val" / "images"
    args = [
        "--input",
        images,
        "--ocr-dir",
        root / "val" / "ocr",
        "--output",
        tmp_path / "onnx",
        "--score-thresh",
        str(THRESH),
    ]
    assert infer.main(list(map(str, ["--onnx", out, *args]))) == 0
    results = [json.loads(line) for line in (tmp_path / "onnx" / "results.jsonl").read_text().splitlines()]
    assert len(results) == 2 and all(r["ocr"] == "ocr json" and r["blocks"] for r in results)
    predictor = OnnxPredictor(out, input_format="RGB")
    for record in results:
        name = record["name"]
        expected = predictor(
            read_rgb_image(images / f"{name}.png"), ocr=load_ocr(root / "val" / "ocr" / f"{name}.json")
        )
        assert len(record["blocks"]) == len(expected.detections)
    for bad, message in (
        (["--onnx", out, "--weights", "w.pth"], "no --weights with it"),
        ([], "give --config-file and --weights, or --onnx DIR"),
        (["--onnx", tmp_path / "none"], "--onnx .* does not exist"),
    ):
        with pytest.raises(SystemExit, match=message):
            infer.main(list(map(str, [*bad, *args])))


def test_export_tool_errors(tmp_path):
    with pytest.raises(SystemExit, match="--weights .*missing.pth does not exist"):
        load_tool("export").main(
            ["--config-file", TINY_TEXT_CONFIG, "--weights", str(tmp_path / "missing.pth"), "--output", str(tmp_path)]
        )


def constant_matmuls(model_dir):
    """The op types of model_dir/model.onnx's products (linear layers) whose second input is a weight."""
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx")).graph
    weights = {init.name for init in graph.initializer}
    return [n.op_type for n in graph.node if n.op_type in ("MatMul", "Gemm", "MatMulInteger") and n.input[1] in weights]


def test_int8_export_quantizes_the_linear_layers_and_stays_close(tiny_model, text_export, tmp_path):
    root, _, _ = tiny_model
    fused, _, cfg = text_export
    int8 = tmp_path / "int8"
    export_onnx(cfg, str(root / "weights.pth"), int8, quantize="int8")
    assert ExportSpec.load(int8).quantization == "int8" and ExportSpec.load(fused).quantization == "none"
    linear = constant_matmuls(fused)
    assert set(linear) == {"MatMul", "Gemm"}  # the transformer's and the box heads' layers
    assert constant_matmuls(int8) == ["MatMulInteger"] * len(linear)
    synthetic = (
        read_rgb_image(root / "val" / "images" / "val_000000.png"),
        load_ocr(root / "val" / "ocr" / "val_000000.json"),
    )
    for page, page_ocr in (synthetic, real_pages(1)[0]):
        fp32 = OnnxPredictor(fused, input_format="RGB")(page, ocr=page_ocr)
        quantized = OnnxPredictor(int8, input_format="RGB")(page, ocr=page_ocr)
        assert fp32.detections and matched(quantized, fp32, score_tol=1e-2) and matched(fp32, quantized, score_tol=1e-2)
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_onnx(cfg, str(root / "weights.pth"), tmp_path / "bad", quantize="int4")


def test_int8_transformer_layers_stay_within_int8_rounding(tmp_path):
    from ditod.layers.onnxruntime_quantization import quantize_linear_layers

    path = tmp_path / "layers.onnx"
    layers, _ = export_transformer_layers(path)
    # Query, key, value, attention output, intermediate and output: six per layer.
    assert quantize_linear_layers(path) == 6 * len(layers.layers)
    for expected, got in layers_outputs(layers, path, (1, 57, 300)):
        error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert 1e-5 < error < 0.01  # quantized (not the float products), within int8 rounding
