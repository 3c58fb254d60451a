"""
An exported graph's linear layers as ONNX Runtime's int8 products, for CPU inference.

    quantize_linear_layers("exported/model.onnx")

Dynamic quantization: each MatMul whose weights are constant keeps them as int8 (7 bits
used, one scale per matrix) and quantizes its input to uint8 on every call, from that
input's own range, so that nothing is calibrated. ONNX Runtime runs these products in
its int8 kernels, faster than fp32 where the CPU has int8 dot products (AVX-512 VNNI,
AVX-VNNI); the transformer's linear layers are most of the base model's time. The
outputs change (rounding of weights and activations): check the quantized model's AP on
your own validation pages (`tools/train_net.py --eval-only --onnx DIR`); the fp32 export
stays the reference.
"""

import logging
import os
import tempfile
from pathlib import Path

__all__ = ["QUANTIZATION_FORMS", "quantize_linear_layers"]

logger = logging.getLogger(__name__)

QUANTIZATION_FORMS = ("none", "int8")


def quantize_linear_layers(path) -> int:
    """
    Rewrite the ONNX file `path` with its MatMuls of constant weights quantized (see the
    module). Needs the ``onnx`` package.

    Returns:
        the number of products quantized (0 leaves the file as it was).
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise ImportError(f"int8 quantization needs onnx and onnxruntime (pip install 'ditod[export]'): {e}") from e

    path = Path(path)
    handle, scratch = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        quantize_dynamic(
            path,
            scratch,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            # 7-bit weights: without VNNI, x86 sums pairs of uint8 x int8 products in
            # 16 bits, which 8-bit weights can overflow; the file may run on any CPU.
            reduce_range=True,
            # Attention's products (query x key, weights x value) have no constant side.
            # ONNX Runtime's own ops (MultiHeadAttention) escape ONNX's shape inference:
            # their outputs are float.
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        model = onnx.load(scratch)
        quantized = sum(node.op_type == "MatMulInteger" for node in model.graph.node)
        if quantized:
            # The quantizer lists those outputs with no element type, which ONNX Runtime
            # refuses to load; they are optional annotations.
            typed = [v for v in model.graph.value_info if v.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED]
            del model.graph.value_info[:]
            model.graph.value_info.extend(typed)
            onnx.save(model, path)
    finally:
        os.unlink(scratch)
    logger.info(f"{path}: {quantized} linear layers quantized to int8")
    return quantized
