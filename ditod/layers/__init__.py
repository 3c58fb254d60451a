"""Special kernels, optional: each replaces a plain path of `ditod.modeling` on some
device and is tested equal to it. The plain path is the reference; a kernel is chosen
where it applies (see each one's `applies`).

- `cpu_gated_fusion`: the `gated` text fusion for float32 on the CPU.
"""
