"""Triton kernels for DiffusionGemma, each beside its plain-PyTorch reference (`*_ref.py`), and the
switch that puts them in the model's layers. Installed as `dgemma_kernels` (this folder is
kernels/: a top-level `kernels` is the import name of Hugging Face's hub-kernels package, which
transformers probes, and one would shadow the other). Nothing here imports the kit.

    with dgemma_kernels.fused():        # inside, model.RMSNorm and model.Experts call the kernels
        hidden = model.denoise(...)     # (the fast path's round, captured in a CUDA graph)

`run_rmsnorm`, `run_moe` and `run_denoise_head` run the Triton kernel where Triton can (a CUDA GPU, or a CPU
under TRITON_INTERPRET=1), else the PyTorch reference with the same signature and results up to
rounding, so the fast path's code runs, and is tested, on any CPU. `fused(kind)` can force either.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from .denoise_head_ref import FusedHeadResult, reference_denoise_head
from .moe_ref import reference_moe
from .rmsnorm_ref import reference_rmsnorm

KINDS = ("auto", "triton", "reference")
_KIND: ContextVar[str | None] = ContextVar("dgemma_kernels", default=None)


@contextmanager
def fused(kind: str = "auto") -> Iterator[None]:
    """The model's layers call the fused kernels inside the block ("triton" or "reference" forces
    one implementation; "auto" takes Triton where it can run)."""
    if kind not in KINDS:
        raise ValueError(f"kernel kind must be one of {KINDS}; got {kind!r}")
    token = _KIND.set(kind)
    try:
        yield
    finally:
        _KIND.reset(token)


def active() -> bool:
    """Whether the layers should call the kernels now (inside `fused()`)."""
    return _KIND.get() is not None


def uses_triton(device: torch.device) -> bool:
    kind = _KIND.get() or "auto"
    if kind != "auto":
        return kind == "triton"
    return importlib.util.find_spec("triton") is not None and (
        device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


# The Triton modules are imported on first use: triton is optional, and its decorators read
# TRITON_INTERPRET when a kernel module is imported. (Named run_*: importing the module
# dgemma_kernels.rmsnorm sets the package's `rmsnorm` attribute to that module.)
def run_rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, residual: torch.Tensor | None = None,
            scale: torch.Tensor | None = None) -> torch.Tensor:
    """(residual + rms_norm(x) * weight) * scale in one kernel (model.RMSNorm's numerics)."""
    if uses_triton(x.device):
        from .rmsnorm import rmsnorm as kernel
        return kernel(x, weight, eps, residual=residual, scale=scale)
    return reference_rmsnorm(x, weight, eps, residual=residual, scale=scale)


def run_moe(x: torch.Tensor, routing_weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
        down: torch.Tensor, gate_up_scale: torch.Tensor | None = None,
        down_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The mixture of experts (model.Experts), fp8 weights read directly when scales are given."""
    if uses_triton(x.device):
        from .moe import moe as kernel
        return kernel(x, routing_weights, experts, gate_up, down, gate_up_scale, down_scale)
    return reference_moe(x, routing_weights, experts, gate_up, down, gate_up_scale, down_scale)


def run_denoise_head(hidden: torch.Tensor, embed: torch.Tensor, temperature: torch.Tensor, keys: torch.Tensor,
                 softcap: float, embed_scale: torch.Tensor) -> FusedHeadResult:
    """The denoise head without the [positions, vocab] logits (see denoise_head.py)."""
    if uses_triton(hidden.device):
        from .denoise_head import denoise_head as kernel
        return kernel(hidden, embed, temperature, keys, softcap, embed_scale)
    return reference_denoise_head(hidden, embed, temperature, keys, softcap, embed_scale)
