"""PyTorch reference for kernels/rmsnorm.py (importable without triton)."""

from __future__ import annotations

import torch


def reference_rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *,
                      residual: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The same, in PyTorch ops (model.RMSNorm's numerics)."""
    y = torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), None, eps)
    if weight is not None:
        y = y * weight.float()
    y = y.to(x.dtype)
    if residual is not None:
        y = (y.float() + residual.float()).to(x.dtype)
    if scale is not None:
        y = (y.float() * scale.float()).to(x.dtype)
    return y
