"""The two denoise heads agree; the counter-based RNG draws from the right distributions."""

from __future__ import annotations

import pytest
import torch

from dgemma_helpers.head import materialized_head, tiled_head
from dgemma_helpers.rng import CounterRNG, gumbel, gumbel_argmax, mix32, noise_ids, seed_words, stream_keys


def mix32_int(x: int) -> int:
    """Wellons' lowbias32 on a Python int: the reference for the tensor and Triton versions."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def keys(seed: int, tag: int = 7, rows: int = 1) -> torch.Tensor:
    return stream_keys(torch.tensor([seed_words(seed, r) for r in range(rows)]), tag, 0, 0)


@pytest.mark.parametrize("shape", ["plain", "confident"])
@pytest.mark.parametrize("temperature", [0.8, 0.4, 0.05])
@pytest.mark.parametrize("tile", [128, 300, 1000, None])
def test_tiled_head_matches_materialized(checkpoint, ours, shape, temperature, tile):
    model = ours(checkpoint(shape))
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, model.config.canvas_length, model.config.hidden_size, generator=g) * 3
    with torch.no_grad():
        full = materialized_head(model, hidden, temperature)
        tiled = tiled_head(model, hidden, temperature, tile)
    assert torch.equal(tiled.argmax, full.argmax)
    assert torch.allclose(tiled.entropy, full.entropy, atol=2e-5, rtol=1e-4)
    soft, full_soft = tiled.soft_input(model), full.soft_input(model)
    assert ((soft - full_soft).norm() / full_soft.norm()).item() < 1e-5
    # Entropy is computed without cancellation: tiny entropies stay accurate, never negative.
    assert (tiled.entropy >= 0).all()
    flat = torch.tensor([0, 5, 17, 31])
    assert torch.allclose(picked(tiled, model, flat), picked(full, model, flat), rtol=1e-5, atol=1e-4)


def picked(head, model, flat):
    z, rows = head.tempered_logits(model, flat)
    return z if rows is None else z[rows]


@pytest.mark.parametrize("scale", [0.5, 5.0, 40.0, 300.0])
def test_gumbel_argmax_is_the_full_gumbel_max(scale):
    """Hashing only the tokens that can win gives the draw of hashing them all, ties included (the
    first maximum), for flat and for peaked rows, with a row subset, across row blocks."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(40, 3000, generator=g) * scale
    z[5] = 2.0  # a row of exact ties: the Gumbel draws decide
    z[7, 10] = z[7, 20] = z[7].max() + 50  # two tied favourites far ahead
    rows = torch.tensor([0, 5, 7, 9, 11, 12, 13, 30, 39, 38, 1, 2, 3, 4, 6, 8, 10, 14, 15])
    k = keys(9, rows=len(rows))
    positions = rows * 3 % 64
    full = torch.argmax(z[rows] + gumbel(k, positions, z.shape[1]), dim=-1)
    assert torch.equal(gumbel_argmax(z, k, positions, rows, block=4), full)
    assert torch.equal(gumbel_argmax(z[rows], k, positions), full)


def test_entropy_of_known_distributions(checkpoint, ours):
    """Hidden states along embedding rows give near one-hot distributions (below the softcap's
    saturation, where large logits would tie)."""
    model = ours(checkpoint("confident"))
    E = model.embed_tokens.weight
    hidden = (E[:16] * 0.3)[None]
    with torch.no_grad():
        for head in (materialized_head(model, hidden, 0.5), tiled_head(model, hidden, 0.5, 256)):
            assert torch.equal(head.argmax[0], torch.arange(16))
            assert (head.entropy < 0.05).all() and head.entropy.median() < 1e-5


def test_mix32_matches_the_integer_reference():
    xs = [0, 1, 2, 12345, 0xFFFFFFFF, 0x80000000, 987654321]
    assert mix32(torch.tensor(xs)).tolist() == [mix32_int(x) for x in xs]
    assert len({mix32_int(x) for x in range(10000)}) == 10000  # a bijection on these inputs


def test_noise_ids_are_uniform_and_keyed():
    ids = noise_ids(keys(1, rows=64), 256, 10)
    counts = torch.bincount(ids.flatten(), minlength=10).float()
    expected = ids.numel() / 10
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001
    assert ids.min() >= 0 and ids.max() < 10
    again = noise_ids(keys(1, rows=64), 256, 10)
    other = noise_ids(keys(2, rows=64), 256, 10)
    assert torch.equal(ids, again) and not torch.equal(ids, other)


def test_gumbel_max_samples_follow_softmax():
    """Chi-square test: argmax(logits + Gumbel) over many keyed draws matches softmax(logits)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    probs = torch.softmax(logits, dim=0)
    n = 20000
    positions = torch.arange(n)
    draws = torch.argmax(logits[None, :] + gumbel(keys(3, tag=1), positions, 6), dim=-1)
    counts = torch.bincount(draws, minlength=6).double()
    expected = probs.double() * n
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 20.5  # 5 degrees of freedom, p = 0.001


def test_counter_rng_samples_only_accepted_positions(checkpoint, ours):
    model = ours(checkpoint("plain"))
    hidden = torch.randn(1, model.config.canvas_length, model.config.hidden_size)
    with torch.no_grad():
        head = tiled_head(model, hidden, 0.7)
    accepted = torch.zeros(1, model.config.canvas_length, dtype=torch.bool)
    accepted[0, [1, 4]] = True
    rng = CounterRNG(seed=5, batch=1)
    sampled = rng.sample(model, head, accepted, canvas=0, step=0)
    assert sampled.shape == accepted.shape and (sampled[~accepted] == 0).all()
    assert torch.equal(sampled, rng.sample(model, head, accepted, canvas=0, step=0))  # a pure function
    assert not torch.equal(sampled, rng.sample(model, head, accepted, canvas=0, step=1))


def test_uniform_from_hash_is_open_interval():
    from dgemma_helpers.rng import uniform_from_hash

    u = uniform_from_hash(torch.tensor([0, 0xFFFFFFFF]))
    assert 0 < u[0] < 1e-7 and 1 - 1e-7 < u[1] < 1
    g = -torch.log(-torch.log(u))
    assert torch.isfinite(g).all()


def test_every_int_is_its_own_seed():
    """Hashed whole: no folding to 32 or 64 bits, negative seeds distinct, rows keyed apart."""
    seeds = [0, 1, 2**32, 1 + 2**32, 7, 7 << 32, -1, 2**64 - 1, 2**64, -(2**64), 10**40, -(10**40)]
    words = {tuple(seed_words(s)) for s in seeds}
    assert len(words) == len(seeds)
    assert seed_words(5, 0) == seed_words(5) and seed_words(5, 1) != seed_words(5)
    assert len({tuple(seed_words(s, r)) for s in range(50) for r in range(8)}) == 400
