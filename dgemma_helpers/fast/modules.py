"""Kernel-backed drop-ins for parts of the one model (as gpt-fast's quantize.py swaps nn.Linear):
the model's forward code runs unchanged and calls these through the interfaces it already uses.

    FusedRMSNorm   model.RMSNorm: norm, weight, residual add and layer scalar in one kernel
                   (each layer's five full-width norms; ~35 small PyTorch kernels per layer become 5)
    FusedExperts   model.Experts / quant.Fp8Experts: the fused MoE kernels, fp8 bytes read directly

`fused_modules(model, ops)` swaps them in for the duration of a `with` block and puts the originals
back, so a model serves the PyTorch path and the fast path in turn. The swaps share the original
parameters (no copy of any weight).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..model import DiffusionGemma, Experts, RMSNorm
from .ops import Ops

# The norms Layer.forward calls as modules; the pre-feedforward ones are only used through .scale().
FUSED_NORMS = ("input_layernorm", "post_attention_layernorm", "post_feedforward_layernorm",
               "post_feedforward_layernorm_1", "post_feedforward_layernorm_2")


class FusedRMSNorm(RMSNorm):
    def __init__(self, norm: RMSNorm, ops: Ops) -> None:
        nn.Module.__init__(self)
        self.eps, self.weight, self.ops = norm.eps, norm.weight, ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.ops.rmsnorm(x, self.weight, self.eps, residual=residual, scale=scale)


class FusedExperts(nn.Module):
    def __init__(self, experts: Experts, ops: Ops) -> None:
        super().__init__()
        self.experts, self.ops = experts, ops

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        e = self.experts
        if hasattr(e, "gate_up_fp8"):  # quant.Fp8Experts: e4m3 weights + per-channel scales
            return self.ops.moe(x, weights, indices, e.gate_up_fp8, e.down_fp8, e.gate_up_scale, e.down_scale)
        return self.ops.moe(x, weights, indices, e.gate_up_proj, e.down_proj)


@contextmanager
def fused_modules(model: DiffusionGemma, ops: Ops) -> Iterator[DiffusionGemma]:
    """Every layer's norms and experts replaced by their kernel-backed versions inside the block."""
    originals = []
    for layer in model.layers:
        saved = {name: getattr(layer, name) for name in (*FUSED_NORMS, "experts")}
        originals.append(saved)
        for name in FUSED_NORMS:
            setattr(layer, name, FusedRMSNorm(saved[name], ops))
        layer.experts = FusedExperts(saved["experts"], ops)
    try:
        yield model
    finally:
        for layer, saved in zip(model.layers, originals):
            for name, module in saved.items():
                setattr(layer, name, module)
