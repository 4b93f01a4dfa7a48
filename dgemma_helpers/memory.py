"""How much memory a generation needs, worked out before anything is allocated.

A call's working memory is the KV cache (sized once for the prompt and every canvas it may commit)
plus the larger of two transient peaks: encoding one chunk of the prompt, and one denoising round.
Both peaks are dominated by a few big tensors that this module counts one by one; the small ones
(per-token activations of the hidden size) get a generous multiple. The estimate is an upper
bound in spirit, not a promise to the byte: tests hold the measured peak of a 32K-token prompt
under it, and `bench/long_context.py` prints both side by side.

What grows with the context, per row:
  * full-attention layers keep one tensor per token (their values, which are the normed keys);
  * sliding layers keep a ring of `sliding_window - 1` positions, a fixed cost;
  * a prefill chunk of n tokens attends over all S cached positions: its boolean mask [n, S] and
    the float copy PyTorch's attention makes of it are the one transient that grows with S;
  * a denoising round rebuilds one full layer's keys at a time ([S, heads, head_dim]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .cache import KVCache
from .config import ModelConfig
from .devices import available_memory
from .errors import DeviceError, InputError
from .head import ROW_BLOCK_BYTES, TILE_BYTES
from .model import KEY_CHUNK, DiffusionGemma

PREFILL_CHUNK = 2048  # prompt tokens encoded per pass: bounds the attention mask and activations
FLOAT = 4  # temporaries are float32 whatever the weights' dtype (norms, softmax, logits)
# Per-token activations of one layer, in units of hidden size: residual stream, norm outputs,
# attention output, the dense and expert outputs (the wide ones are counted separately).
HIDDEN_COPIES = 12
# What the allocator holds beyond the tensors counted (fragmentation, small buffers), on each peak.
SLACK = 1.15
OVERHEAD = 64 * 2**20


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a generation needs beside the weights (and the weights, when known)."""

    kv_cache: int  # allocated once per call, for prompt + committed canvases
    prefill: int  # peak while encoding one prompt chunk, beyond the cache
    denoise: int  # peak of one denoising round, beyond the cache
    weights: int = 0  # the loaded parameters (0 when estimated from a config alone)
    context: int = 0  # tokens the cache holds
    batch_size: int = 1

    @property
    def working(self) -> int:
        """What one generate() call allocates at its peak: the cache plus the larger transient."""
        return self.kv_cache + max(self.prefill, self.denoise)

    @property
    def total(self) -> int:
        return self.weights + self.working

    def summary(self) -> str:
        rows = [("KV cache", self.kv_cache, f"{self.context:,} tokens x {self.batch_size} row(s)"),
                ("prefill peak", self.prefill, f"one chunk of <= {PREFILL_CHUNK} prompt tokens"),
                ("denoise peak", self.denoise, "one denoising round"),
                ("working memory", self.working, "cache + the larger peak")]
        if self.weights:
            rows += [("weights", self.weights, "loaded parameters"), ("total", self.total, "")]
        return "\n".join(f"{name:<15} {_gib(n):>10}  {note}" for name, n, note in rows)


def cache_capacity(config: ModelConfig, prompt_tokens: int, max_new_tokens: int) -> int:
    """Tokens a generate() call's cache holds: the prompt and every canvas but the last (the last
    is never encoded: nothing reads it)."""
    return prompt_tokens + (math.ceil(max_new_tokens / config.canvas_length) - 1) * config.canvas_length


def estimate_memory(model: DiffusionGemma | ModelConfig, prompt_tokens: int, *, max_new_tokens: int = 256,
                    batch_size: int = 1, dtype: torch.dtype | None = None, head: str = "materialized",
                    probabilities: bool = False, device: torch.device | str | None = None,
                    capacity: int | None = None) -> MemoryEstimate:
    """The memory of generate() for `batch_size` prompts of `prompt_tokens` tokens (the longest row),
    for a loaded model (its dtype and device, and its weights counted) or a config alone (default:
    bfloat16 on a CUDA GPU, where long contexts run). `head`: "materialized" (the [B, canvas, vocab]
    logits, what generate runs where they fit) or "tiled" (none; see head.py). `probabilities`: the
    materialized head also keeps float32 probabilities (transformers' RNG, record_topk). `capacity`:
    the cache's slots, where they are more than the call needs (the fast path rounds them up)."""
    if head not in HEADS:
        raise InputError(f"head must be one of {HEADS}; got {head!r}.")
    for name, value, low in (("prompt_tokens", prompt_tokens, 1), ("max_new_tokens", max_new_tokens, 1),
                             ("batch_size", batch_size, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"{name} must be an int >= {low} (got {value!r}).")
    weights = 0
    if isinstance(model, DiffusionGemma):
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        dtype, device = dtype or model.dtype, device or model.device
        config = model.config
    else:
        config = model
    dtype, cuda = dtype or torch.bfloat16, torch.device(device or "cuda").type == "cuda"
    B, L, V, H = batch_size, config.canvas_length, config.vocab_size, config.hidden_size
    S = max(capacity or 0, cache_capacity(config, prompt_tokens, max_new_tokens))
    item = torch.empty((), dtype=dtype).element_size()
    kv_cache = KVCache.bytes_needed(config, B, S, dtype)
    full = [i for i in range(config.num_layers) if not config.is_sliding(i)]
    heads = config.num_heads
    widest = max(config.sliding_head_dim, config.full_head_dim if full else 0)
    ring = min(config.sliding_window - 1, S)

    def tokens(n: int) -> int:  # activations of n tokens per row through one layer
        attention = 3 * heads * widest + 2 * config.sliding_kv_heads * config.sliding_head_dim
        dense = 3 * config.intermediate_size
        # the CPU expert path pads each expert's tokens to the busiest expert's count: assume 2x
        experts = 2 * config.top_k_experts * (2 * H + 3 * config.moe_intermediate_size)
        return B * n * (HIDDEN_COPIES * H + attention + dense + experts) * FLOAT

    def rebuilt_keys(slots: int) -> int:  # one full layer's keys, and the float32 chunk they come from
        if not full:
            return 0
        per = B * config.full_kv_heads * config.full_head_dim
        return per * slots * item + 3 * per * min(slots, KEY_CHUNK) * FLOAT

    def grouped(n: int, slots: int, head_dim: int, kv_heads: int) -> int:
        # CUDA's masked attention takes no grouped KV heads: model.attend repeats them ([B, H, slots, D]
        # keys and values) or the math kernel holds [B, H, n, slots] float32 scores, whichever is less.
        if not cuda or kv_heads >= heads:
            return 0
        return B * heads * slots * min(n * FLOAT, 2 * head_dim * item)

    def attention(n: int, slots: int) -> int:
        sliding = grouped(n, ring + n, config.sliding_head_dim, config.sliding_kv_heads)
        return max(sliding, grouped(n, slots, config.full_head_dim, config.full_kv_heads) if full else 0)

    n = min(prompt_tokens, PREFILL_CHUNK)
    # The masks of a chunk: [n, S] (full layers; per row when rows are padded) and [n, ring + n],
    # each as bool plus the float copy attention makes.
    masks = B * n * (S + ring + n) * (1 + FLOAT)
    prefill = tokens(n) + masks + rebuilt_keys(S) + attention(n, S) + B * n * H * FLOAT  # + the chunk's hidden states
    denoise = tokens(L) + head_bytes(head, B * L, V, H, item, probabilities) + rebuilt_keys(S + L) \
        + attention(L, S + L) + B * L * (S + L) * (1 + FLOAT)
    prefill, denoise = (int(SLACK * peak) + OVERHEAD for peak in (prefill, denoise))
    return MemoryEstimate(kv_cache=kv_cache, prefill=prefill, denoise=denoise, weights=weights, context=S,
                          batch_size=B)


HEADS = ("materialized", "tiled")


def head_bytes(head: str, rows: int, vocab: int, hidden: int, item: int, probabilities: bool) -> int:
    """Peak of the denoise head for `rows` canvas positions. Materialized: the logits in the weights'
    dtype (`item` bytes each), the float32 tempered logits, the soft probabilities kept for the next
    round, float32 probabilities if asked for, and a block of rows' temporaries. Tiled: a vocabulary
    tile's temporaries and the float32 running sums."""
    if head == "tiled":
        return 4 * TILE_BYTES + rows * (2 * hidden + 8) * FLOAT
    return rows * vocab * (2 * item + FLOAT + (FLOAT if probabilities else 0)) + 4 * ROW_BLOCK_BYTES


def fitting_head(config: ModelConfig, prompt_tokens: int, *, max_new_tokens: int, batch_size: int,
                 dtype: torch.dtype, device: torch.device, probabilities: bool,
                 capacity: int | None = None) -> tuple[str, MemoryEstimate]:
    """The denoise head a generate() call runs, with its estimate: the materialized one (transformers'
    arithmetic, and the fastest) where its working memory fits in what the device has free, else the
    tiled one. Full probabilities only come from the materialized head. check_fits then refuses
    whatever still does not fit."""
    free = available_memory(device)
    for head in ("materialized",) if probabilities else HEADS:
        estimate = estimate_memory(config, prompt_tokens, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   dtype=dtype, device=device, head=head, probabilities=probabilities,
                                   capacity=capacity)
        if free is None or estimate.working <= free:
            break
    return head, estimate


def check_fits(estimate: MemoryEstimate, device: torch.device, what: str) -> None:
    """Refuse, before allocating, a call whose working memory exceeds what the device has free."""
    free = available_memory(device)
    if free is None or estimate.working <= free:
        return
    raise DeviceError(
        f"{what} needs about {_gib(estimate.working)} of working memory on {device} (KV cache "
        f"{_gib(estimate.kv_cache)} for {estimate.context:,} tokens x {estimate.batch_size} row(s), peak "
        f"{_gib(max(estimate.prefill, estimate.denoise))} beside it) but only {_gib(free)} is free: shorten the "
        "prompt, give fewer prompts per call, lower max_new_tokens, or use a device with more memory "
        "(dg.estimate_memory shows the breakdown).")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"
