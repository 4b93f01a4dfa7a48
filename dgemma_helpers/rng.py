"""Where the sampler's random numbers come from. Two sources, one interface:

CounterRNG (default): every random number is a hash of (row seed, stream, canvas, step, position
    in the canvas, token), so a draw needs no generator state. Samples use the Gumbel-max trick,
    argmax(z / T + Gumbel) ~ softmax(z / T), and are drawn only at the positions the entropy bound
    accepts (every other position is renoised anyway). The fused Triton head computes the same
    hash, so the GPU path and this one agree draw for draw.
TransformersRNG: a private torch.Generator consumed in exactly the order and shapes of
    transformers' `generate` (randint canvas; per step multinomial over every position, randint
    renoise). Seeded like `torch.manual_seed(seed)` before the reference call, it reproduces the
    reference's tokens; it costs a full-vocabulary multinomial per step.

Seeds. Any Python int is a seed of its own: it is hashed whole (BLAKE2b, 128 bits), so 1 and 2**32,
or 7 and 7 << 32, or -1 and 2**64 - 1, give different text. Each batch row draws from its own seed
words, keyed on its position in the canvas and never on its place in the batch:
  seed=[s0, s1, ...]  row i draws from s_i alone: it equals a batch-of-one run with seed=s_i;
  seed=s (one int)    row i draws from (s, i): rows differ even for identical prompts, and row 0
                      equals a batch-of-one run with seed=s.
The stream keys are computed from the seed words by tensor ops on the device, so a CUDA graph can
replay them with a new canvas and step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from dgemma_kernels.hash_ref import gumbel, gumbel_argmax, mix32, uniform_from_hash

from .errors import InputError

NOISE_STREAM, SAMPLE_STREAM = 0x6E6F6973, 0x73616D70  # stream tags: "nois", "samp"
TORCH_SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 .. 2**64 - 1

__all__ = ["CounterRNG", "NOISE_STREAM", "SAMPLE_STREAM", "TransformersRNG", "gumbel", "gumbel_argmax", "make_rng", "mix32",
           "noise_ids", "row_seeds", "seed_words", "stream_keys", "uniform_from_hash"]


def seed_words(seed: int, row: int = 0) -> list[int]:
    """Four 32-bit words of BLAKE2b(seed, row): distinct for every pair of Python ints."""
    body = seed.to_bytes((seed.bit_length() + 8) // 8 or 1, "little", signed=True)
    data = len(body).to_bytes(8, "little") + body + (row.to_bytes(8, "little") if row else b"")
    digest = hashlib.blake2b(data, digest_size=16).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 16, 4)]


def row_seeds(seed: int | Sequence[int] | None, batch: int) -> list[int] | int:
    """Checks `seed` against the batch: an int (or None: fresh entropy) or one int per row."""
    if seed is None:
        return int(torch.Generator().seed())  # fresh entropy, never the global RNG
    if isinstance(seed, bool) or not isinstance(seed, (int, list, tuple)):
        raise InputError(f"seed must be an int, a list of ints (one per prompt) or None; got {type(seed).__name__}.")
    if isinstance(seed, int):
        return seed
    if len(seed) != batch or any(isinstance(s, bool) or not isinstance(s, int) for s in seed):
        raise InputError(f"seed as a list needs one int per prompt: {batch} int(s) for this batch; got {list(seed)!r}.")
    return list(seed)


def stream_keys(words: torch.Tensor, tag: int, canvas: int | torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """A 32-bit key per row [B] for (stream, canvas, step), from the rows' seed words [B, 4]
    (int64 holding uint32). Tensor ops only: `canvas` and `step` may be device scalars."""
    k = mix32(words[:, 0] ^ tag)
    for w in (words[:, 1], words[:, 2], words[:, 3]):
        k = mix32(k ^ w)
    return mix32(mix32(k ^ canvas) ^ step)


def noise_ids(keys: torch.Tensor, length: int, vocab: int) -> torch.Tensor:
    """Uniform random token ids [B, length], row b from keys[b]."""
    h = mix32(torch.arange(length, device=keys.device)[None, :] ^ keys[:, None])
    return (h * vocab) >> 32  # multiply-shift: uniform over 0..vocab-1


class CounterRNG:
    name = "counter"
    needs_probs = False

    def __init__(self, seed: int | Sequence[int], batch: int, device: torch.device | str = "cpu") -> None:
        self.seed = seed
        rows = [seed_words(s) for s in seed] if isinstance(seed, (list, tuple)) else \
            [seed_words(seed, r) for r in range(batch)]
        self.words = torch.tensor(rows, dtype=torch.long, device=device)  # [B, 4]

    def keys(self, tag: int, canvas: int | torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
        return stream_keys(self.words, tag, canvas, step)

    def canvas(self, canvas: int, length: int, vocab: int) -> torch.Tensor:
        """Canvas `canvas`'s starting noise [B, length]."""
        return noise_ids(self.keys(NOISE_STREAM, canvas, 0), length, vocab)

    def sample(self, model, head, accepted: torch.Tensor, canvas: int, step: int) -> torch.Tensor:
        """Token ids [B, L] drawn from the head's tempered distribution where `accepted` (else 0)."""
        B, L = accepted.shape
        flat = accepted.reshape(-1).nonzero().squeeze(1)
        out = torch.zeros(B * L, dtype=torch.long, device=accepted.device)
        z, rows = head.tempered_logits(model, flat)
        keys = self.keys(SAMPLE_STREAM, canvas, step)[flat // L]
        out[flat] = gumbel_argmax(z, keys, flat % L, rows)
        return out.view(B, L)

    def renoise(self, canvas: int, step: int, length: int, vocab: int) -> torch.Tensor:
        """The fresh noise [B, length] that step `step` puts at the positions it does not accept."""
        return noise_ids(self.keys(NOISE_STREAM, canvas, step), length, vocab)


class TransformersRNG:
    name = "transformers"
    needs_probs = True

    def __init__(self, seed: int, batch: int, device: torch.device) -> None:
        self.batch, self.device = batch, device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    # transformers draws in this order from one generator: the coordinates are the order itself.
    def canvas(self, canvas: int, length: int, vocab: int) -> torch.Tensor:
        return torch.randint(0, vocab, (self.batch, length), device=self.device, generator=self.generator)

    def sample(self, model, head, accepted: torch.Tensor, canvas: int, step: int) -> torch.Tensor:
        """Draws at every position, as transformers does (it needs the materialized head)."""
        B, L, V = head.probs.shape
        return torch.multinomial(head.probs.view(-1, V), num_samples=1, generator=self.generator).view(B, L)

    def renoise(self, canvas: int, step: int, length: int, vocab: int) -> torch.Tensor:
        return torch.randint(0, vocab, (self.batch, length), device=self.device, generator=self.generator)


def make_rng(kind: str, seed: int | Sequence[int] | None, batch: int,
             device: torch.device) -> CounterRNG | TransformersRNG:
    if kind not in ("counter", "transformers"):
        raise InputError(f"rng must be 'counter' (fast, the default) or 'transformers' (replays the reference's "
                         f"random draws); got {kind!r}.")
    seed = row_seeds(seed, batch)
    if kind == "counter":
        return CounterRNG(seed, batch, device)
    if isinstance(seed, list):
        raise InputError("rng='transformers' draws the whole batch from one generator, as transformers does: give "
                         "one int seed, or rng='counter' for a seed per prompt.")
    if not 0 <= seed < TORCH_SEED_LIMIT:
        raise InputError(f"rng='transformers' seeds a torch.Generator, which takes 0..2**64-1; got {seed} "
                         "(rng='counter' takes any int).")
    return TransformersRNG(seed, batch, device)
