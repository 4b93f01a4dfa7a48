"""The counter-based hash behind every random number the sampler draws, in PyTorch: the twin of
kernels/tl_math.py's Triton functions, so that the fused head (kernels/denoise_head.py) and the
PyTorch sampler (dgemma_helpers/rng.py) agree draw for draw. No state: a draw is a hash of its key
and its coordinates."""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
# The range of gumbel()'s draws, from uniform_from_hash's extremes 2^-24 and 1 - 2^-24: below
# -log(24 log 2) = -2.81 and above -log(-log(1 - 2^-24)) = 16.64 nothing is drawn. A token whose
# logit is more than the width (plus a margin for rounding) below the row's best cannot win
# argmax(z + g): gumbel_argmax skips it.
GUMBEL_LOW = -math.log(-math.log(2.0**-24))
GUMBEL_HIGH = -math.log(-math.log1p(-(2.0**-24)))
GUMBEL_REACH = GUMBEL_HIGH - GUMBEL_LOW + 1.0


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


def gumbel(key: int | torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel noise [k, vocab] for flat canvas positions [k] (row * canvas_length + position), from
    a key (or one key per position)."""
    tokens = torch.arange(vocab, device=positions.device)
    return _gumbel_of(mix32(positions.long() ^ key)[:, None], tokens[None, :])


def _gumbel_of(position_hash: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    u = uniform_from_hash(mix32((position_hash + tokens) & MASK32))
    return -torch.log(-torch.log(u))


def gumbel_argmax(z: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor,
                  rows: torch.Tensor | None = None, block: int = 16) -> torch.Tensor:
    """argmax(z[rows] + gumbel(keys, positions, V), dim=-1) for logits z [n, V] (`rows` [k] picks
    rows of z, default all; `keys` and `positions` are per picked row): the first maximum, as
    torch.argmax gives it. Only the tokens that can win are hashed, those within GUMBEL_REACH of
    their row's best logit: a confident row has a handful, and the answer is the same. Rows go
    `block` at a time, so their copy stays in cache."""
    rows = torch.arange(z.shape[0], device=z.device) if rows is None else rows
    out = torch.empty(rows.shape[0], dtype=torch.long, device=z.device)
    position_hash = mix32(positions.long() ^ keys)
    V = z.shape[1]
    for s in range(0, rows.shape[0], block):
        zb = z.index_select(0, rows[s:s + block])
        best = zb.max(dim=-1).values
        r, tokens = (zb >= (best - GUMBEL_REACH)[:, None]).nonzero(as_tuple=True)
        scores = zb[r, tokens] + _gumbel_of(position_hash[s:s + block][r], tokens)
        top = scores.new_full((zb.shape[0],), -math.inf).scatter_reduce_(0, r, scores, "amax")
        first = torch.where(scores == top[r], tokens, V)
        out[s:s + block] = torch.full_like(out[s:s + block], V).scatter_reduce_(0, r, first, "amin")
    return out
