"""DiffusionGemma's text network in one file.

One transformer, two modes that share every weight:
  encode()  causal over new tokens (the prompt, then each committed canvas); writes the KV cache.
  denoise() bidirectional over a canvas; reads the cache; adds the self-conditioning signal.
`logits()` is the tied LM head with the final softcap. Module and parameter names equal the
checkpoint's (`model.decoder.` stripped), so loading is a rename, not a conversion.

Numerics follow transformers' DiffusionGemmaForBlockDiffusion: norms in float32, softmax router
in float32, embeddings scaled by sqrt(hidden) rounded to the weight dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dgemma_kernels as kernels
import torch
import torch.nn.functional as F
from torch import nn

from .config import FULL, SLIDING, GenerationSettings, ModelConfig
from .packed_experts import PackedExperts, usable as packed_usable


class RMSNorm(nn.Module):
    """rms_norm(x) * weight, optionally added to a residual and times a layer scalar:
    (residual + rms_norm(x) * weight) * scale, each step rounded to x's dtype as separate PyTorch ops
    round it. The residual and scale forms are how Layer calls its full-width norms (`fusable`): on
    the fast path (inside dgemma_kernels.fused()) each of those is one kernel, same numerics."""

    def __init__(self, dim: int, eps: float, with_scale: bool = True, fusable: bool = False) -> None:
        super().__init__()
        self.eps, self.fusable = eps, fusable
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        if self.fusable and kernels.active():
            return kernels.run_rmsnorm(x, self.weight, self.eps, residual=residual, scale=scale)
        if x.dtype == torch.float32:  # one fused op
            y = F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        else:
            y = self.scale(rms_normalize(x, self.eps), like=x)
        if residual is not None:
            y = residual + y
        return y if scale is None else y * scale

    def scale(self, normed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Apply this norm's weight to an already normalised float32 tensor; round like `like`."""
        if like.dtype == torch.float32:
            return normed if self.weight is None else normed * self.weight
        y = normed * self.weight.float() if self.weight is not None else normed
        return y.type_as(like)


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) in float32, as transformers computes every norm: x * pow(mean(x^2) + eps, -0.5)
    (F.rms_norm gives bit-identical results)."""
    return F.rms_norm(x if x.dtype == torch.float32 else x.float(), (x.shape[-1],), None, eps)


# ---- rotary position embeddings ---------------------------------------------------------------
def rope_inv_freq(config: ModelConfig, layer_type: str) -> torch.Tensor:
    if layer_type == SLIDING:
        dim = config.sliding_head_dim
        return 1.0 / config.sliding_rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    # "Proportional" RoPE: only the first fraction of each half-head rotates; the rest keeps
    # frequency 0 (cos 1, sin 0), so the tables still span the whole head.
    dim = config.full_head_dim
    angles = rotated_pairs(config)
    rotated = 1.0 / config.full_rope_theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.float) / dim)
    return torch.cat([rotated, torch.zeros(dim // 2 - angles)])


def rotated_pairs(config: ModelConfig) -> int:
    """How many (i, i + head_dim/2) pairs proportional RoPE turns in a full-attention head: the rest
    keep frequency 0."""
    return int(config.full_rope_fraction * config.full_head_dim // 2)


def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [..., S, 1, D] for positions [S] or [B, S], broadcastable over heads."""
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[..., None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1), as transformers writes it (a
    matmul with a signed permutation gives the same bits but took 2-5x as long on a CPU)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def key_rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [S, a] (or [B, 1, S, a] for positions [B, S]) of a full layer's key slots, for its `a`
    turned pairs only: the same numbers as rope_tables' first `a` columns, in the cache's [B, H, S, D]
    layout."""
    freqs = positions[..., None].float() * inv_freq
    cos, sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
    return (cos, sin) if positions.ndim == 1 else (cos[:, None], sin[:, None])


KEY_CHUNK = 16_384  # slots rebuilt at a time: bounds the float32 temporaries of a long context


def rebuild_keys(values: torch.Tensor, k_norm: RMSNorm, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """A full layer's keys [B, H, S, D] from its values, which are the RMS-normed keys: times the
    k-norm weight (in float32, as the norm does), then rotated on the `a` pairs proportional RoPE
    turns (cos/sin [.., S, a]). With apply_rope's arithmetic on those pairs and the identity
    elsewhere, the keys equal the ones the layer computed, bit for bit in float32 and float64; in
    bfloat16 the weight multiplies the rounded value, so a key can differ in its last bit."""
    S = values.shape[2]
    if torch.is_grad_enabled() or S <= KEY_CHUNK:
        return _rotate_pairs(k_norm.scale(values.float(), like=values), cos, sin)
    keys = torch.empty_like(values)
    for s in range(0, S, KEY_CHUNK):
        e = min(s + KEY_CHUNK, S)
        keys[:, :, s:e] = _rotate_pairs(k_norm.scale(values[:, :, s:e].float(), like=values), cos[..., s:e, :],
                                        sin[..., s:e, :])
    return keys


def _rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, half = cos.shape[-1], x.shape[-1] // 2
    if a == 0:
        return x
    x1, x2 = x[..., :a], x[..., half:half + a]
    # rotate_half pairs dim i with i + half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)
    return torch.cat([x1 * cos - x2 * sin, x[..., a:half], x2 * cos + x1 * sin, x[..., half + a:]], dim=-1)


# ---- attention --------------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.head_dim = config.head_dim(layer)
        hidden, heads, kv_heads = config.hidden_size, config.num_heads, config.kv_heads(layer)
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False)
        # Full-attention layers have no v_proj: the values are the (un-normed, un-rotated) keys.
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias=False) if config.is_sliding(layer) else None
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.v_norm = RMSNorm(self.head_dim, config.rms_norm_eps, with_scale=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, ...], mask: torch.Tensor | None,
                cache) -> torch.Tensor:
        """`rope`: cos/sin of the queries; for full layers also those of the cache's key slots."""
        B, S, _ = x.shape
        cos, sin = rope[:2]
        q = apply_rope(self.q_norm(self.q_proj(x).view(B, S, -1, self.head_dim)), cos, sin)
        k_raw = self.k_proj(x).view(B, S, -1, self.head_dim)
        if self.v_proj is not None:
            v = self.v_norm(self.v_proj(x).view(B, S, -1, self.head_dim))
            k = apply_rope(self.k_norm.scale(rms_normalize(k_raw, self.k_norm.eps), like=k_raw), cos, sin)
            keys, values = cache.kv(self.layer, k.transpose(1, 2), v.transpose(1, 2))
        else:  # full layers: the values are the keys normalised without a scale; the cache keeps only them
            values = cache.shared_kv(self.layer, self.v_norm(k_raw).transpose(1, 2))
            keys = rebuild_keys(values, self.k_norm, *rope[2:])
        out = attend(q.transpose(1, 2), keys, values, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
           expand: bool | None = None) -> torch.Tensor:
    """Attention of q [B, H, n, D] over keys/values [B, kv heads, S, D], each KV head serving
    H / kv-heads query heads. q and k are RMS-normed, so the scale is 1, not 1/sqrt(D).

    On CUDA, PyTorch's kernels that take a mask (memory-efficient, cuDNN) do not take grouped heads,
    and the one that takes grouped heads (flash) takes no mask: a masked grouped call falls back to
    the math kernel, which holds [B, H, n, S] float32 scores. `expand` (None: decide) repeats the KV
    heads instead where that costs less memory than those scores: a prefill chunk over a long
    prefix, not a 256-token canvas."""
    groups = q.shape[1] // keys.shape[1]
    if expand is None:
        expand = (q.is_cuda and mask is not None and groups > 1
                  and q.shape[2] * 4 > 2 * keys.shape[-1] * keys.element_size())
    if expand and groups > 1:
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0, enable_gqa=True)


# ---- feed-forward: dense MLP and mixture of experts, side by side -----------------------------
class MLP(nn.Module):
    """Gated GELU-tanh MLP (also the self-conditioning block's MLP)."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.top_k = config.top_k_experts
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, with_scale=False)
        self.proj = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(config.hidden_size))
        self.per_expert_scale = nn.Parameter(torch.ones(config.num_experts))
        self.input_scale = config.hidden_size**-0.5

    def forward(self, x: torch.Tensor, normed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k expert weights and indices, [T, k] each. `normed`: rms_normalize(x), if at hand."""
        normed = rms_normalize(x, self.norm.eps) if normed is None else normed
        scores = self.proj(self.norm.scale(normed, like=x) * self.scale * self.input_scale)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[experts], experts


class Experts(nn.Module):
    """All experts' weights as 3-D tensors. On the fast path, the fused MoE kernels; else the (token,
    expert) pairs are sorted by expert, then each projection is one grouped GEMM (CUDA, bf16), two
    GEMMs per expert on prepacked copies of its weights (CPU inference: packed_experts.py), or else
    one batched GEMM over groups padded to the largest."""

    packable = True  # quant.Fp8Experts, whose weights are computed on access, is not

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, H))
        self.down_proj = nn.Parameter(torch.empty(E, H, I))
        self.packed: PackedExperts | None = None

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        if kernels.active():  # the fast path: the fused MoE kernels
            return kernels.run_moe(x, weights, experts, self.gate_up_proj, self.down_proj)
        if self.packable and packed_usable(x, self.gate_up_proj):
            self.packed = PackedExperts.of(self.packed, self.gate_up_proj, self.down_proj)
            if self.packed is not None:
                return self.packed(x, weights, experts)
        T, top_k = experts.shape
        num_experts = self.gate_up_proj.shape[0]
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
        token = order // top_k
        counts = torch.bincount(flat, minlength=num_experts)
        if _use_grouped_mm(x, self.gate_up_proj):
            offsets = counts.cumsum(0).to(torch.int32)
            gate, up = _grouped_mm(x[token], self.gate_up_proj.transpose(1, 2), offs=offsets).chunk(2, dim=-1)
            out = _grouped_mm(F.gelu(gate, approximate="tanh") * up, self.down_proj.transpose(1, 2), offs=offsets)
            out = out * weights.reshape(-1)[order, None]
            return torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))
        # Each expert's tokens in a slot row of [experts, capacity]; empty slots read a zero row (T)
        # and carry weight 0, so one batched GEMM per projection does all experts.
        capacity = int(counts.max())
        group = flat.index_select(0, order)
        first = (counts.cumsum(0) - counts).index_select(0, group)  # where each pair's expert starts
        slot = group * capacity + torch.arange(flat.numel(), device=x.device) - first
        source = torch.full((num_experts * capacity,), T, dtype=torch.long, device=x.device).scatter_(0, slot, token)
        slot_weight = weights.new_zeros(num_experts * capacity).scatter_(0, slot, weights.reshape(-1)[order])
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, source).view(num_experts, capacity, -1)
        gate, up = torch.bmm(padded, self.gate_up_proj.transpose(1, 2)).chunk(2, dim=-1)
        out = torch.bmm(F.gelu(gate, approximate="tanh") * up, self.down_proj.transpose(1, 2))
        out = out.view(num_experts * capacity, -1) * slot_weight[:, None]
        return x.new_zeros(T + 1, x.shape[1]).index_add_(0, source, out.to(x.dtype))[:T]


_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def _use_grouped_mm(x: torch.Tensor, w: torch.Tensor) -> bool:
    # CUDA grouped GEMMs need sm80+ and bf16 operands (and autograd through them is only relied on there).
    return (_grouped_mm is not None and x.device.type == "cuda" and w.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(x.device) >= (8, 0))


# ---- one transformer layer ---------------------------------------------------------------------
class Layer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        H, eps = config.hidden_size, config.rms_norm_eps
        self.layer_type = config.layer_types[layer]
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(H, config.intermediate_size)
        self.router = Router(config)
        self.experts = Experts(config)
        # The norms forward() calls whole are one kernel each on the fast path; the two
        # pre-feedforward ones only scale a shared normalisation (.scale()).
        for name in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2",
                     "pre_feedforward_layernorm_2"):
            setattr(self, name, RMSNorm(H, eps, fusable=not name.startswith("pre_")))
        # The checkpoint stores this scalar separately for the encoder and the denoiser.
        self.register_buffer("layer_scalar", torch.ones(1))
        self.register_buffer("encoder_layer_scalar", torch.ones(1))

    def forward(self, x: torch.Tensor, rope, mask, cache, encoder: bool) -> torch.Tensor:
        attn = self.self_attn(self.input_layernorm(x), rope, mask, cache)
        x = self.post_attention_layernorm(attn, residual=x)
        # The dense MLP, the router and the experts each RMS-normalise the residual stream with their
        # own scale: normalise once, scale three times.
        normed = rms_normalize(x, self.pre_feedforward_layernorm.eps)
        dense = self.post_feedforward_layernorm_1(self.mlp(self.pre_feedforward_layernorm.scale(normed, like=x)))
        flat, flat_normed = x.reshape(-1, x.shape[-1]), normed.reshape(-1, x.shape[-1])
        weights, experts = self.router(flat, flat_normed)
        moe = self.experts(self.pre_feedforward_layernorm_2.scale(flat_normed, like=flat), weights, experts).view_as(x)
        # x + norm(dense + norm_2(moe)), then the layer scalar: two norms with their residual adds.
        mixed = self.post_feedforward_layernorm_2(moe, residual=dense)
        scalar = self.encoder_layer_scalar if encoder else self.layer_scalar
        return self.post_feedforward_layernorm(mixed, residual=x, scale=scalar)


class SelfConditioning(nn.Module):
    """Turns the previous step's soft prediction into a signal added to the canvas embeddings."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pre_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, with_scale=False)
        mlp = MLP(config.hidden_size, config.intermediate_size)
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def forward(self, canvas_embeds: torch.Tensor, soft_embeds: torch.Tensor | None) -> torch.Tensor:
        if soft_embeds is None:  # no previous step: the MLP of a zero signal is exactly zero
            return self.post_norm(canvas_embeds)
        s = self.pre_norm(soft_embeds)
        s = self.down_proj(F.gelu(self.gate_proj(s), approximate="tanh") * self.up_proj(s))
        return self.post_norm(canvas_embeds + s)


# ---- the model ---------------------------------------------------------------------------------
@dataclass
class CheckpointParts:
    """What a generation needs besides the weights, as load_model found it in the checkpoint (all
    None for a model built in code). `vision`: the trained vision tower (vision.VisionTower), kept out
    of the text model's modules so its state_dict, parameter count and casts stay the text model's;
    `vision_note` says why there is none (a placeholder tower, vision=False, none in the checkpoint)."""

    path: Path | None = None
    tokenizer: Any = None  # tokenizers/transformers tokenizer with the chat template
    generation_settings: GenerationSettings | None = None  # the sampler defaults of generation_config.json
    vision: Any = None
    vision_note: str | None = None


def _part(name: str) -> property:
    return property(lambda self: getattr(self.checkpoint, name), lambda self, value: setattr(self.checkpoint, name, value))


class DiffusionGemma(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_conditioning = SelfConditioning(config)
        # sqrt(hidden) as a buffer in the weights' dtype (so casting the model rounds it as
        # transformers' buffer is rounded), not part of the checkpoint; a device tensor, so that a
        # CUDA graph of denoise() reads it instead of copying a Python float in on every call.
        self.register_buffer("embed_scale", torch.empty(()), persistent=False)
        self.init_buffers()
        # Kept out of the module's buffers so that casting the model never rounds them.
        self._inv_freq: dict[tuple[str, torch.device], torch.Tensor] = {}
        self.checkpoint = CheckpointParts()  # what load_model read beside the weights

    # The model holds weights; these five live in `checkpoint`, reachable under their old names too.
    path, tokenizer, generation_settings, vision, vision_note = (_part(n) for n in (
        "path", "tokenizer", "generation_settings", "vision", "vision_note"))

    def init_buffers(self) -> None:
        """(Re)make the buffers that come from the config, not the checkpoint, beside the embedding
        weights: after building the model, and after loading weights into a meta-built one."""
        w = self.embed_tokens.weight
        with torch.inference_mode(False):  # a plain tensor, usable by training's autograd too
            self.embed_scale = torch.full((), self.config.embed_scale, dtype=w.dtype, device=w.device)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed_tokens.weight) * self.embed_scale

    def soft_embedding(self, logits: torch.Tensor | None = None, probs: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(logits) @ E * sqrt(hidden): the self-conditioning input for the next step.
        Pass `probs` instead when the caller already holds softmax(logits)."""
        w = self.embed_tokens.weight
        if probs is None:
            probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        return (probs.to(w.dtype) @ w) * self.embed_scale

    def inv_freq(self, layer_type: str, device: torch.device) -> torch.Tensor:
        key = (layer_type, device)
        if key not in self._inv_freq:
            with torch.inference_mode(False):  # cached: must also serve training's autograd
                self._inv_freq[key] = rope_inv_freq(self.config, layer_type).to(device)
        return self._inv_freq[key]

    def _run_layers(self, x: torch.Tensor, positions: torch.Tensor, masks, cache, encoder: bool) -> torch.Tensor:
        # The tables are a few small ops per pass, recomputed from `positions` every time: a CUDA graph
        # of denoise() then follows a static cache's positions from canvas to canvas.
        rope = {t: rope_tables(positions, self.inv_freq(t, x.device), x.dtype) for t in (SLIDING, FULL)}
        turned = self.inv_freq(FULL, x.device)[:rotated_pairs(self.config)]
        rope[FULL] += key_rope_tables(cache.key_positions(), turned, x.dtype)
        for layer in self.layers:
            x = layer(x, rope[layer.layer_type], masks[layer.layer_type], cache, encoder)
        cache.end()
        return self.norm(x)

    def encode(self, ids: torch.Tensor, cache, valid: torch.Tensor | None = None, *,
               embeds: torch.Tensor | None = None, blocks: torch.Tensor | None = None) -> torch.Tensor:
        """Causal pass over new tokens [B, n]; appends them to `cache`. Returns final hidden states.

        `embeds` [B, n, hidden]: input embeddings to use instead of `embed(ids)` (an image prompt's,
        with the vision features at the image-token positions: dgemma_helpers/vision.py).
        `blocks` [B, n]: image-block ids (-1 for text); attention is bidirectional inside a block."""
        if blocks is not None and not self.config.bidirectional_vision:
            blocks = None  # the checkpoint's encoder reads images causally, like text
        positions, masks = (cache.begin_encode(ids.shape[1], valid) if blocks is None
                            else cache.begin_encode(ids.shape[1], valid, blocks))
        x = self.embed(ids) if embeds is None else embeds
        return self._run_layers(x, positions, masks, cache, encoder=True)

    def denoise(self, canvas: torch.Tensor, cache, soft_embeds: torch.Tensor | None = None,
                soft_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional pass over a canvas [B, L] that reads `cache`. Returns final hidden states.

        `soft_embeds` [B, L, hidden] is the previous step's `soft_embedding`; `soft_mask` [B] turns it
        off per example (training's self-conditioning dropout).
        """
        if soft_embeds is not None and soft_mask is not None:
            soft_embeds = soft_embeds * soft_mask.to(soft_embeds.dtype)[:, None, None]
        x = self.self_conditioning(self.embed(canvas), soft_embeds)
        positions, masks = cache.begin_denoise()
        return self._run_layers(x, positions, masks, cache, encoder=False)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied LM head + softcap, in float32."""
        cap = self.config.final_logit_softcapping
        logits = (hidden @ self.embed_tokens.weight.T).float()
        if torch.is_grad_enabled():
            return torch.tanh(logits / cap) * cap
        return logits.div_(cap).tanh_().mul_(cap)  # in place: the [B, L, vocab] tensor is the big one

    def num_parameters(self, active: bool = False) -> int:
        """All weights, or those one token touches (top-k of the experts)."""
        total = sum(p.numel() for p in self.parameters())
        if not active:
            return total
        c = self.config
        expert = sum(layer.experts.gate_up_proj[0].numel() + layer.experts.down_proj[0].numel() for layer in self.layers)
        return total - expert * (c.num_experts - c.top_k_experts)


def init_weights(model: DiffusionGemma, std: float = 0.02, generator: torch.Generator | None = None) -> None:
    """Random initialisation as transformers does it (normal(0, std) matrices, unit norms/scales)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, std, generator=generator)
            else:
                p.fill_(1.0)
        for layer in model.layers:
            layer.layer_scalar.fill_(1.0)
            layer.encoder_layer_scalar.fill_(1.0)

