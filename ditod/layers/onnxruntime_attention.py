"""
ONNX Runtime's fused attention in an exported graph: `scaled_dot_product_attention`
written as one `com.microsoft::MultiHeadAttention` node instead of ONNX's MatMul, Softmax,
MatMul (`ditod.engine.export.export_onnx` with attention="fused").

The standard ONNX form materializes each layer's (heads, T, T) scores and runs the
scaling, softmax and second product as separate passes over them; the contrib op does
them in one kernel, on ONNX Runtime's CPU and CUDA providers. Other runtimes do not know
the op: export with attention="plain" for them. tests/test_export.py holds the two
forms equal.

Only attention without a mask and not causal is fused, which is what a one-page graph
has (`LayoutLMv3Backbone` passes no mask for a single page); any other call keeps
PyTorch's standard ONNX form.
"""

from contextlib import contextmanager

import torch
from torch.onnx import register_custom_op_symbolic, symbolic_helper, symbolic_opset14, unregister_custom_op_symbolic

__all__ = ["sdpa_as_multihead_attention"]

SDPA = "aten::scaled_dot_product_attention"


def _multihead_attention_symbolic(num_heads, head_size, fused):
    def symbolic(g, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if not symbolic_helper._is_none(attn_mask) or symbolic_helper._maybe_get_const(is_causal, "b"):
            return symbolic_opset14.scaled_dot_product_attention(
                g, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
            )
        scale = head_size**-0.5 if symbolic_helper._is_none(scale) else symbolic_helper._get_const(scale, "f", "scale")
        # (B, heads, T, head_size), as transformers hands them over, to the op's (B, T, hidden)
        to_tokens = g.op("Constant", value_t=torch.tensor([0, 0, -1]))
        q, k, v = (g.op("Reshape", g.op("Transpose", x, perm_i=[0, 2, 1, 3]), to_tokens) for x in (query, key, value))
        output = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=num_heads, scale_f=scale)
        to_heads = g.op("Constant", value_t=torch.tensor([0, 0, num_heads, -1]))
        fused.append(output)
        return g.op("Transpose", g.op("Reshape", output, to_heads), perm_i=[0, 2, 1, 3])

    return symbolic


@contextmanager
def sdpa_as_multihead_attention(num_heads: int, head_size: int, opset: int):
    """
    Within the block, `torch.onnx.export` (TorchScript exporter, `opset`) writes
    `scaled_dot_product_attention` without mask as ONNX Runtime's MultiHeadAttention.
    Yields a list that receives one entry per fused call. The heads are given, because
    the trace does not always know the shapes past a contrib op.
    """
    fused = []
    register_custom_op_symbolic(SDPA, _multihead_attention_symbolic(num_heads, head_size, fused), opset)
    try:
        yield fused
    finally:
        unregister_custom_op_symbolic(SDPA, opset)
