"""The optimised denoising path: fused Triton kernels and the whole denoising step captured in one
CUDA graph. `generate(..., path=None)` picks it automatically on a CUDA GPU with Triton (sm80+)
and never on a CPU; `path="torch"` / `path="fast"` force either. Same API, same results up to
float rounding (the PyTorch path stays the reference).

    select.py        which path a call takes, and why not (clear errors when forced)
    ops.py           the kernels the path uses: Triton, or their PyTorch references
    static_cache.py  the KV cache seen with fixed shapes, so one graph serves every canvas
    layer.py         a transformer layer with fused RMSNorm(+residual) and the fused MoE
    step.py          FastStepper: static buffers, the branch-free step, graph capture and replay
"""

from .select import PATHS, FallbackStepper, select_path, stepper, triton_status
from .step import FastStepper

__all__ = ["PATHS", "FallbackStepper", "FastStepper", "select_path", "stepper", "triton_status"]
