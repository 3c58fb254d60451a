"""Training, optimizer, evaluation, checkpoint loading and inference (the predictor, ordered
blocks, collections, ONNX export).

Names are imported on first use (`ditod._lazy`), so that the blocks and the page
predictions need no detectron2.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "blocks": ["Block", "Detection", "TextLine", "blocks_markdown", "ordered_blocks"],
    "checkpoint": [
        "VLDetectionCheckpointer",
        "WeightsError",
        "checkpoint_info",
        "convert_huggingface_layout",
        "convert_original_layout",
    ],
    "collection": ["PageWriter", "ResultsLog", "predict_pages"],
    "cpu_memory": ["configure_cpu_memory", "keep_freed_cpu_memory"],
    "evaluation": ["VLCOCOEvaluator", "write_metrics"],
    "export": ["export_onnx"],
    "onnx_model": ["OnnxRuntimeModel"],
    "optimizer": ["build_optimizer", "layoutlmv3_param_groups", "transformer_lr_factor"],
    "prediction": ["PagePrediction", "PagePredictor"],
    "predictor": ["VLPredictor", "model_classes"],
    "trainer": ["AccumulatingTrainer", "VLTrainer", "check_solver"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
