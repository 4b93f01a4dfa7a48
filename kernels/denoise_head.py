"""The fused denoise head: final hidden states -> tied LM head -> softcap -> temperature -> what a
denoising round needs per canvas position, without ever materialising the [positions, vocab] logits.

Per position n and vocabulary token v, z[n, v] = tanh((h_n . E_v) / cap) * cap / T. The kernels walk
the vocabulary in tiles with the online softmax of dgemma_helpers/head.py:tiled_head (read that
first: same algorithm, same e^-60 floor, applied per tile: a term below e^-60 of its tile's max, or
a tile below e^-60 of the running max, counts as 0), computing per position
    m    running max of z                         s = sum e^(z - m)
    t    sum e^(z - m) (z - m)                    acc = sum e^(z - m) E_v   (hidden-sized, see below)
    the first argmax of z, and the Gumbel-max sample argmax(z + g) with g = gumbel(key[row], position
    in the canvas, v), the counter-based hash of kernels/hash_ref.py, so samples equal CounterRNG's
    draw for draw.
Then entropy = log s - t / s (no cancellation) and soft = acc / s * sqrt(hidden).

Layout. The soft embedding is a second GEMM over the vocabulary whose accumulator is hidden-sized
(2816 floats per position): too large to stay in registers next to the first GEMM's tile, and a
read-modify-write of it per vocabulary tile would cost more memory traffic than the weights. So the
vocabulary is walked in chunks (1K to 16K tokens, sized to the L2 cache: tiles_per_chunk), two kernels
per chunk:
  _logits_kernel  one program per [64 positions x 64 tokens] tile: z by a K-loop over the hidden
                  size, then that tile's max, first argmax, Gumbel-max candidate, s and t (relative
                  to the tile's max), and p = e^(z - tile max) in the weight dtype into a chunk
                  buffer [N, chunk] (it stays in L2);
  _soft_kernel    a GEMM acc[N, hidden] += p @ E_chunk with a prologue that rescales each p tile by
                  e^(tile max - running max) and an epilogue that rescales the running accumulator:
                  the online softmax, one chunk at a time, in registers.
The per-tile statistics ([N, vocab / 64], 64x smaller than the logits) are merged at the end by a
few PyTorch ops (log-sum-exp over tiles; the first tile wins ties, so the first maximum wins).

Cost. Two GEMMs over the vocabulary (z, then p @ E): at 256 positions that is 0.76 TFLOP against
1.5 GB of embedding reads (one pass: the soft kernel finds its chunk in L2), so on an H100 this
head is compute bound (~1 ms), not bandwidth bound; what it saves is memory: nothing of size
[positions, vocab] (0.27 GB fp32 per canvas) exists. bench/step_cost.py counts it per step.

Tiles are 64 wide with 2 stages (< 100 KB of shared memory, fits any sm80+ GPU including the
RTX Pro 6000), 32 wide for fp32 operands (FMA dot products hold every operand in registers);
tools/compile_check.py compiles them for every target. Only tl.dot, exp and log are used, so the kernels also
run under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .denoise_head_ref import LOG_PROB_FLOOR, FusedHeadResult
from .target import gpu_arch
from .tl_math import mix32, tanh, uniform_from_hash

# A constexpr: kernels may read a module global only in that form (a plain float compiles under the
# interpreter but is a NameError on a GPU).
FLOOR = tl.constexpr(LOG_PROB_FLOOR)

@triton.jit
def _logits_kernel(h_ptr, e_ptr, temp_ptr, key_ptr, p_ptr, tmax_ptr, targ_ptr, ts_ptr, tt_ptr, gmax_ptr, garg_ptr,
                   N, V, H, L, first_tile, chunk_cols, cap,
                   DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    local = tl.program_id(1)  # tile within this chunk
    tile = first_tile + local
    cols = tile * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    z = tl.zeros((BLOCK_N, BLOCK_V), tl.float32)
    for k0 in range(0, H, BLOCK_H):
        k = k0 + tl.arange(0, BLOCK_H)
        k_ok = k < H
        h = tl.load(h_ptr + rows.to(tl.int64)[:, None] * H + k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        e = tl.load(e_ptr + cols.to(tl.int64)[:, None] * H + k[None, :], mask=col_ok[:, None] & k_ok[None, :],
                    other=0.0)
        z = tl.dot(h, tl.trans(e), z, input_precision=DOT_PRECISION)
    z = tanh(z / cap) * cap / tl.load(temp_ptr)
    z = tl.where(col_ok[None, :], z, float("-inf"))

    # the tile's max and first argmax (tl.argmax keeps the first of equal values)
    tmax = tl.max(z, axis=1)
    targ = tile * BLOCK_V + tl.argmax(z, axis=1, tie_break_left=True)
    # Gumbel-max candidate: argmax(z + g), g = gumbel(key of the row, position in the canvas, token)
    key = tl.load(key_ptr + rows // L, mask=row_ok, other=0).to(tl.uint32)
    pos_hash = mix32((rows % L).to(tl.uint32) ^ key)
    u = uniform_from_hash(mix32(pos_hash[:, None] + cols.to(tl.uint32)[None, :]))
    zg = tl.where(col_ok[None, :], z - tl.log(-tl.log(u)), float("-inf"))
    gmax = tl.max(zg, axis=1)
    garg = tile * BLOCK_V + tl.argmax(zg, axis=1, tie_break_left=True)
    # softmax pieces relative to the tile's max: s = sum p, t = sum p (z - max), p = e^(z - max)
    zc = z - tmax[:, None]
    p = tl.where(zc > FLOOR, tl.exp(zc), 0.0)
    ts = tl.sum(p, axis=1)
    tt = tl.sum(p * tl.where(p > 0, zc, 0.0), axis=1)

    stat = tile.to(tl.int64) * N + rows  # statistics are [tiles, N]: contiguous over positions
    tl.store(tmax_ptr + stat, tmax, mask=row_ok)
    tl.store(targ_ptr + stat, targ, mask=row_ok)
    tl.store(ts_ptr + stat, ts, mask=row_ok)
    tl.store(tt_ptr + stat, tt, mask=row_ok)
    tl.store(gmax_ptr + stat, gmax, mask=row_ok)
    tl.store(garg_ptr + stat, garg, mask=row_ok)
    local_cols = local * BLOCK_V + tl.arange(0, BLOCK_V)
    tl.store(p_ptr + rows.to(tl.int64)[:, None] * chunk_cols + local_cols[None, :], p.to(p_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _soft_kernel(p_ptr, e_ptr, tmax_ptr, m_in_ptr, m_out_ptr, acc_ptr, N, V, H, first_tile, chunk_tiles, chunk_cols,
                 DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    hcols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = hcols < H
    # the running max after this chunk: max(previous, this chunk's tile maxima)
    m_prev = tl.load(m_in_ptr + rows, mask=row_ok, other=0.0)
    m_new = m_prev
    for j in range(0, chunk_tiles):
        m_new = tl.maximum(m_new, tl.load(tmax_ptr + (first_tile + j).to(tl.int64) * N + rows, mask=row_ok,
                                          other=0.0))
    if tl.program_id(1) == 0:  # ping-pong buffers: other programs still read m_in
        tl.store(m_out_ptr + rows, m_new, mask=row_ok)

    acc = tl.zeros((BLOCK_M, BLOCK_H), tl.float32)
    for j in range(0, chunk_tiles):
        tile = first_tile + j
        cols = tile * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        shift = tl.load(tmax_ptr + tile.to(tl.int64) * N + rows, mask=row_ok, other=0.0) - m_new
        scale = tl.where(shift > FLOOR, tl.exp(shift), 0.0)
        local_cols = j * BLOCK_V + tl.arange(0, BLOCK_V)
        p = tl.load(p_ptr + rows.to(tl.int64)[:, None] * chunk_cols + local_cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        p = (p.to(tl.float32) * scale[:, None]).to(e_ptr.dtype.element_ty)
        e = tl.load(e_ptr + cols.to(tl.int64)[:, None] * H + hcols[None, :], mask=col_ok[:, None] & h_ok[None, :],
                    other=0.0)
        acc = tl.dot(p, e, acc, input_precision=DOT_PRECISION)
    a_ptrs = acc_ptr + rows.to(tl.int64)[:, None] * H + hcols[None, :]
    a_mask = row_ok[:, None] & h_ok[None, :]
    acc += tl.load(a_ptrs, mask=a_mask, other=0.0) * tl.exp(m_prev - m_new)[:, None]
    tl.store(a_ptrs, acc, mask=a_mask)


DEFAULT_L2 = 50 * 2**20  # an H100's / H200's L2 cache, where the device cannot be asked (the compile check)


def _plan(device: torch.device, dtype: torch.dtype, N: int, H: int) -> dict:
    """Tile sizes: the interpreter runs small tiles faster; on a GPU, 64-wide tiles with 2 stages
    (32-wide in fp32), and chunks sized to the L2 cache (see tiles_per_chunk)."""
    if gpu_arch(device) is None:
        return dict(BLOCK_N=32, BLOCK_V=64, BLOCK_H=64, BLOCK_M=32, CHUNK_TILES=4, launch={})
    l2 = DEFAULT_L2
    if device.type == "cuda" and torch.cuda.is_available():
        l2 = torch.cuda.get_device_properties(device).L2_cache_size or DEFAULT_L2
    item = torch.empty((), dtype=dtype).element_size()
    if dtype == torch.float32:
        return dict(BLOCK_N=32, BLOCK_V=32, BLOCK_H=32, BLOCK_M=32, CHUNK_TILES=tiles_per_chunk(N, H, item, 32, l2),
                    launch=dict(num_warps=4, num_stages=2))
    return dict(BLOCK_N=64, BLOCK_V=64, BLOCK_H=64, BLOCK_M=64, CHUNK_TILES=tiles_per_chunk(N, H, item, 64, l2),
                launch=dict(num_warps=4, num_stages=2))


def tiles_per_chunk(N: int, H: int, item: int, block_v: int, l2_bytes: int) -> int:
    """Vocabulary tiles per chunk such that the chunk's embedding rows [chunk, H] and probabilities
    [N, chunk], beside the hidden states [N, H] every logits program reads, take at most half the
    L2 cache. The soft kernel then re-reads both from L2:
    its H / BLOCK_H column programs each sweep all of p, and the chunk of E is the one the logits
    kernel just read, so per round the embedding comes from memory once, not twice, and p never
    (at batch 8 with 16K-token chunks p is 64 MB: past an H200's L2, swept 44 times). Between 1,024
    and 16,384 tokens: fewer tokens would cost more in kernel launches than they save."""
    tokens = max(0, l2_bytes // 2 - N * H * item) // ((H + N) * item)
    return max(1024 // block_v, min(16384 // block_v, tokens // block_v))


def denoise_head(hidden: torch.Tensor, embed: torch.Tensor, temperature: torch.Tensor, keys: torch.Tensor,
                 softcap: float, embed_scale: torch.Tensor) -> FusedHeadResult:
    """The head for hidden [N, H] (N = B * L canvas positions, flattened row-major). `embed` [V, H] is
    the tied embedding; `temperature` a one-element float32 tensor and `keys` [B] int64 the sampler's
    stream key of each batch row: device tensors, so a CUDA graph can replay the head with new values. `embed_scale`: the model's
    sqrt(hidden) buffer, which multiplies the soft embedding."""
    N, H = hidden.shape
    V = embed.shape[0]
    hidden, dev = hidden.contiguous(), hidden.device
    plan = _plan(dev, embed.dtype, N, H)
    bn, bv, bh, bm, ct = (plan[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_H", "BLOCK_M", "CHUNK_TILES"))
    launch = plan["launch"]
    n_tiles = triton.cdiv(V, bv)
    f32 = dict(dtype=torch.float32, device=dev)
    tmax, ts, tt, gmax = (torch.empty(n_tiles, N, **f32) for _ in range(4))
    targ, garg = (torch.empty(n_tiles, N, dtype=torch.int32, device=dev) for _ in range(2))
    p = torch.empty(N, ct * bv, dtype=embed.dtype, device=dev)
    m = torch.full((2, N), -1e30, **f32)  # finite: the first rescale is e^-huge = 0, never NaN
    acc = torch.zeros(N, H, **f32)
    precision = "ieee" if embed.dtype == torch.float32 else None  # fp32: no tf32 rounding
    for c, first in enumerate(range(0, n_tiles, ct)):
        tiles = min(ct, n_tiles - first)
        _logits_kernel[(triton.cdiv(N, bn), tiles)](
            hidden, embed, temperature, keys, p, tmax, targ, ts, tt, gmax, garg, N, V, H, N // keys.numel(), first, ct * bv,
            float(softcap), DOT_PRECISION=precision, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh, **launch)
        _soft_kernel[(triton.cdiv(N, bm), triton.cdiv(H, bh))](
            p, embed, tmax, m[c % 2], m[(c + 1) % 2], acc, N, V, H, first, tiles, ct * bv,
            DOT_PRECISION=precision, BLOCK_M=bm, BLOCK_V=bv, BLOCK_H=bh, **launch)
    return _merge_tiles(tmax, targ, ts, tt, gmax, garg, acc, embed, embed_scale)


def _merge_tiles(tmax, targ, ts, tt, gmax, garg, acc, embed, embed_scale) -> FusedHeadResult:
    """Combine the per-tile statistics [tiles, N] (log-sum-exp rescaling). torch's argmax returns
    the first of equal maxima, so the earliest tile, hence the first maximum, wins."""
    top = tmax.max(dim=0).values
    w = torch.exp(tmax - top)
    s = (w * ts).sum(0)
    t = (w * (tt + ts * (tmax - top))).sum(0)
    entropy = torch.log(s) - t / s
    argmax = targ.gather(0, tmax.argmax(dim=0, keepdim=True))[0].long()
    sample = garg.gather(0, gmax.argmax(dim=0, keepdim=True))[0].long()
    return FusedHeadResult(argmax, entropy, sample, (acc / s[:, None]).to(embed.dtype) * embed_scale)
