"""Mixture-of-experts feed-forward for small token counts: the denoiser's 256-token canvas (top-8
of 128 experts: every expert is hit, ~16 tokens each) and the encoder's prompt chunks.

At such sizes the layer is bound by reading the expert weights (1.5 GB per layer of the real model
in bf16), so the kernels are organised around the weights: one program owns one expert and one
tile of output channels, reads that weight tile once per 64-token block of the expert's tokens
(once in all, at the denoiser's ~16-40 tokens per expert), and multiplies it with the expert's
tokens, gathered by index. No padding to a capacity, no per-expert launches, no host sync: the
per-expert token ranges are read on the device, so the whole thing can sit in a CUDA graph.

  1. route:      sort the (token, slot) pairs by expert; offsets[e] = first pair of expert e
  2. gate_up:    act[pair] = gelu_tanh(x[token] @ gate[e]^T) * (x[token] @ up[e]^T)   (one kernel)
  3. down:       y[pair]   = (act[pair] @ down[e]^T) * routing_weight[pair]          (one kernel)
  4. combine:    out[token] = sum over its k slots of y                              (deterministic)

Weights as stored by the checkpoint: gate_up [E, 2I, H] (gate rows first), down [E, H, I]. FP8
(e4m3) weights are dequantized in registers; their per-output-channel scales multiply the
accumulator after the dot product, which is exact in real arithmetic.

Tiles: 64 output channels x 64 of the reduction, 32 or 64 pairs, 4 pipeline stages: < 100 KB of
shared memory, which every sm80+ GPU has (Ampere, Ada, Hopper, and Blackwell including the RTX Pro
6000 with its 99 KB per block); tl.dot compiles to mma there (Triton picks wgmma on Hopper). A
64-pair block holds two 64 x 64 fp32 accumulators (gate and up), which with 4 warps needs more than
255 registers a thread on sm_100 and sm_120: it gets 8 warps. (At 3 stages sm_100 also spilled a
few bytes with fp8 weights; at 4 nothing spills anywhere.) fp32 operands multiply on FMA units
with every operand in registers, so they get 32-wide tiles. tools/compile_check.py holds every choice to
"compiles, no spills, shared memory within the limit" on sm_80/89/90/100/120.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .target import gpu_arch
from .tl_math import gelu_tanh


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, w_scale_ptr, order_ptr, offsets_ptr, act_ptr, H, I, TOP_K: tl.constexpr,
                    HAS_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    expert = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < I
    lo = tl.load(offsets_ptr + expert)
    hi = tl.load(offsets_ptr + expert + 1)
    w_base = w_ptr + expert.to(tl.int64) * (2 * I * H)
    for m0 in range(lo, hi, BLOCK_M):
        pairs = m0 + tl.arange(0, BLOCK_M)
        m_ok = pairs < hi
        token = tl.load(order_ptr + pairs, mask=m_ok, other=0) // TOP_K
        gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < H
            xs = tl.load(x_ptr + token[:, None] * H + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w_mask = n_ok[:, None] & k_ok[None, :]
            wg = tl.load(w_base + n[:, None] * H + k[None, :], mask=w_mask, other=0.0).to(xs.dtype)
            wu = tl.load(w_base + (n[:, None] + I) * H + k[None, :], mask=w_mask, other=0.0).to(xs.dtype)
            gate = tl.dot(xs, tl.trans(wg), gate, input_precision=DOT_PRECISION)
            up = tl.dot(xs, tl.trans(wu), up, input_precision=DOT_PRECISION)
        if HAS_SCALE:
            s_base = w_scale_ptr + expert * (2 * I)
            gate = gate * tl.load(s_base + n, mask=n_ok, other=0.0)[None, :]
            up = up * tl.load(s_base + I + n, mask=n_ok, other=0.0)[None, :]
        act = gelu_tanh(gate) * up
        tl.store(act_ptr + pairs.to(tl.int64)[:, None] * I + n[None, :], act.to(act_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _down_kernel(act_ptr, w_ptr, w_scale_ptr, order_ptr, offsets_ptr, route_w_ptr, y_ptr, H, I,
                 HAS_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    expert = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < H
    lo = tl.load(offsets_ptr + expert)
    hi = tl.load(offsets_ptr + expert + 1)
    w_base = w_ptr + expert.to(tl.int64) * (H * I)
    for m0 in range(lo, hi, BLOCK_M):
        pairs = m0 + tl.arange(0, BLOCK_M)
        m_ok = pairs < hi
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, I, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < I
            a = tl.load(act_ptr + pairs.to(tl.int64)[:, None] * I + k[None, :], mask=m_ok[:, None] & k_ok[None, :],
                        other=0.0)
            w = tl.load(w_base + n[:, None] * I + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(a, tl.trans(w.to(a.dtype)), acc, input_precision=DOT_PRECISION)
        if HAS_SCALE:
            acc = acc * tl.load(w_scale_ptr + expert * H + n, mask=n_ok, other=0.0)[None, :]
        original = tl.load(order_ptr + pairs, mask=m_ok, other=0)  # token * top_k + slot
        acc = acc * tl.load(route_w_ptr + original, mask=m_ok, other=0.0)[:, None]
        tl.store(y_ptr + original.to(tl.int64)[:, None] * H + n[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])


def route(experts: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs sorted by expert (`order`: original flat pair index, token * top_k + slot) and
    offsets [E + 1] where each expert's run starts. searchsorted, not bincount: bincount syncs
    with the host on CUDA to size its output, which a CUDA graph cannot contain."""
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    bounds = torch.arange(num_experts + 1, device=flat.device, dtype=flat.dtype)
    offsets = torch.searchsorted(flat[order].contiguous(), bounds).to(torch.int32)
    return order.to(torch.int32), offsets


def _tiles(x: torch.Tensor) -> dict:
    # float32 operands: exact products ("ieee"), not tf32, so fp32 models keep fp32 accuracy;
    # None (the default) for bf16/fp8 operands.
    precision = dict(DOT_PRECISION="ieee" if x.dtype == torch.float32 else None)
    if gpu_arch(x.device) is None:  # the interpreter: smaller tiles run faster, same code path
        return dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, **precision)
    if x.dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=2, **precision)
    wide = x.shape[0] > 1024  # > 4 canvases of the real model: ~64+ pairs per expert
    return dict(BLOCK_M=64 if wide else 32, BLOCK_N=64, BLOCK_K=64, num_warps=8 if wide else 4, num_stages=4,
                **precision)


def moe(x: torch.Tensor, routing_weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
        down: torch.Tensor, gate_up_scale: torch.Tensor | None = None,
        down_scale: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k routing_weights[t, k] * down_e(gelu_tanh(gate_e(x_t)) * up_e(x_t)), e = experts[t, k].

    x [T, H]; routing_weights [T, k] float32; experts [T, k] int; gate_up [E, 2I, H]; down [E, H, I]
    (bf16, fp32, or float8_e4m3fn with float32 scales gate_up_scale [E, 2I], down_scale [E, H]).
    Returns [T, H] in x's dtype."""
    T, H = x.shape
    E, two_i, _ = gate_up.shape
    I = two_i // 2
    top_k = experts.shape[1]
    x = x.contiguous()
    order, offsets = route(experts, E)
    tiles = _tiles(x)
    act = torch.empty(T * top_k, I, dtype=x.dtype, device=x.device)
    _gate_up_kernel[(E, triton.cdiv(I, tiles["BLOCK_N"]))](
        x, gate_up, gate_up_scale if gate_up_scale is not None else x, order, offsets, act, H, I, TOP_K=top_k,
        HAS_SCALE=gate_up_scale is not None, **tiles)
    y = torch.empty(T * top_k, H, dtype=torch.float32, device=x.device)
    _down_kernel[(E, triton.cdiv(H, tiles["BLOCK_N"]))](
        act, down, down_scale if down_scale is not None else x, order, offsets,
        routing_weights.reshape(-1).float().contiguous(), y, H, I, HAS_SCALE=down_scale is not None, **tiles)
    return y.view(T, top_k, H).sum(dim=1).to(x.dtype)
