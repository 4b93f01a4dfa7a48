"""The optimised denoising path: the one model with kernel-backed parts swapped in, and the whole
denoising round captured in one CUDA graph. `generate(..., path=None)` picks it on a CUDA GPU with
Triton (sm80+) and never on a CPU; `path="torch"` / `path="fast"` force either (generation.py
chooses). Same API, same results up to float rounding (the PyTorch path stays the reference).

    ops.py       the kernels the path uses: Triton, or their PyTorch references
    modules.py   FusedRMSNorm, FusedExperts: drop-ins for model.RMSNorm / model.Experts
    step.py      FastStepper: static buffers, the branch-free round, graph capture and replay
    quant.py     FP8 (e4m3) experts, quantised at load time: quantize_experts (dg.quantize_experts)
    aot.py       the ahead-of-time compile check of every kernel for the real GPU targets
"""

from .modules import FusedExperts, FusedRMSNorm, fused_modules
from .ops import REFERENCE_OPS, Ops, kernel_ops
from .step import FastStepper, StaticRound, fast_round

__all__ = ["FastStepper", "FusedExperts", "FusedRMSNorm", "Ops", "REFERENCE_OPS", "StaticRound", "fast_round",
           "fused_modules", "kernel_ops"]
