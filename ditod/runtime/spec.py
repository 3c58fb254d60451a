"""What an exported model's directory holds besides model.onnx: `ExportSpec`, written by
`ditod.engine.export.export_onnx` as ditod_export.json and read by the ONNX Runtime
predictor. Plain JSON, no detectron2."""

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

__all__ = ["EXPORT_JSON", "MODEL_FILE", "OUTPUTS", "TOKENIZER_DIR", "ExportSpec"]

MODEL_FILE = "model.onnx"
# The graph's outputs, in this order (see ExportSpec).
OUTPUTS = ["boxes", "scores", "classes"]
EXPORT_JSON = "ditod_export.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1


@dataclass
class ExportSpec:
    """
    The constants of inference that are not in the ONNX graph.

    The graph takes one page resized as the test loader resizes it (`input_format`
    channels, short side `min_size_test`, long side at most `max_size_test`; 0: no
    resize) as "image" (3, H, W) uint8 and, when `reads_text`, its tokens "input_ids"
    (T,) int64 and "token_boxes" (T, 4) float32 in pixels of that image; it normalizes
    (`pixel_mean`, `pixel_std`) and pads (`size_divisibility`) itself, and returns
    "boxes" (N, 4) in pixels of that image, "scores" (N) and "classes" (N), the
    detections scoring at least `score_thresh` after NMS, at most `detections_per_image`.
    `attention` "fused": the graph's attention is ONNX Runtime's MultiHeadAttention
    (com.microsoft domain), which other runtimes lack; "plain": standard ONNX ops.
    `quantization` "int8": the linear layers are ONNX Runtime's dynamically quantized
    int8 products (`ditod.layers.onnxruntime_quantization`); "none": float32.
    `tokens` holds the `OCRTokenizer` settings (`OCRTokenizer.settings`) of the tokenizer
    saved in `tokenizer_dir`, whose fingerprint is `tokenizer_fingerprint`.
    """

    class_names: list[str]
    category_ids: list[int]
    input_format: str
    min_size_test: int
    max_size_test: int
    pixel_mean: list[float]
    pixel_std: list[float]
    size_divisibility: int
    reads_text: bool
    score_thresh: float
    nms_thresh: float
    detections_per_image: int
    opset: int
    attention: str = "plain"
    quantization: str = "none"
    tokens: dict = field(default_factory=dict)
    tokenizer_dir: str | None = None
    tokenizer_fingerprint: dict | None = None
    format_version: int = FORMAT_VERSION

    def has_vocabulary_of(self, fingerprint: dict) -> bool:
        """Whether a tokenizer of `fingerprint` (`ditod.layoutlmv3.tokenizer_fingerprint`)
        has the exported model's vocabulary (True when the export recorded none)."""
        return (
            not self.tokenizer_fingerprint or fingerprint["vocab_sha256"] == self.tokenizer_fingerprint["vocab_sha256"]
        )

    def save(self, directory) -> Path:
        path = Path(directory) / EXPORT_JSON
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory) -> "ExportSpec":
        """
        Raises:
            FileNotFoundError: `directory` has no model.onnx or ditod_export.json.
            ValueError: the json is not one that this version of ditod wrote (the message
                names the file and the problem).
        """
        directory = Path(directory)
        for name in (MODEL_FILE, EXPORT_JSON):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory}: no {name} (a folder written by tools/export.py holds one)")
        path = directory / EXPORT_JSON
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a JSON file ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format_version {data.get('format_version')!r}, this ditod reads {FORMAT_VERSION}: "
                "export the model again"
            )
        names = {f.name for f in fields(cls)}
        # Keys added after format 1 came out have defaults that describe the files written
        # before them (attention "plain", quantization "none").
        optional = {f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING}
        missing = sorted(names - set(data) - optional)
        if missing or set(data) - names:
            raise ValueError(f"{path}: missing keys {missing}, unknown keys {sorted(set(data) - names)}")
        spec = cls(**data)
        if len(spec.class_names) != len(spec.category_ids):
            raise ValueError(f"{path}: {len(spec.class_names)} class names but {len(spec.category_ids)} category ids")
        if spec.reads_text and not (spec.tokenizer_dir and (directory / spec.tokenizer_dir).is_dir()):
            raise ValueError(f"{path}: the model reads text but {directory / str(spec.tokenizer_dir)} is not a folder")
        return spec
