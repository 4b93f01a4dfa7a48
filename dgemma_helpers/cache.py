"""The KV cache of the committed prefix, in static buffers sized once per generation.

Only the encoder writes it (prompt, then each committed canvas). The denoiser reads it and puts
its canvas keys/values in a scratch region right after the prefix, so attention runs over one
contiguous view instead of concatenating the whole prefix on every denoising step.

Sliding-window layers keep a ring of the last `sliding_window - 1` positions (what any later query
can see), so only the few full-attention layers grow with the context, and by one tensor, not two:
their values are the RMS-normed keys, so the layer rebuilds its keys from them (times the k-norm
weight, rotated to each slot's position) on every pass, halving a long context's cost.
The model talks to a cache through `begin_encode`, `begin_denoise`, then per layer `kv` (sliding
layers: keys and values) or `shared_kv` (full layers: the values alone) with `key_positions`, and
`end`; the training context implements the same calls. StaticCanvasCache is the denoiser's side
with fixed shapes and addresses, so that one CUDA graph of `model.denoise` serves every round.
"""

from __future__ import annotations

import math

import torch

from .config import FULL, SLIDING, ModelConfig

Masks = dict[str, torch.Tensor | None]


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, capacity: int, *,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        """`capacity`: committed tokens it can hold (prompt + every canvas that gets encoded)."""
        self.config = config
        self.batch_size = batch_size
        self.capacity = capacity
        self.scratch = config.canvas_length
        self.window = config.sliding_window
        self.ring = min(config.sliding_window - 1, capacity)
        self.device = torch.device(device)
        self.length = 0
        # False where a row was left-padded; pads are never attended to.
        self.valid = torch.ones(batch_size, capacity, dtype=torch.bool, device=self.device)
        self.any_padding = False
        # Absolute position held by each ring slot (-1: empty); the same for every sliding layer.
        self.ring_pos = torch.full((self.ring,), -1, dtype=torch.long, device=self.device)
        # keys[layer] is None for full-attention layers: their keys are rebuilt from the values.
        self.keys: list[torch.Tensor | None] = []
        self.values: list[torch.Tensor] = []
        for shape, sliding in self.layer_shapes(config, batch_size, capacity):
            self.keys.append(torch.zeros(shape, device=self.device, dtype=dtype) if sliding else None)
            self.values.append(torch.zeros(shape, device=self.device, dtype=dtype))
        self._mode: str | None = None
        self._n = 0
        self._denoise_memo: tuple | None = None

    def reset(self) -> None:
        """Empty again, for another generation with the same buffers (a kept CUDA graph reads them).
        The old keys and values stay in the buffers, unread: every mask hides slots not yet written."""
        self.length = 0
        self.valid.fill_(True)
        self.any_padding = False
        self.ring_pos.fill_(-1)
        self._mode, self._n, self._denoise_memo = None, 0, None

    # ---- encoder: causal over n new tokens, appended to the prefix ---------------------------
    def begin_encode(self, n: int, valid: torch.Tensor | None = None,
                     blocks: torch.Tensor | None = None) -> tuple[torch.Tensor, Masks]:
        """Positions and attention masks for encoding n new tokens. `valid` [B, n]: False on pads.

        `blocks` [B, n]: an image-block id per new token (-1 for text). Tokens of one block see each
        other both ways, on top of the causal (and sliding-window) rule, as transformers' encoder
        does under use_bidirectional_attention="vision" (masking_utils' blockwise_overlay, OR-ed with
        the causal or sliding rule, then AND-ed with the padding mask). A block lies within one call
        (prefill never splits one), so only the n new keys can share a query's block."""
        p = self.length
        if p + n > self.capacity:
            raise ValueError(f"KV cache full: {p} + {n} tokens exceed its capacity of {self.capacity}.")
        if valid is not None and not bool(valid.all()):
            self.valid[:, p:p + n] = valid
            self.any_padding = True
        self._mode, self._n = "encode", n
        device = self.device
        q_pos = torch.arange(p, p + n, device=device)

        full_pos = torch.arange(p + n, device=device)
        full = (full_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, n, p+n]
        slid_pos = torch.cat([self.ring_pos, q_pos])  # sliding keys: [ring | n new]
        sliding = ((slid_pos[None, :] >= 0) & (slid_pos[None, :] <= q_pos[:, None])
                   & (slid_pos[None, :] > q_pos[:, None] - self.window))[None, None]  # [1, 1, n, ring+n]
        if blocks is not None and bool((blocks >= 0).any()):
            same = ((blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0))[:, None]  # [B, 1, n, n]
            B = same.shape[0]
            full = torch.cat([full[..., :p].expand(B, -1, -1, -1), full[..., p:] | same], dim=-1)
            # A block is seen whole even where it is wider than the window, as transformers' OR gives it.
            sliding = torch.cat([sliding[..., :self.ring].expand(B, -1, -1, -1), sliding[..., self.ring:] | same],
                                dim=-1)
        if self.any_padding:
            full = full & self.valid[:, None, None, :p + n]
            sliding = sliding & self.valid[:, slid_pos.clamp(min=0)][:, None, None, :]
        return q_pos, {FULL: full, SLIDING: sliding}

    # ---- denoiser: bidirectional over the canvas, reads the prefix ---------------------------
    def begin_denoise(self) -> tuple[torch.Tensor, Masks]:
        p, c = self.length, self.scratch
        self._mode, self._n = "denoise", c
        if self._denoise_memo is not None and self._denoise_memo[0] == p:  # same canvas, next round
            return self._denoise_memo[1]
        q_pos = torch.arange(p, p + c, device=self.device)
        canvas = torch.ones(self.batch_size, c, dtype=torch.bool, device=self.device)
        full = None
        if self.any_padding:
            full = torch.cat([self.valid[:, :p], canvas], dim=1)[:, None, None, :]
        sliding = None
        if self.any_padding or p < self.ring:
            filled = self.ring_pos >= 0
            slot_valid = filled[None, :] & self.valid[:, self.ring_pos.clamp(min=0)]
            sliding = torch.cat([slot_valid, canvas], dim=1)[:, None, None, :]
        self._denoise_memo = (p, (q_pos, {FULL: full, SLIDING: sliding}))
        return self._denoise_memo[1]

    def kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A sliding layer's new keys/values [B, H, n, D]: stored; returns the keys/values to attend over."""
        K, V = self.keys[layer], self.values[layer]
        p, n = self.length, self._n
        if self._mode == "denoise":
            K[:, :, self.ring:self.ring + n] = k
            V[:, :, self.ring:self.ring + n] = v
            return K[:, :, :self.ring + n], V[:, :, :self.ring + n]
        keys = torch.cat([K[:, :, :self.ring], k], dim=2)
        values = torch.cat([V[:, :, :self.ring], v], dim=2)
        kept = min(n, self.ring)  # only the last ring-many positions stay visible later
        slots = torch.arange(p + n - kept, p + n, device=self.device) % self.ring
        K.index_copy_(2, slots, k[:, :, n - kept:])
        V.index_copy_(2, slots, v[:, :, n - kept:])
        return keys, values

    def shared_kv(self, layer: int, v: torch.Tensor) -> torch.Tensor:
        """A full layer's new values [B, H, n, D] (its normed keys): stored; returns the values of
        every slot to attend over, whose positions are `key_positions()`."""
        V, p, n = self.values[layer], self.length, self._n
        V[:, :, p:p + n] = v  # denoise: the canvas goes right after the prefix, and is overwritten next round
        return V[:, :, :p + n]

    def key_positions(self) -> torch.Tensor:
        """Position of each slot `shared_kv` returns: the prefix, then the new tokens or the canvas."""
        return torch.arange(self.length + self._n, device=self.device)

    def end(self) -> None:
        if self._mode == "encode":
            p, n = self.length, self._n
            kept = min(n, self.ring)
            positions = torch.arange(p + n - kept, p + n, device=self.device)
            self.ring_pos[positions % self.ring] = positions
            self.length += n
        self._mode = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    @staticmethod
    def layer_shapes(config: ModelConfig, batch_size: int, capacity: int) -> list[tuple[tuple[int, ...], bool]]:
        """Each layer's buffer shape [B, kv heads, slots, head dim], and whether it keeps keys (sliding)."""
        ring = min(config.sliding_window - 1, capacity)
        return [((batch_size, config.kv_heads(i), (ring if config.is_sliding(i) else capacity) + config.canvas_length,
                  config.head_dim(i)), config.is_sliding(i)) for i in range(config.num_layers)]

    @staticmethod
    def bytes_needed(config: ModelConfig, batch_size: int, capacity: int, dtype: torch.dtype) -> int:
        """What a KVCache of this capacity allocates (nbytes() of one equals it)."""
        numbers = sum((2 if sliding else 1) * math.prod(shape)
                      for shape, sliding in KVCache.layer_shapes(config, batch_size, capacity))
        return numbers * torch.empty((), dtype=dtype).element_size()

    @staticmethod
    def bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
        """What each further token of context adds, per row: the full layers' values (the sliding
        layers' ring is a fixed cost, reached at sliding_window - 1 tokens)."""
        per = sum(config.kv_heads(i) * config.head_dim(i) for i in range(config.num_layers) if not config.is_sliding(i))
        return per * torch.empty((), dtype=dtype).element_size()


class StaticCanvasCache:
    """A KVCache seen by the denoiser through fixed shapes: `model.denoise(canvas, StaticCanvasCache(
    cache), soft)` gives KVCache's result, and one CUDA graph of it serves every canvas.

    KVCache puts a full layer's canvas at slots [p, p + L), which move with the prefix length p. Here
    the canvas goes to the scratch slots [capacity, capacity + L) that KVCache allocates anyway, and
    attention reads the whole buffer under a mask that hides the unwritten slots [p, capacity) and
    left-padding (cost: attention over `capacity` keys instead of p, small next to the weights).
    `refresh()` rewrites positions and masks in place between canvases, outside any graph; the
    encoder keeps writing through the KVCache itself."""

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        B, L, dev = cache.batch_size, cache.scratch, cache.device
        self.positions = torch.zeros(L, dtype=torch.long, device=dev)
        # Full layers: the slot positions of [prefix ... capacity | canvas]; the tail is `positions`.
        self.slot_positions = torch.cat([torch.arange(cache.capacity, device=dev), self.positions])
        self.full_mask = torch.zeros(B, 1, 1, cache.capacity + L, dtype=torch.bool, device=dev)
        self.sliding_mask = torch.zeros(B, 1, 1, cache.ring + L, dtype=torch.bool, device=dev)
        self.masks: Masks = {FULL: self.full_mask, SLIDING: self.sliding_mask}
        self.length = -1  # the prefix length the buffers were last refreshed for

    def refresh(self) -> None:
        """Positions and masks for the cache's current prefix (call between canvases)."""
        c, L = self.cache, self.cache.scratch
        p = c.length
        self.positions.copy_(torch.arange(p, p + L, device=c.device))
        self.slot_positions[c.capacity:] = self.positions
        full = self.full_mask[:, 0, 0]
        full.zero_()
        full[:, :p] = c.valid[:, :p]
        full[:, c.capacity:] = True
        sliding = self.sliding_mask[:, 0, 0]
        sliding[:, :c.ring] = (c.ring_pos >= 0)[None, :] & c.valid[:, c.ring_pos.clamp(min=0)]
        sliding[:, c.ring:] = True
        self.length = p

    def begin_denoise(self) -> tuple[torch.Tensor, Masks]:
        return self.positions, self.masks

    def kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cache
        K, V = c.keys[layer], c.values[layer]
        K[:, :, c.ring:c.ring + c.scratch] = k
        V[:, :, c.ring:c.ring + c.scratch] = v
        return K, V  # the whole buffer: [ring | canvas]

    def shared_kv(self, layer: int, v: torch.Tensor) -> torch.Tensor:
        c = self.cache
        V = c.values[layer]
        V[:, :, c.capacity:c.capacity + c.scratch] = v
        return V  # the whole buffer: [prefix ... capacity | canvas]

    def key_positions(self) -> torch.Tensor:
        return self.slot_positions

    def end(self) -> None:
        pass
