"""The training objective: uniform-state block diffusion plus the encoder's causal-LM loss.

For each sequence x (clean tokens [B, S]) and a block start b (one per example):
  1. the encoder reads x causally: its logits give the causal-LM loss, and its keys/values are
     the context the denoiser reads (exactly what the KV cache holds at inference);
  2. the block x[b : b + C] is corrupted: with t ~ U(0.001, 1) per example, each position is
     replaced by a uniform random token with probability t (no mask token);
  3. pass 1 (no gradient) denoises the noisy block; pass 2 denoises it again, with pass 1's soft
     prediction as self-conditioning input for a random share p of the examples;
  4. loss = cross-entropy of pass 2 over every block position (noisy and clean alike, no 1/t
     weight; fine-tuning counts only the supervised ones) + the causal-LM cross-entropy.
The denoiser sees earlier text only through the encoder's keys/values, restricted per example to
positions < b (in sliding layers to the last sliding_window - 1 of them, as the inference ring keeps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import FULL, SLIDING, ModelConfig
from ..model import DiffusionGemma
from .data import Batch


class TrainingContext:
    """The model's cache protocol for training: nothing is stored in place, so autograd can
    flow from the denoiser's loss back through the encoder's keys and values."""

    def __init__(self, config: ModelConfig, block_start: torch.Tensor) -> None:
        self.config = config
        self.block_start = block_start  # [B]
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self._mode = None
        self._seq_len = 0

    def begin_encode(self, n: int, valid: torch.Tensor | None = None):
        self._mode, self._seq_len = "encode", n
        pos = torch.arange(n, device=self.block_start.device)
        causal = pos[None, :] <= pos[:, None]
        sliding = causal & (pos[None, :] > pos[:, None] - self.config.sliding_window)
        return pos, {FULL: causal[None, None], SLIDING: sliding[None, None]}

    def begin_denoise(self):
        C, S = self.config.canvas_length, self._seq_len
        device = self.block_start.device
        self._mode = "denoise"
        start = self.block_start[:, None]
        positions = start + torch.arange(C, device=device)  # [B, C]
        key_pos = torch.arange(S, device=device)[None, :]
        prefix = key_pos < start  # [B, S]
        window = prefix & (key_pos >= start - (self.config.sliding_window - 1))
        canvas = torch.ones(len(start), C, dtype=torch.bool, device=device)
        masks = {FULL: torch.cat([prefix, canvas], 1)[:, None, None, :],
                 SLIDING: torch.cat([window, canvas], 1)[:, None, None, :]}
        return positions, masks

    def kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mode == "encode":
            self.keys[layer], self.values[layer] = k, v
            return k, v
        return torch.cat([self.keys[layer], k], dim=2), torch.cat([self.values[layer], v], dim=2)

    def shared_kv(self, layer: int, v: torch.Tensor) -> torch.Tensor:
        if self._mode == "encode":
            self.values[layer] = v
            return v
        return torch.cat([self.values[layer], v], dim=2)

    def key_positions(self) -> torch.Tensor:
        device = self.block_start.device
        sequence = torch.arange(self._seq_len, device=device)
        if self._mode == "encode":
            return sequence
        canvas = self.block_start[:, None] + torch.arange(self.config.canvas_length, device=device)
        return torch.cat([sequence.expand(len(canvas), -1), canvas], dim=1)  # [B, S + C]

    def end(self) -> None:
        self._mode = None if self._mode == "denoise" else self._mode


@dataclass
class LossParts:
    total: torch.Tensor
    diffusion: torch.Tensor  # mean cross-entropy over the block
    lm: torch.Tensor  # encoder causal-LM cross-entropy


def corrupt(block: torch.Tensor, t: torch.Tensor, vocab: int, generator: torch.Generator | None) -> torch.Tensor:
    """Replace each token by a uniform random one with probability t (per example)."""
    replace = torch.rand(block.shape, generator=generator, device=block.device) < t[:, None]
    noise = torch.randint(0, vocab, block.shape, generator=generator, device=block.device)
    return torch.where(replace, noise, block)


def diffusion_loss(model: DiffusionGemma, tokens: torch.Tensor, block_start: torch.Tensor, *,
                   generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                   self_conditioning_p: float = 0.5, lm_weight: float = 1.0,
                   lm_mask: torch.Tensor | None = None, block_mask: torch.Tensor | None = None) -> LossParts:
    """The objective above for clean `tokens` [B, S] and per-example `block_start` [B]. `t` fixes the
    noise level per example (evaluation); `lm_mask` [B, S-1] and `block_mask` [B, C] select the targets
    that count in the causal-LM loss and in the diffusion loss's flat mean (default: all)."""
    config = model.config
    B, S = tokens.shape
    C, V = config.canvas_length, config.vocab_size
    if bool((block_start < 1).any()) or bool((block_start + C > S).any()):
        raise ValueError(f"block starts must lie in 1..{S - C} for sequences of {S} tokens and a canvas of {C}.")
    device = tokens.device
    if t is None:
        t = torch.rand(B, generator=generator, device=device) * 0.999 + 0.001  # U(0.001, 1)

    ctx = TrainingContext(config, block_start)
    hidden = model.encode(tokens, ctx)
    lm_logits = model.logits(hidden[:, :-1])
    lm_terms = F.cross_entropy(lm_logits.reshape(-1, V), tokens[:, 1:].reshape(-1), reduction="none")
    lm = lm_terms.mean() if lm_mask is None else (lm_terms * lm_mask.reshape(-1)).sum() / lm_mask.sum().clamp(min=1)

    clean = tokens.gather(1, block_start[:, None] + torch.arange(C, device=device))
    noisy = corrupt(clean, t, V, generator)
    with torch.no_grad():
        soft = model.soft_embedding(model.logits(model.denoise(noisy, ctx)))
    use_sc = torch.rand(B, generator=generator, device=device) < self_conditioning_p
    logits = model.logits(model.denoise(noisy, ctx, soft, soft_mask=use_sc))
    if block_mask is None:
        diffusion = F.cross_entropy(logits.reshape(-1, V), clean.reshape(-1))
    else:
        terms = F.cross_entropy(logits.reshape(-1, V), clean.reshape(-1), reduction="none")
        diffusion = (terms * block_mask.reshape(-1)).sum() / block_mask.sum().clamp(min=1)
    return LossParts(total=diffusion + lm_weight * lm, diffusion=diffusion, lm=lm)


def batch_loss(model: DiffusionGemma, batch: Batch, **kwargs) -> LossParts:
    """diffusion_loss on a Batch, moved to the model's device."""
    dev = model.device
    block_mask = None if batch.block_mask is None else batch.block_mask.to(dev)
    return diffusion_loss(model, batch.tokens.to(dev), batch.block_start.to(dev), lm_mask=batch.lm_mask.to(dev),
                          block_mask=block_mask, **kwargs)


def heldout_losses(model: DiffusionGemma, batches: list[Batch], noise_levels, seed: int) -> tuple[dict, float]:
    """The mean diffusion cross-entropy per noise level, and the causal-LM loss, with the same draws at
    every call (a fresh generator from `seed` per batch)."""
    was_training = model.training
    model.eval()
    ce, lm = {}, float("nan")
    with torch.no_grad():
        for t in noise_levels:
            parts = [batch_loss(model, b, generator=torch.Generator(device=model.device).manual_seed(seed),
                                t=torch.full((len(b.tokens),), t, device=model.device)) for b in batches]
            ce[t] = sum(p.diffusion.item() for p in parts) / len(parts)
            lm = sum(p.lm.item() for p in parts) / len(parts)  # the same at every t: the encoder reads clean text
    model.train(was_training)
    return ce, lm
