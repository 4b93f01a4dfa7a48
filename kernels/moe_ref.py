"""PyTorch reference for kernels/moe.py (importable without triton)."""

from __future__ import annotations

import torch


def reference_moe(x: torch.Tensor, routing_weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
                  down: torch.Tensor, gate_up_scale: torch.Tensor | None = None,
                  down_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The same, one expert at a time in PyTorch (weights dequantized first when scales are given)."""
    if gate_up_scale is not None:
        gate_up = (gate_up.float() * gate_up_scale[..., None]).to(x.dtype)
        down = (down.float() * down_scale[..., None]).to(x.dtype)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    I = down.shape[2]
    for e in experts.unique().tolist():
        token, slot = (experts == e).nonzero(as_tuple=True)
        h = x[token] @ gate_up[e].T
        act = torch.nn.functional.gelu(h[:, :I].float(), approximate="tanh") * h[:, I:].float()
        y = (act.to(x.dtype) @ down[e].T).float() * routing_weights[token, slot, None].float()
        out.index_add_(0, token, y)
    return out.to(x.dtype)
