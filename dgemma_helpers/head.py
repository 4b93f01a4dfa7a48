"""The denoise head: final hidden states -> tied LM head -> softcap -> temperature, reduced to what
a round needs per canvas position: the argmax, the entropy of the tempered distribution, and the
next round's self-conditioning input, softmax(z) @ E * sqrt(hidden). Two ways, same results up to
float rounding; memory.fitting_head picks by memory:
  materialized_head  the [batch, canvas, vocab] tempered logits, as transformers builds them (exact,
                     and the one that can hand out full probabilities): one GEMM, then the
                     element-wise work a few canvas rows at a time so each block stays in cache.
                     Its soft input stays as probabilities, multiplied by E at the start of the next
                     round, so a canvas's last round never pays for that GEMM (as in transformers).
  tiled_head         an online softmax over vocabulary tiles (as flash attention does over keys):
                     no [batch, canvas, vocab] tensor, for batches whose logits do not fit; the
                     algorithm of the fused Triton kernel (kernels/denoise_head.py).
Samples are drawn afterwards, only at the accepted positions (`tempered_logits`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dgemma_kernels.denoise_head_ref import LOG_PROB_FLOOR

from .model import DiffusionGemma

FLOAT = 4
ROW_BLOCK_BYTES = 2 << 20  # float32 logits per block of rows: each thread's share stays in its core's L2
TILE_BYTES = 4 << 20  # float32 logits per vocabulary tile of the tiled head
# Vocabulary columns per logits GEMM call: a few calls beat one on CPUs (the output stays in its
# native row-major layout either way).
GEMM_COLUMNS = 32_768


@dataclass
class HeadOutput:
    argmax: torch.Tensor  # [B, L]
    entropy: torch.Tensor  # [B, L] of softmax(processed), float32
    hidden: torch.Tensor  # [B, L, hidden] the denoiser output these came from
    temperature: float
    soft: torch.Tensor | None = None  # [B, L, hidden] next round's self-conditioning input (tiled head)
    soft_probs: torch.Tensor | None = None  # [B, L, V] what it is made from (materialized head): soft_embedding(probs=)
    processed: torch.Tensor | None = None  # [B, L, V] tempered logits (materialized head only)
    probs: torch.Tensor | None = None  # [B, L, V] float32 (materialized head, when asked for)

    def tempered_logits(self, model: DiffusionGemma, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The tempered logits of flat positions (row * L + position), as (z, rows): z[rows] are
        theirs. The materialized head's are its own [B * L, V] logits, picked by `rows` without a
        copy; the tiled head recomputes them ([k, V], rows None)."""
        if self.processed is not None:
            return self.processed.view(-1, self.processed.shape[-1]), flat
        rows = self.hidden.reshape(-1, self.hidden.shape[-1])[flat]
        return model.logits(rows).div_(self.temperature), None

    def soft_input(self, model: DiffusionGemma) -> torch.Tensor:
        """The next round's self-conditioning input [B, L, hidden]."""
        return self.soft if self.soft is not None else model.soft_embedding(probs=self.soft_probs)


class HeadBuffers:
    """The materialized head's [rows, vocab] tensors, allocated once and reused by every round of a
    generate() call: a fresh 256 MB tensor costs its page faults on every touch of new memory (a
    fifth of the head's time on a CPU), a reused one nothing. The soft probabilities are read by the
    next round before its head overwrites them."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        t = self._tensors.get(name)
        if t is None or t.shape != shape or t.dtype != dtype or t.device != device:
            self._tensors.pop(name, None)  # free the old one first
            t = self._tensors[name] = torch.empty(shape, dtype=dtype, device=device)
        return t


def denoise_head(model: DiffusionGemma, hidden: torch.Tensor, temperature: float, kind: str = "materialized",
                 probs: bool = False, buffers: HeadBuffers | None = None) -> HeadOutput:
    if kind == "tiled":
        return tiled_head(model, hidden, temperature)
    return materialized_head(model, hidden, temperature, probs=probs, buffers=buffers)


def materialized_head(model: DiffusionGemma, hidden: torch.Tensor, temperature: float,
                      probs: bool = True, buffers: HeadBuffers | None = None) -> HeadOutput:
    """transformers' arithmetic: logits = hidden @ E^T in the weights' dtype, then float32 softcap
    and temperature; the self-conditioning softmax reads those logits rounded back to the weights'
    dtype, as transformers feeds them to its next decoder pass. `probs`: also keep the float32
    probabilities (transformers' multinomial, top-k). `buffers`: reuse these tensors (the outputs
    then live until the buffers' next use).

    Per row, with d = z - max(z) floored at LOG_PROB_FLOOR and e = exp(d): entropy = log(sum e) -
    sum(e d) / sum e, the probabilities e / sum e (what the tiled head and the fused kernel
    compute, without a log-softmax pass)."""
    E = model.embed_tokens.weight
    cap = model.config.final_logit_softcapping
    *shape, H = hidden.shape
    h = hidden.reshape(-1, H)
    n, V = h.shape[0], E.shape[0]
    new = (buffers or HeadBuffers()).get
    exact = E.dtype == torch.float32  # float32 weights: no rounding between logits and softmax
    processed = new("processed", (n, V), torch.float32, h.device)
    logits = processed if exact else new("logits", (n, V), h.dtype, h.device)
    for s in range(0, V, GEMM_COLUMNS):
        torch.mm(h, E[s:s + GEMM_COLUMNS].T, out=logits[:, s:s + GEMM_COLUMNS])
    full = new("probs", (n, V), torch.float32, h.device) if probs else None
    # float32 weights: the soft input is the probabilities themselves
    soft_probs = full if exact and probs else new("soft_probs", (n, V), E.dtype, h.device)
    argmax = torch.empty(n, dtype=torch.long, device=h.device)
    best = torch.empty(n, dtype=torch.float32, device=h.device)
    entropy = torch.empty(n, dtype=torch.float32, device=h.device)
    rows = max(1, ROW_BLOCK_BYTES // (FLOAT * V))
    for r in range(0, n, rows):
        z = processed[r:r + rows]
        if not exact:
            z.copy_(logits[r:r + rows])
        z.div_(cap).tanh_().mul_(cap).div_(temperature)
        torch.max(z, dim=-1, out=(best[r:r + rows], argmax[r:r + rows]))  # one pass: the first maximum's index
        d = (z - best[r:r + rows, None]).clamp_(min=LOG_PROB_FLOOR)
        e = torch.exp(d)
        total = e.sum(dim=-1)
        entropy[r:r + rows] = total.log() - torch.linalg.vecdot(e, d) / total
        if exact or full is not None:
            torch.mul(e, total.reciprocal_()[:, None], out=(full if full is not None else soft_probs)[r:r + rows])
        if not exact:  # transformers rounds these logits to the model dtype before its softmax
            soft_probs[r:r + rows] = torch.softmax(z.to(E.dtype), dim=-1, dtype=torch.float32)
    view = lambda t: t.view(*shape, *t.shape[1:])  # noqa: E731
    return HeadOutput(view(argmax), view(entropy), hidden, temperature, soft_probs=view(soft_probs),
                      processed=view(processed), probs=None if full is None else view(full))


def tiled_head(model: DiffusionGemma, hidden: torch.Tensor, temperature: float, tile: int | None = None) -> HeadOutput:
    """Online softmax over vocabulary tiles. Per position it keeps the running max m, the sum
    s = sum(e^(z-m)), t = sum(e^(z-m) * (z-m)) and acc = sum(e^(z-m) * E_v), rescaling all three
    whenever m grows; then entropy = log s - t / s and soft = acc / s * sqrt(hidden). The GEMMs run
    in the weights' dtype (as the materialized head's), their sums in float32."""
    E = model.embed_tokens.weight
    cap = model.config.final_logit_softcapping
    shape = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1]).to(E.dtype)
    n = h.shape[0]
    if tile is None:
        tile = max(256, TILE_BYTES // (FLOAT * n) // 256 * 256)
    m = torch.full((n,), -1e30, device=h.device)  # finite, so the first rescale is 0 * finite
    s = torch.zeros(n, device=h.device)
    t = torch.zeros(n, device=h.device)
    acc = torch.zeros(n, E.shape[1], device=h.device)
    best = torch.zeros(n, dtype=torch.long, device=h.device)
    for start in range(0, E.shape[0], tile):
        e_tile = E[start:start + tile]
        z = (h @ e_tile.T).float().div_(cap).tanh_().mul_(cap).div_(temperature)
        tile_max, tile_arg = z.max(dim=-1)
        best = torch.where(tile_max > m, tile_arg + start, best)  # strict: the first maximum wins
        new_m = torch.maximum(m, tile_max)
        rescale = torch.exp(m - new_m)
        z.sub_(new_m[:, None])
        p = F.threshold(z, LOG_PROB_FLOOR, -math.inf).exp_()
        t = rescale * (t + s * (m - new_m)) + (p * z).sum(-1)
        s = rescale * s + p.sum(-1)
        acc.mul_(rescale[:, None]).add_((p.to(E.dtype) @ e_tile).float())
        m = new_m
    entropy = torch.log(s) - t / s
    soft = (acc / s[:, None]).to(E.dtype) * model.embed_scale
    return HeadOutput(best.view(shape), entropy.view(shape), hidden, temperature, soft=soft.view(*shape, -1))
