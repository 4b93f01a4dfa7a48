"""How much memory a generation (or a fine-tuning step) needs, worked out before anything is allocated.

A call's working memory is the KV cache (sized once for the prompt and every canvas it may commit)
plus the larger of two transient peaks: encoding one prompt chunk, and one denoising round. The few
big tensors of each peak are counted one by one, the small per-token ones as a generous multiple:
an upper bound in spirit, not to the byte (tests hold the measured peak of a 32K-token prompt
under it; `bench/long_context.py` prints both). What grows with the context S is the full layers'
values, a prefill chunk's [n, S] mask (and attention's float copy of it) and one full layer's
rebuilt keys; the sliding layers' ring is a fixed cost.
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
from .validate import check, is_int

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
                    capacity: int | None = None, training: str | None = None,
                    rank: int = 16) -> MemoryEstimate | TrainingMemory:
    """The memory of generate() for `batch_size` prompts of `prompt_tokens` tokens (the longest row), for
    a loaded model (its dtype, device and weights) or a config alone (default: bfloat16 on a CUDA GPU).
    `head`: "materialized" (the [B, canvas, vocab] logits, where they fit) or "tiled" (head.py).
    `probabilities`: the materialized head also keeps float32 probabilities (transformers' RNG,
    record_topk). `capacity`: the cache's slots, where more than the call needs (the fast path rounds up).
    With `training` ("lora", "lora+experts" or "full"): one fine-tuning step instead (estimate_training)."""
    if training is not None:
        return estimate_training(model, prompt_tokens, batch_size=batch_size, mode=training, rank=rank, dtype=dtype,
                                 device=device)
    check(head in HEADS, InputError, f"head must be one of {HEADS}; got {head!r}.")
    for name, value in (("prompt_tokens", prompt_tokens), ("max_new_tokens", max_new_tokens),
                        ("batch_size", batch_size)):
        check(is_int(value) and value >= 1, InputError, f"{name} must be an int >= 1 (got {value!r}).")
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
    logits = rows * vocab * FLOAT  # a block or tile never holds more than all of them
    if head == "tiled":
        return 4 * min(max(TILE_BYTES, rows * 256 * FLOAT), logits) + rows * (2 * hidden + 8) * FLOAT
    return rows * vocab * (2 * item + FLOAT + (FLOAT if probabilities else 0)) + 4 * min(
        max(ROW_BLOCK_BYTES, vocab * FLOAT), logits)


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


def check_fits(estimate: MemoryEstimate | TrainingMemory, device: torch.device, what: str) -> None:
    """Refuse, before allocating, a call whose working memory exceeds what the device has free."""
    free = available_memory(device)
    if free is None or estimate.working <= free:
        return
    if isinstance(estimate, TrainingMemory):
        raise DeviceError(
            f"{what} needs about {_gib(estimate.working)} beside the loaded weights on {device} (adapters, gradients "
            f"and optimizer {_gib(estimate.adapters + estimate.gradients + estimate.optimizer)}, activations "
            f"{_gib(estimate.activations)} for {estimate.batch_size} x {estimate.seq_len:,} tokens) but only "
            f"{_gib(free)} is free: lower batch_size, shorten the longest example (max_tokens), keep "
            "gradient checkpointing on, train LoRA instead of full weights, or use a device with more memory "
            "(dg.estimate_memory(..., training=...) shows the breakdown).")
    raise DeviceError(
        f"{what} needs about {_gib(estimate.working)} of working memory on {device} (KV cache "
        f"{_gib(estimate.kv_cache)} for {estimate.context:,} tokens x {estimate.batch_size} row(s), peak "
        f"{_gib(max(estimate.prefill, estimate.denoise))} beside it) but only {_gib(free)} is free: shorten the "
        "prompt, give fewer prompts per call, lower max_new_tokens, or use a device with more memory "
        "(dg.estimate_memory shows the breakdown).")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


# ---- fine-tuning ------------------------------------------------------------------------------------
TRAINING_MODES = ("lora", "lora+experts", "full")


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes of one fine-tuning step with gradient checkpointing (dgemma_helpers/sft)."""

    weights: int  # the model's weights as loaded (frozen, or trained in full)
    adapters: int  # trainable weights beside them (LoRA's, float32); 0 for full fine-tuning
    gradients: int  # one gradient per trainable weight
    optimizer: int  # AdamW's two moments per trainable weight
    activations: int  # what the backward pass keeps, plus its largest transient
    trainable: int = 0  # trainable parameters
    seq_len: int = 0
    batch_size: int = 1

    @property
    def working(self) -> int:
        """What a run allocates beside the loaded weights."""
        return self.adapters + self.gradients + self.optimizer + self.activations

    @property
    def total(self) -> int:
        return self.weights + self.working

    def summary(self) -> str:
        rows = [("weights", self.weights, "as loaded"),
                ("adapters", self.adapters, f"{self.trainable / 1e6:,.1f}M trainable parameters"),
                ("gradients", self.gradients, ""), ("optimizer", self.optimizer, "AdamW's two moments"),
                ("activations", self.activations, f"{self.batch_size} x {self.seq_len:,} tokens, checkpointed"),
                ("total", self.total, "")]
        return "\n".join(f"{name:<12} {_gib(n):>10}  {note}" for name, n, note in rows)


def lora_parameters(config: ModelConfig, rank: int, experts: bool = False) -> int:
    """LoRA's parameters on the attention and dense-MLP linears (and the expert weights)."""
    H, F = config.hidden_size, config.intermediate_size
    total = 0
    for layer in range(config.num_layers):
        q, kv = config.num_heads * config.head_dim(layer), config.kv_heads(layer) * config.head_dim(layer)
        linears = [(H, q), (H, kv), (q, H), (H, F), (H, F), (F, H)] + ([(H, kv)] if config.is_sliding(layer) else [])
        total += sum(rank * (a + b) for a, b in linears)
        if experts:  # peft's target_parameters: one rank-r pair per expert matrix
            M = config.moe_intermediate_size
            total += rank * config.num_experts * ((H + 2 * M) + (M + H))
    return total


def estimate_training(model: DiffusionGemma | ModelConfig, seq_len: int, *, batch_size: int = 1, mode: str = "lora",
                      rank: int = 16, dtype: torch.dtype | None = None,
                      device: torch.device | str | None = None) -> TrainingMemory:
    """One fine-tuning step on `batch_size` sequences of `seq_len` tokens with gradient checkpointing:
    the backward pass keeps each layer's input (encoder over the sequence, denoiser over the canvas),
    the encoder's keys and values (the denoiser's context), and the float32 logits of both losses;
    its largest transient is one layer recomputed with its gradients (the masked attention's scores
    included) or, for LoRA on the experts, one layer's expert update materialized."""
    check(mode in TRAINING_MODES, InputError, f"training must be one of {TRAINING_MODES}; got {mode!r}.")
    if isinstance(model, DiffusionGemma):
        config, dtype, device = model.config, dtype or model.dtype, device or model.device
        params = sum(p.numel() for p in model.parameters())
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    else:
        config, dtype = model, dtype or torch.bfloat16
        params = _parameter_count(config)
        weights = params * torch.empty((), dtype=dtype).element_size()
    item = torch.empty((), dtype=dtype).element_size()
    B, S, C, H, V = batch_size, seq_len, config.canvas_length, config.hidden_size, config.vocab_size
    if mode == "full":
        router = config.num_layers * (config.num_experts * H + H + config.num_experts)
        trainable = params - router
        adapters, per_weight = 0, item  # gradients and moments in the weights' dtype
    else:
        trainable = lora_parameters(config, rank, experts=mode == "lora+experts")
        adapters, per_weight = trainable * FLOAT, FLOAT
    kv = sum(config.kv_heads(i) * config.head_dim(i) * (2 if config.is_sliding(i) else 1)
             for i in range(config.num_layers))
    kept = B * (S + C) * H * item * config.num_layers + B * S * kv * item
    # logits: the matmul's output, its float32 copy, the softcap's output, cross-entropy's log-softmax
    logits = B * (S + C) * V * (item + 3 * FLOAT) + B * C * V * 2 * FLOAT  # + pass 1's, without gradient
    per_token = (HIDDEN_COPIES * H + 3 * config.num_heads * max(config.sliding_head_dim, config.full_head_dim)
                 + 3 * config.intermediate_size
                 + 2 * config.top_k_experts * (2 * H + 3 * config.moe_intermediate_size)) * FLOAT
    scores = B * config.num_heads * S * S * FLOAT * 3  # masked attention's scores, probabilities, their gradient
    layer = 2 * B * S * per_token + scores
    if mode == "lora+experts":
        M = config.moe_intermediate_size
        layer += config.num_experts * 3 * M * H * FLOAT * 2  # W + BA for both expert matrices, and its gradient
    activations = int(SLACK * (kept + logits + layer)) + OVERHEAD
    return TrainingMemory(weights=weights, adapters=adapters, gradients=trainable * per_weight,
                          optimizer=2 * trainable * per_weight, activations=activations, trainable=trainable,
                          seq_len=S, batch_size=B)


def _parameter_count(config: ModelConfig) -> int:
    H, F, E, M = config.hidden_size, config.intermediate_size, config.num_experts, config.moe_intermediate_size
    total = config.vocab_size * H + H + (H + 3 * H * F)  # embeddings, final norm, self-conditioning
    for i in range(config.num_layers):
        q, kv = config.num_heads * config.head_dim(i), config.kv_heads(i) * config.head_dim(i)
        attention = H * q + H * kv * (2 if config.is_sliding(i) else 1) + q * H + 2 * config.head_dim(i)
        total += attention + 3 * H * F + (E * H + H + E) + E * 3 * M * H + 7 * H
    return total
