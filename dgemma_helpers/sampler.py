"""The block-diffusion sampler's rules, as small pure functions on tensors.

Every rule is transformers' (EntropyBoundSampler, StableAndConfidentStoppingCriteria,
_finalize_canvas), written so each can be tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


def entropy_bound_accept(entropy: torch.Tensor, entropy_bound: float) -> torch.Tensor:
    """Accept the k lowest-entropy positions with sum(H_1..H_k) - max(H_1..H_k) <= entropy_bound.

    The left side bounds the mutual information among the accepted tokens, so the k tokens are
    close to independent and can be committed together (https://arxiv.org/abs/2505.24857).
    At least one position is accepted per row, since sum - max of one entropy is 0.
    """
    sorted_entropy, order = torch.sort(entropy, dim=-1)
    # Sorted ascending, so each prefix's maximum is its last element.
    keep = torch.cumsum(sorted_entropy, dim=-1) - sorted_entropy <= entropy_bound
    return torch.zeros_like(keep).scatter(-1, order, keep)


class StableAndConfident:
    """Early stop per row: the argmax canvas is unchanged for `stability_threshold` steps and the
    mean entropy of the tempered logits is below `confidence_threshold` (0 never stops early)."""

    def __init__(self, stability_threshold: int, confidence_threshold: float) -> None:
        self.stability_threshold = stability_threshold
        self.confidence_threshold = confidence_threshold
        self.history: torch.Tensor | None = None

    def reset(self) -> None:
        self.history = None

    def __call__(self, argmax_canvas: torch.Tensor, mean_entropy: torch.Tensor) -> torch.Tensor:
        if self.stability_threshold == 0:
            stable = torch.ones_like(mean_entropy, dtype=torch.bool)
        else:
            if self.history is None:
                self.history = torch.full((self.stability_threshold, *argmax_canvas.shape), -1,
                                          dtype=argmax_canvas.dtype, device=argmax_canvas.device)
            stable = (self.history == argmax_canvas).all(dim=-1).all(dim=0)
            self.history = torch.roll(self.history, shifts=-1, dims=0)
            self.history[-1] = argmax_canvas
        return stable & (mean_entropy < self.confidence_threshold)


def finalize_canvas(canvas: torch.Tensor, finished: torch.Tensor, eos_ids: torch.Tensor | None,
                    pad_id: int, out_of_length: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply end-of-sequence rules to a committed canvas [B, L].

    Rows that finished on an earlier canvas become all pad; in a row that meets its first EOS here,
    every token after that EOS becomes pad. Returns the canvas and the updated `finished` [B].
    """
    canvas = canvas.clone()
    canvas[finished] = pad_id
    if eos_ids is not None and eos_ids.numel():
        is_eos = torch.isin(canvas, eos_ids)
        seen = is_eos.cumsum(dim=-1)
        after_first_eos = (seen > 0) & ~((seen == 1) & is_eos)
        canvas[after_first_eos] = pad_id
        finished = finished | is_eos.any(dim=-1)
    if out_of_length:
        finished = torch.ones_like(finished)
    return canvas, finished


class RoundInput(Protocol):
    """What a round starts from: the live canvas state (generation.CanvasState, or the fast step's
    static buffers)."""

    canvas: torch.Tensor  # [B, L]
    argmax: torch.Tensor  # [B, L]
    done: torch.Tensor  # [B]
    pins: torch.Tensor | None  # [B, L] held-fixed positions, or None
    pinned_ids: torch.Tensor | None


@dataclass
class RoundOutput:
    canvas: torch.Tensor  # [B, L] accepted samples + fresh noise: what the denoiser reads next
    argmax: torch.Tensor  # [B, L]
    done: torch.Tensor  # [B]
    accepted: torch.Tensor  # [B, L], pinned positions excluded
    entropy: torch.Tensor  # [B, L], 0 at pinned positions


def update_canvas(prev: RoundInput, entropy: torch.Tensor, argmax: torch.Tensor,
                  sample: Callable[[torch.Tensor], torch.Tensor], noise: Callable[[], torch.Tensor],
                  entropy_bound: float, stop: StableAndConfident) -> RoundOutput:
    """One round's sampler rules, given the denoise head's entropy and argmax: the entropy bound picks
    the accepted positions, which take `sample(accepted)`; every other position takes `noise()` (drawn
    after the samples: transformers' RNG order); pins hold their ids; rows already done keep their
    canvas and argmax (their self-conditioning input needs no keeping: it only feeds their own next
    pass, whose results they drop); the adaptive stop updates. Both denoising steps (generation.TorchStep and
    fast.step.FastStep) run it. No host synchronisation: the fast path captures it in a CUDA graph."""
    pins = prev.pins
    if pins is not None:
        entropy = entropy.masked_fill(pins, 0.0)  # pinned tokens are known: they use none of the bound
    accepted = entropy_bound_accept(entropy, entropy_bound)
    sampled = sample(accepted)
    canvas = torch.where(accepted, sampled, noise())
    if pins is not None:
        canvas = torch.where(pins, prev.pinned_ids, canvas)
        argmax = torch.where(pins, prev.pinned_ids, argmax)
        accepted = accepted & ~pins
        mean_entropy = entropy.sum(-1) / (~pins).sum(-1).clamp(min=1)
    else:
        mean_entropy = entropy.mean(-1)
    keep = prev.done[:, None]  # rows that stopped earlier keep everything
    argmax = torch.where(keep, prev.argmax, argmax)
    canvas = torch.where(keep, prev.canvas, canvas)
    done = prev.done | stop(argmax, mean_entropy)
    return RoundOutput(canvas, argmax, done, accepted, entropy)
