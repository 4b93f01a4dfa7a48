"""The KV cache seen through fixed shapes, so that one captured CUDA graph serves every denoising
step of every canvas of a generation.

KVCache (cache.py) slices its buffers by the current prefix length p: the denoiser's canvas keys go
to slots [p, p + L) of a full-attention layer and attention reads [0, p + L). Both move from one
canvas to the next, and a graph replays fixed addresses and shapes. This view keeps the buffers
and changes two things for the denoiser only (the encoder still runs eagerly through KVCache):

  full-attention layers  the canvas goes to the fixed scratch slots [capacity, capacity + L) that
                         KVCache allocates anyway, and attention always reads the whole buffer
                         [0, capacity + L) under a mask that hides the not-yet-written slots
                         [p, capacity) (and left-padding). Cost: attention over `capacity` keys
                         instead of p, negligible next to the weights at these lengths;
  sliding layers         already fixed ([ring, ring + L) after the ring); the mask becomes a
                         static buffer instead of None-or-a-tensor.

Positions (for RoPE) and masks are static tensors rewritten in place by `refresh()` between
canvases, outside the graph; the graph reads whatever they hold.
"""

from __future__ import annotations

import torch

from ..cache import KVCache
from ..config import FULL, SLIDING


class StaticDenoiseView:
    """The denoiser's side of the cache protocol (begin_denoise / kv / end) with fixed shapes."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        B, L, dev = cache.batch_size, cache.scratch, cache.device
        self.positions = torch.zeros(L, dtype=torch.long, device=dev)
        self.full_mask = torch.zeros(B, 1, 1, cache.capacity + L, dtype=torch.bool, device=dev)
        self.sliding_mask = torch.zeros(B, 1, 1, cache.ring + L, dtype=torch.bool, device=dev)
        self.masks = {FULL: self.full_mask, SLIDING: self.sliding_mask}
        self.length = -1  # the prefix length the buffers were last refreshed for

    def refresh(self) -> None:
        """Rewrite positions and masks for the cache's current prefix (call between canvases)."""
        c, L = self.cache, self.cache.scratch
        p = c.length
        self.positions.copy_(torch.arange(p, p + L, device=c.device))
        full = self.full_mask[:, 0, 0]
        full.zero_()
        full[:, :p] = c.valid[:, :p]
        full[:, c.capacity:] = True
        sliding = self.sliding_mask[:, 0, 0]
        sliding[:, :c.ring] = (c.ring_pos >= 0)[None, :] & c.valid[:, c.ring_pos.clamp(min=0)]
        sliding[:, c.ring:] = True
        self.length = p

    # ---- the cache protocol, denoiser only ----------------------------------------------------------
    def begin_denoise(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cache
        c._mode, c._n = "denoise", c.scratch
        return self.positions, self.masks

    def kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cache
        K, V = c.keys[layer], c.values[layer]
        start = c.ring if c.config.is_sliding(layer) else c.capacity
        K[:, :, start:start + c.scratch] = k
        V[:, :, start:start + c.scratch] = v
        return K, V  # the whole buffer: [ring | canvas] or [prefix ... capacity | canvas]

    def end(self) -> None:
        self.cache._mode = None
