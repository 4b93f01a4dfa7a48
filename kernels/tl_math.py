"""Small Triton device functions shared by the kernels: a 32-bit hash, tanh and GELU-tanh.

Triton has no tanh, and the kernels must run on any sm80+ GPU and under TRITON_INTERPRET=1 on a
CPU, so each is written with exp() alone (no libdevice, no inline PTX).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mix32(x):
    """Wellons' lowbias32 on uint32: the same hash as dgemma_helpers.rng.mix32 (products wrap mod 2^32)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def uniform_from_hash(h):
    """(0, 1) float32 from the 23 high bits of a uint32 hash, as dgemma_helpers.rng.uniform_from_hash."""
    return ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)


@triton.jit
def tanh(x):
    """tanh in float32 from exp(-2|x|), which cannot overflow. Below |x| = 0.02 the quotient would
    lose relative accuracy to cancellation in 1 - e, so the odd series (error < 1e-14) is used."""
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = ax * ax
    small = ax * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0)))
    t = tl.where(ax < 0.02, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def gelu_tanh(x):
    """0.5 x (1 + tanh(u)) = x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): torch's approximate='tanh'."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return x / (1.0 + tl.exp(-2.0 * u))
