"""Where the sampler's random numbers come from. Two sources, one interface:

CounterRNG (default): every random number is a hash of (seed, canvas, step, position, token), so
    a draw needs no generator state. Samples use the Gumbel-max trick,
    argmax(z / T + Gumbel) ~ softmax(z / T), and are drawn only at the positions the entropy bound
    accepts (every other position is renoised anyway). The fused Triton head computes the same
    hash, so the GPU path and this one agree draw for draw.
TransformersRNG: a private torch.Generator consumed in exactly the order and shapes of
    transformers' `generate` (randint canvas; per step multinomial over every position, randint
    renoise). Seeded like `torch.manual_seed(seed)` before the reference call, it reproduces the
    reference's tokens; it costs a full-vocabulary multinomial per step.
"""

from __future__ import annotations

import torch

from kernels.hash_ref import MASK32, gumbel, mix32, uniform_from_hash

NOISE_STREAM, SAMPLE_STREAM = 0x6E6F6973, 0x73616D70  # stream tags: "nois", "samp"


def mix32_int(x: int) -> int:
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def stream_key(seed: int, tag: int, canvas: int, step: int) -> int:
    """A 32-bit key per (seed, stream, canvas, step)."""
    folded = (seed ^ (seed >> 32)) & MASK32
    return mix32_int(mix32_int(mix32_int(folded ^ tag) ^ canvas) ^ step)


def noise_ids(key: int, batch: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
    """Uniform random token ids [batch, length]."""
    h = mix32(torch.arange(batch * length, device=device) ^ key)
    return ((h * vocab) >> 32).view(batch, length)  # multiply-shift: uniform over 0..vocab-1


class CounterRNG:
    name = "counter"
    needs_probs = False

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def canvas(self, canvas: int, batch: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
        return noise_ids(stream_key(self.seed, NOISE_STREAM, canvas, 0), batch, length, vocab, device)

    def sample(self, model, head, accepted: torch.Tensor, canvas: int, step: int) -> torch.Tensor:
        """Token ids [B, L] drawn from the head's tempered distribution where `accepted` (else 0)."""
        B, L = accepted.shape
        flat = accepted.reshape(-1).nonzero().squeeze(1)
        out = torch.zeros(B * L, dtype=torch.long, device=accepted.device)
        rows = head.processed_rows(model, flat)
        out[flat] = torch.argmax(rows + gumbel(stream_key(self.seed, SAMPLE_STREAM, canvas, step), flat, rows.shape[-1]),
                                 dim=-1)
        return out.view(B, L)

    def renoise(self, canvas: int, step: int, batch: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
        return noise_ids(stream_key(self.seed, NOISE_STREAM, canvas, step), batch, length, vocab, device)


class TransformersRNG:
    name = "transformers"
    needs_probs = True

    def __init__(self, seed: int, device: torch.device) -> None:
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def canvas(self, canvas: int, batch: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, length), device=device, generator=self.generator)

    def sample(self, model, head, accepted: torch.Tensor, canvas: int, step: int) -> torch.Tensor:
        """Draws at every position, as transformers does (it needs the materialized head)."""
        B, L, V = head.probs.shape
        return torch.multinomial(head.probs.view(-1, V), num_samples=1, generator=self.generator).view(B, L)

    def renoise(self, canvas: int, step: int, batch: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, length), device=device, generator=self.generator)


def make_rng(kind: str, seed: int | None, device: torch.device) -> CounterRNG | TransformersRNG:
    if seed is None:
        seed = int(torch.Generator().seed())  # fresh entropy, never the global RNG
    if kind == "counter":
        return CounterRNG(seed)
    if kind == "transformers":
        return TransformersRNG(seed, device)
    from .errors import InputError

    raise InputError(f"rng must be 'counter' (fast, the default) or 'transformers' (replays the reference's "
                     f"random draws); got {kind!r}.")
