"""Fused RMSNorm (+ residual, + scale): out = (residual + rms_norm(x) * weight) * scale.

Each layer of the model has seven RMSNorms and adds two of them to the residual stream. In
PyTorch each costs ~5 small kernels (upcast, mean of squares, rsqrt, weight, downcast) and the
residual add and the layer scalar two more; here it is one kernel, one row per program.

Numerics follow model.RMSNorm exactly: the norm in float32, rounded to the input dtype; the
residual added to that rounded value and rounded again; the scalar applied last and rounded
again (the roundings PyTorch's separate ops make, so bf16 results match bit for bit up to the
order of the mean's summation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rmsnorm_kernel(x_ptr, w_ptr, res_ptr, scale_ptr, out_ptr, n_cols, eps,
                    HAS_WEIGHT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_SCALE: tl.constexpr,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    y = y.to(out_ptr.dtype.element_ty)
    if HAS_RESIDUAL:
        y = (y.to(tl.float32) + tl.load(res_ptr + row * n_cols + cols, mask=ok, other=0.0).to(tl.float32))
        y = y.to(out_ptr.dtype.element_ty)
    if HAS_SCALE:
        y = (y.to(tl.float32) * tl.load(scale_ptr).to(tl.float32)).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * n_cols + cols, y, mask=ok)


def rmsnorm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, residual: torch.Tensor | None = None,
            scale: torch.Tensor | None = None) -> torch.Tensor:
    """(residual + rms_norm(x) * weight) * scale over the last dimension, in x's dtype.
    `scale` is a one-element tensor (the layer scalar); every optional part may be None."""
    n = x.shape[-1]
    x2 = x.contiguous().view(-1, n)
    out = torch.empty_like(x2)
    res = residual.contiguous().view(-1, n) if residual is not None else x2
    block = triton.next_power_of_2(n)
    # One row per program: 2816 columns fit one block; more warps for wider rows keep registers low.
    _rmsnorm_kernel[(x2.shape[0],)](
        x2, weight if weight is not None else x2, res, scale if scale is not None else x2, out, n, eps,
        HAS_WEIGHT=weight is not None, HAS_RESIDUAL=residual is not None, HAS_SCALE=scale is not None,
        BLOCK=block, num_warps=min(16, max(1, block // 256)))
    return out.view(x.shape)
