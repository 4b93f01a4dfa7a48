"""The three kernels the fast path calls, as Triton kernels where Triton can run, else as their
PyTorch references (same signatures, same results up to rounding). The references keep the fast
path's step logic testable on any CPU, with or without triton installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .select import triton_status


@dataclass(frozen=True)
class Ops:
    name: str  # "triton" or "reference"
    rmsnorm: Callable
    moe: Callable
    denoise_head: Callable


def kernel_ops(device: torch.device) -> Ops:
    if triton_status(device)[0]:
        from kernels.denoise_head import denoise_head
        from kernels.moe import moe
        from kernels.rmsnorm import rmsnorm

        return Ops("triton", rmsnorm, moe, denoise_head)
    from kernels.denoise_head_ref import reference_denoise_head
    from kernels.moe_ref import reference_moe
    from kernels.rmsnorm_ref import reference_rmsnorm

    return Ops("reference", reference_rmsnorm, reference_moe, reference_denoise_head)


def experts_forward(ops: Ops, experts, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """model.Experts / quant.Fp8Experts through the fused MoE kernel (fp8 bytes read directly)."""
    if hasattr(experts, "gate_up_fp8"):
        return ops.moe(x, weights, indices, experts.gate_up_fp8, experts.down_fp8, experts.gate_up_scale,
                       experts.down_scale)
    return ops.moe(x, weights, indices, experts.gate_up_proj, experts.down_proj)
