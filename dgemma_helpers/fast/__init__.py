"""The optimised denoising path: the one model with the fused kernels switched on in its layers
(dgemma_kernels.fused()), and the whole denoising round captured in one CUDA graph.
`generate(..., path=None)` picks it on a CUDA GPU with Triton (sm80+) and never on a CPU;
`path="torch"` / `path="fast"` force either (devices.select_path decides). Same API, same results
up to float rounding (the PyTorch path stays the reference).

    step.py      FastStep: static buffers, the branch-free round, graph capture, kept and replayed
    quant.py     FP8 (e4m3) experts, quantised at load time: quantize_experts (dg.quantize_experts)
"""

from .quant import quantize_experts
from .step import FastStep, StaticRound, fast_round, graph_rounds

__all__ = ["FastStep", "StaticRound", "fast_round", "graph_rounds", "quantize_experts"]
