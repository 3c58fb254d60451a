"""Special kernels, optional: each replaces a plain path of `ditod.modeling` on some
device and is tested equal to it. The plain path is the reference; a kernel is chosen
where it applies (see each one's `applies`).

- `cpu_gated_fusion`: the `gated` text fusion for float32 on the CPU.
- `onnxruntime_attention`: attention as ONNX Runtime's fused MultiHeadAttention in an
  exported graph (CPU and CUDA providers), in place of ONNX's standard ops.
- `onnxruntime_quantization`: an exported graph's linear layers as ONNX Runtime's int8
  products, on request only (`tools/export.py --quantize int8`): the one entry that is
  not equal to the plain path but close to it, within int8 rounding (tested).
"""
