"""
An exported model (`tools/export.py`) as a detectron2 model: the test loader's inputs in,
`Instances` out, run by ONNX Runtime. detectron2's evaluation then measures the exported
file as it measures the PyTorch model (`tools/train_net.py --eval-only --onnx DIR`),
which is how to see what an int8 export (`--quantize int8`) costs in AP.
"""

from pathlib import Path

import torch
from torch import nn

from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..data.mapper import VLDatasetMapper
from ..layoutlmv3 import tokenizer_fingerprint
from ..runtime.predictor import inference_session
from ..runtime.spec import EXPORT_JSON, MODEL_FILE, OUTPUTS, ExportSpec

__all__ = ["OnnxRuntimeModel", "check_test_loader"]


def check_test_loader(model_dir, cfg) -> ExportSpec:
    """
    The `ExportSpec` of `model_dir`, once checked that the test loader of `cfg` prepares
    pages as the exported graph expects them (resize, channels, tokens).

    Raises:
        FileNotFoundError, ValueError: not an exported model's folder (`ExportSpec.load`),
            or the config's test loader differs (the message names the setting).
    """
    spec = ExportSpec.load(model_dir)
    where = Path(model_dir) / EXPORT_JSON
    found = {
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
    }
    mapper = VLDatasetMapper(cfg, is_train=False)
    found["reads_text"] = mapper.ocr_tokenizer is not None
    if mapper.ocr_tokenizer is not None:
        found["tokens"] = mapper.ocr_tokenizer.settings()
    for key, value in found.items():
        if getattr(spec, key) != value:
            raise ValueError(f"{where}: {key} {getattr(spec, key)!r}, the config's test loader {value!r}")
    if spec.reads_text and not spec.has_vocabulary_of(tokenizer_fingerprint(mapper.ocr_tokenizer.tokenizer)):
        raise ValueError(f"{where}: the config's MODEL.VIT.TOKENIZER is not the exported model's tokenizer")
    return spec


class OnnxRuntimeModel(nn.Module):
    """
    The graph of `model_dir` (written by `ditod.engine.export.export_onnx`) called the way
    detectron2 calls a model in inference: a list of the test loader's pages ("image",
    "input_ids", "token_boxes", "height", "width"), one `{"instances": Instances}` per
    page in the page's own pixels, as `VLGeneralizedRCNN` returns them. `cfg` builds the
    test loader: its resize and tokens must be the export's (checked; the export's own
    config.yaml is one such config).
    """

    def __init__(self, model_dir, cfg):
        super().__init__()
        self.spec = check_test_loader(model_dir, cfg)
        self.session = inference_session(Path(model_dir) / MODEL_FILE)
        self.eval()

    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError("an exported model only infers: call .eval()")
        outputs = []
        for page in batched_inputs:
            feeds = {"image": page["image"].cpu().numpy()}
            if self.spec.reads_text:
                feeds.update(input_ids=page["input_ids"].cpu().numpy(), token_boxes=page["token_boxes"].cpu().numpy())
            boxes, scores, classes = (torch.from_numpy(x) for x in self.session.run(OUTPUTS, feeds))
            instances = Instances(
                tuple(page["image"].shape[1:]), pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes
            )
            height, width = page.get("height", instances.image_size[0]), page.get("width", instances.image_size[1])
            outputs.append({"instances": detector_postprocess(instances, height, width)})
        return outputs
