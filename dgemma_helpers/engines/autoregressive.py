"""The autoregressive baseline: the checkpoint's own encoder, writing one token per forward pass.

The encoder is a causal transformer trained with a causal-LM loss beside the diffusion loss
(train/objective.py), so the same weights, KV cache and machine answer "what does diffusion buy over
one token at a time?". `continuation_nll` scores any text with the same causal head.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..cache import KVCache
from ..devices import synchronize
from ..errors import InputError
from ..generation import prefill, resolve_settings
from ..inputs import prompt_batch
from ..model import DiffusionGemma
from ..tokenizer import decode
from ..validate import is_int, is_number


@dataclass
class ARTimings:
    prefill_s: float = 0.0  # encoding the prompt (and the first token's logits)
    decode_s: float = 0.0  # every one-token forward pass after it
    first_token_s: float = 0.0  # from the call to the first new token
    first_canvas_s: float = 0.0  # from the call to the first canvas_length tokens (as much text as one canvas)
    total_s: float = 0.0


@dataclass
class ARResult:
    token_ids: torch.Tensor  # [B, n] new tokens, pad after each row's first EOS
    texts: list[str | None]
    prompt_ids: list[list[int]]
    num_forwards: int  # one-token forward passes the batch ran (the prefill not counted)
    timings: ARTimings = field(default_factory=ARTimings)

    @property
    def text(self) -> str | None:
        return self.texts[0]


@torch.inference_mode()
def generate_autoregressive(
    model: DiffusionGemma,
    prompt: str | Sequence[str] | None = None,
    *,
    messages: Sequence[dict] | Sequence[Sequence[dict]] | None = None,
    input_ids: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    eos_token_ids: Sequence[int] | None = None,
    seed: int | None = None,
    thinking: bool | None = None,
) -> ARResult:
    """Generate with the encoder alone, one token per forward pass, reusing the KV cache. `temperature=0`
    is greedy (see token_picker). Rows stop at their first EOS (pad after it); `eos_token_ids=()`
    ignores EOS and always writes max_new_tokens."""
    t_start = time.perf_counter()
    if seed is not None and not is_int(seed):
        raise InputError(f"seed must be an int or None (got {type(seed).__name__}).")
    device = model.device
    pick = token_picker(temperature, seed, device)
    settings = resolve_settings(model, dict(max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids))
    pad, n_new = settings.pad_token_id, settings.max_new_tokens
    ids, valid, prompt_ids = prompt_batch(model, prompt, messages, input_ids, thinking, pad)
    B, P = ids.shape
    if P + n_new > model.config.max_position_embeddings:
        raise InputError(f"the prompt ({P} tokens) plus {n_new} new tokens exceeds the model's context of "
                         f"{model.config.max_position_embeddings} tokens: shorten the prompt or max_new_tokens.")
    # The last new token is never encoded: nothing reads its keys.
    cache = KVCache(model.config, B, P + n_new - 1, device=device, dtype=model.dtype)
    timings = ARTimings()
    logits = model.logits(prefill(model, ids, cache, valid)[:, -1:])[:, 0]
    synchronize(device)
    timings.prefill_s = time.perf_counter() - t_start
    eos = torch.tensor(settings.eos_token_ids, device=device) if settings.eos_token_ids else None
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    forwards, t0 = 0, time.perf_counter()
    for i in range(n_new):  # one token per forward pass; a finished row writes pad
        token = torch.where(finished, pad, pick(logits))
        out.append(token)
        if eos is not None:
            finished = finished | torch.isin(token, eos)
        if i == 0:
            synchronize(device)
            timings.first_token_s = time.perf_counter() - t_start
        if i + 1 == model.config.canvas_length:
            synchronize(device)
            timings.first_canvas_s = time.perf_counter() - t_start
        if i + 1 == n_new or (eos is not None and bool(finished.all())):
            break
        logits = model.logits(model.encode(token[:, None], cache))[:, 0]
        forwards += 1
    synchronize(device)
    timings.decode_s = time.perf_counter() - t0
    if not timings.first_canvas_s:  # fewer tokens than a canvas: the whole output is the first chunk
        timings.first_canvas_s = time.perf_counter() - t_start
    tokens = torch.stack(out, dim=1).cpu()
    texts = [decode(model.tokenizer, [t for t in row if t != pad]) for row in tokens.tolist()]
    timings.total_s = time.perf_counter() - t_start
    return ARResult(token_ids=tokens, texts=texts, prompt_ids=prompt_ids, num_forwards=forwards, timings=timings)


def token_picker(temperature: float, seed: int | None, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """Greedy at temperature 0; above it, samples from softmax(logits / temperature) with a private
    generator (seeded, or fresh entropy: the global RNG stays untouched)."""
    if not is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise InputError(f"temperature must be a finite number >= 0, 0 meaning greedy (got {temperature!r}).")
    if temperature == 0:
        return lambda logits: logits.argmax(dim=-1)
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return lambda logits: torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)[:, 0]


@torch.inference_mode()
def continuation_nll(model: DiffusionGemma, prompt_ids: Sequence[Sequence[int]],
                     token_ids: torch.Tensor | Sequence[Sequence[int]], pad_token_id: int | None = None) -> float:
    """Mean negative log-likelihood per token (nats) of each row's new tokens (pads not scored) after its
    prompt, under the causal encoder: the "generative perplexity" of diffusion-LM papers."""
    pad = model.config.pad_token_id if pad_token_id is None else pad_token_id
    rows = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else [list(r) for r in token_ids]
    if len(rows) != len(prompt_ids):
        raise InputError(f"continuation_nll got {len(prompt_ids)} prompts but {len(rows)} rows of tokens.")
    total, count = 0.0, 0
    for prompt, new in zip(prompt_ids, rows):
        new = [t for t in new if t != pad]
        if not new or not prompt:
            continue
        seq = torch.tensor([list(prompt) + new], device=model.device)
        cache = KVCache(model.config, 1, seq.shape[1], device=model.device, dtype=model.dtype)
        first, last = len(prompt) - 1, seq.shape[1] - 1  # the positions that predict the new tokens

        def score(start: int, hidden: torch.Tensor) -> None:
            nonlocal total
            lo, hi = max(first, start), min(last, start + hidden.shape[1])
            if lo < hi:
                logits = model.logits(hidden[0, lo - start:hi - start])
                total += F.cross_entropy(logits, seq[0, lo + 1:hi + 1], reduction="sum").item()

        prefill(model, seq, cache, on_chunk=score)
        count += len(new)
    return total / count if count else float("nan")
