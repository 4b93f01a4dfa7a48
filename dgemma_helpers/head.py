"""The denoise head: final hidden states -> tied LM head -> softcap -> temperature, reduced to what
a denoising round needs per canvas position: the argmax, the entropy of the tempered
distribution, and the self-conditioning soft embedding softmax(z) @ E * sqrt(hidden).

Two ways to compute it, same results up to float rounding:
  materialized_head  builds the [batch, canvas, vocab] tempered logits (what transformers does;
                     the exact path, and the one that can hand out full probabilities);
  tiled_head         walks the vocabulary in tiles with an online softmax (as flash attention
                     does over keys), so no [batch, canvas, vocab] tensor ever exists: on a CPU
                     each tile stays in cache, and it is the algorithm of the fused Triton kernel
                     in kernels/denoise_head.py.
Samples are drawn afterwards, only at the accepted positions (`processed_rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.denoise_head_ref import LOG_PROB_FLOOR

from .model import DiffusionGemma



@dataclass
class HeadOutput:
    argmax: torch.Tensor  # [B, L]
    entropy: torch.Tensor  # [B, L] of softmax(processed), float32
    soft: torch.Tensor  # [B, L, hidden] self-conditioning input for the next round
    hidden: torch.Tensor  # [B, L, hidden] the denoiser output these came from
    temperature: float
    processed: torch.Tensor | None = None  # [B, L, V] tempered logits (materialized head only)
    probs: torch.Tensor | None = None  # [B, L, V] float32 (materialized head only)

    def processed_rows(self, model: DiffusionGemma, flat: torch.Tensor) -> torch.Tensor:
        """Tempered logits [k, V] of flat positions (row * L + position)."""
        if self.processed is not None:
            return self.processed.reshape(-1, self.processed.shape[-1])[flat]
        rows = self.hidden.reshape(-1, self.hidden.shape[-1])[flat]
        return model.logits(rows).div_(self.temperature)


def materialized_head(model: DiffusionGemma, hidden: torch.Tensor, temperature: float) -> HeadOutput:
    processed = model.logits(hidden).div_(temperature)
    log_probs = torch.log_softmax(processed, dim=-1)
    probs = F.threshold(log_probs, LOG_PROB_FLOOR, -math.inf).exp_()
    entropy = -(probs * log_probs).sum(-1)
    argmax = processed.max(dim=-1).indices  # argmax's index, from a faster kernel
    # transformers rounds the self-conditioning logits to the model dtype before its softmax.
    soft = model.soft_embedding(processed.to(model.dtype), probs if model.dtype == torch.float32 else None)
    return HeadOutput(argmax, entropy, soft, hidden, temperature, processed, probs)


def tiled_head(model: DiffusionGemma, hidden: torch.Tensor, temperature: float, tile: int | None = None) -> HeadOutput:
    """Online softmax over vocabulary tiles. Per position it keeps the running max m, the sum
    s = sum(e^(z-m)), t = sum(e^(z-m) * (z-m)) and acc = sum(e^(z-m) * E_v), rescaling all three
    whenever m grows; then entropy = log s - t / s and soft = acc / s * sqrt(hidden)."""
    E = model.embed_tokens.weight
    cap = model.config.final_logit_softcapping
    shape = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1]).float() / cap  # fold the softcap's 1/cap into the small side
    n = h.shape[0]
    if tile is None:  # about 1 MB of float32 logits per tile, to stay in a CPU core's L2 cache
        tile = max(256, (1 << 20) // (4 * n) // 256 * 256)
    m = torch.full((n,), -1e30, device=h.device)  # finite, so the first rescale is 0 * finite
    s = torch.zeros(n, device=h.device)
    t = torch.zeros(n, device=h.device)
    acc = torch.zeros(n, E.shape[1], device=h.device)
    best = torch.zeros(n, dtype=torch.long, device=h.device)
    for start in range(0, E.shape[0], tile):
        e_tile = E[start:start + tile].float()
        z = (h @ e_tile.T).tanh_().mul_(cap / temperature)
        tile_max, tile_arg = z.max(dim=-1)
        best = torch.where(tile_max > m, tile_arg + start, best)  # strict: the first maximum wins
        new_m = torch.maximum(m, tile_max)
        rescale = torch.exp(m - new_m)
        z.sub_(new_m[:, None])
        p = F.threshold(z, LOG_PROB_FLOOR, -math.inf).exp_()
        t = rescale * (t + s * (m - new_m)) + (p * z).sum(-1)
        s = rescale * s + p.sum(-1)
        acc = acc * rescale[:, None] + p @ e_tile
        m = new_m
    entropy = torch.log(s) - t / s
    soft = (acc / s[:, None]).to(E.dtype) * model.embed_scale
    return HeadOutput(best.view(shape), entropy.view(shape), soft.view(*shape, -1), hidden, temperature)
