"""The counter-based hash behind every random number the sampler draws, in PyTorch: the twin of
kernels/tl_math.py's Triton functions, so that the fused head (kernels/denoise_head.py) and the
PyTorch sampler (dgemma_helpers/rng.py) agree draw for draw. No state: a draw is a hash of its key
and its coordinates."""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32  # int64 products wrap, but their low 32 bits are exact
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def uniform_from_hash(h: torch.Tensor) -> torch.Tensor:
    """(0, 1) floats from the 23 high bits of a hash. Never 0 or 1: the largest, 1 - 2^-24, is a
    float32 (with 24 bits, 1 - 2^-25 would round to 1.0 and give an infinite Gumbel draw)."""
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def gumbel(key: int, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel noise [k, vocab] for flat canvas positions [k] (row * canvas_length + position)."""
    pos_hash = mix32(positions.long() ^ key)
    tokens = torch.arange(vocab, device=positions.device)
    u = uniform_from_hash(mix32((pos_hash[:, None] + tokens[None, :]) & MASK32))
    return -torch.log(-torch.log(u))
