"""The three kernels the fast path calls: the Triton kernels where Triton can run, else their
PyTorch references (same signatures, same results up to rounding), so that the fast path's code
runs, and is tested, on any CPU, with or without triton installed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kernels.denoise_head_ref import reference_denoise_head
from kernels.moe_ref import reference_moe
from kernels.rmsnorm_ref import reference_rmsnorm

from ..devices import triton_support


@dataclass(frozen=True)
class Ops:
    name: str  # "triton" or "reference"
    rmsnorm: Callable
    moe: Callable
    denoise_head: Callable


REFERENCE_OPS = Ops("reference", reference_rmsnorm, reference_moe, reference_denoise_head)


def kernel_ops(device: torch.device) -> Ops:
    if not triton_support(device)[0]:
        return REFERENCE_OPS
    # Imported here, not at the top: kernels/{rmsnorm,moe,denoise_head}.py need triton, an optional
    # package, and decorate their kernels for the interpreter or a GPU as TRITON_INTERPRET says then.
    from kernels.denoise_head import denoise_head
    from kernels.moe import moe
    from kernels.rmsnorm import rmsnorm

    return Ops("triton", rmsnorm, moe, denoise_head)
