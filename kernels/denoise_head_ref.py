"""PyTorch reference for kernels/denoise_head.py, and the types both share (importable without triton)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .hash_ref import gumbel

# Probabilities below e^-60 of the largest are treated as exactly 0. Smaller ones (and their
# products with embedding weights) reach float32's denormal range, which x86 CPUs compute ~25x
# slower; every such term is far below half an ulp of any entropy or embedding sum it joins.
# The one definition: dgemma_helpers/head.py and the Triton kernels use it from here.
LOG_PROB_FLOOR = -60.0


class FusedHeadResult(NamedTuple):
    argmax: torch.Tensor  # [N] int64, first maximum of z
    entropy: torch.Tensor  # [N] float32, of softmax(z)
    sample: torch.Tensor  # [N] int64, argmax(z + gumbel(key of n's row, n's canvas position, v)): a draw from softmax(z)
    soft: torch.Tensor  # [N, hidden] softmax(z) @ E * embed_scale (sqrt(hidden) in E's dtype), in E's dtype


def reference_denoise_head(hidden: torch.Tensor, embed: torch.Tensor, temperature: torch.Tensor,
                           keys: torch.Tensor, softcap: float, embed_scale: torch.Tensor) -> FusedHeadResult:
    """The same in plain PyTorch, materialising [N, V] (model.logits, then the materialized head's
    entropy / soft embedding and CounterRNG's Gumbel-max draw at every position)."""
    z = (hidden @ embed.T).float().div_(softcap).tanh_().mul_(softcap).div_(temperature.float())
    log_probs = torch.log_softmax(z, dim=-1)
    probs = torch.nn.functional.threshold(log_probs, LOG_PROB_FLOOR, -math.inf).exp_()
    entropy = -(probs * log_probs).sum(-1)
    positions = torch.arange(z.shape[0], device=z.device)
    L = z.shape[0] // keys.numel()  # keys: one per batch row; positions are flat over B * L
    sample = torch.argmax(z + gumbel(keys.reshape(-1)[positions // L], positions % L, z.shape[1]), dim=-1)
    soft = (probs @ embed.float()).to(embed.dtype) * embed_scale
    return FusedHeadResult(z.argmax(dim=-1), entropy, sample, soft)
