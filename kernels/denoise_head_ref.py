"""PyTorch reference for kernels/denoise_head.py, and the types both share (importable without triton)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

LOG_PROB_FLOOR = -60.0  # = dgemma_helpers.head.LOG_PROB_FLOOR: e^(z - m) below e^-60 counts as 0


class HeadResult(NamedTuple):
    argmax: torch.Tensor  # [N] int64, first maximum of z
    entropy: torch.Tensor  # [N] float32, of softmax(z)
    sample: torch.Tensor  # [N] int64, argmax(z + gumbel(key, n, v)): a draw from softmax(z)
    soft: torch.Tensor  # [N, hidden] softmax(z) @ E * sqrt(hidden), in E's dtype


def embed_scale(embed: torch.Tensor) -> float:
    """sqrt(hidden) rounded to the weight dtype, as model.embed and head.tiled_head round it."""
    return torch.tensor(math.sqrt(embed.shape[1]), dtype=embed.dtype).item()


def reference_denoise_head(hidden: torch.Tensor, embed: torch.Tensor, temperature: torch.Tensor,
                           key: torch.Tensor, softcap: float) -> HeadResult:
    """The same in plain PyTorch, materialising [N, V] (model.logits, then the materialized head's
    entropy / soft embedding and CounterRNG's Gumbel-max draw at every position)."""
    from dgemma_helpers.rng import gumbel

    z = (hidden @ embed.T).float().div_(softcap).tanh_().mul_(softcap).div_(temperature.float())
    log_probs = torch.log_softmax(z, dim=-1)
    probs = torch.nn.functional.threshold(log_probs, LOG_PROB_FLOOR, -math.inf).exp_()
    entropy = -(probs * log_probs).sum(-1)
    positions = torch.arange(z.shape[0], device=z.device)
    sample = torch.argmax(z + gumbel(key.reshape(()), positions, z.shape[1]), dim=-1)
    soft = (probs @ embed.float()).to(embed.dtype) * embed_scale(embed)
    return HeadResult(z.argmax(dim=-1), entropy, sample, soft)
