"""A seed means exactly one thing: any Python int is its own seed, and a batch row draws from its
own seed, never from its place in the batch."""

from __future__ import annotations

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.errors import InputError


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    """The fast path with the kernels' PyTorch references, which take float64 (the Triton kernels,
    interpreted where another test module set TRITON_INTERPRET, take bf16/fp16/fp32)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(scope="module")
def model64(checkpoint):
    """float64, so that a batch and a batch of one round alike and only the seeds can differ."""
    return dg.load_model(checkpoint("plain"), device="cpu", dtype="float32").to(torch.float64)


def run(model, ids, seed, **kw):
    L = model.config.canvas_length
    kw = dict(max_new_tokens=3 * L, max_denoising_steps=6, eos_token_ids=[], confidence_threshold=0.0) | kw
    return dg.generate(model, input_ids=ids, seed=seed, **kw).token_ids


@pytest.mark.parametrize("path", ["torch", "fast"])
def test_row_i_of_a_batch_equals_a_single_run_with_seed_i(model64, path):
    """Default sampling, three canvases: the same prompt in every row, seeds per row."""
    prompt, seeds = [5, 6, 7, 8, 9], [11, 2**40 + 11, -3]
    batch = run(model64, [prompt] * 3, seeds, path=path)
    for i, s in enumerate(seeds):
        assert torch.equal(batch[i], run(model64, [prompt], s, path=path)[0]), f"row {i}"
    assert not torch.equal(batch[0], batch[1]) and not torch.equal(batch[1], batch[2])
    # and a row's text does not depend on its place: the same seeds in another order
    swapped = run(model64, [prompt] * 3, seeds[::-1], path=path)
    assert torch.equal(swapped[0], batch[2]) and torch.equal(swapped[2], batch[0])


def test_one_int_seed_for_a_batch_keeps_rows_apart(model64):
    """One int for a batch: row i draws from (seed, i), so identical prompts give different texts,
    and row 0 is the batch-of-one run with that seed."""
    batch = run(model64, [[5, 6, 7]] * 4, 9)
    assert len({tuple(r.tolist()) for r in batch}) == 4
    assert torch.equal(batch[0], run(model64, [[5, 6, 7]], 9)[0])
    assert torch.equal(run(model64, [[5, 6, 7]] * 4, [9, 9, 9, 9])[3], batch[0])  # the same seed per row: same text


@pytest.mark.parametrize("a, b", [(1, 2**32 + 1), (7, 7 << 32), (-1, 2**64 - 1), (0, 2**64), (3, -3)])
def test_seeds_that_once_folded_together_give_different_text(model64, a, b):
    assert not torch.equal(run(model64, [[5, 6, 7]], a), run(model64, [[5, 6, 7]], b))


@pytest.mark.parametrize("seed, rng, match", [
    ("1", "counter", "seed must be an int"),
    (1.5, "counter", "seed must be an int"),
    (True, "counter", "seed must be an int"),
    ([1, 2], "counter", "one int per prompt: 3 int"),
    ([1, "2", 3], "counter", "one int per prompt"),
    ([1, 2, 3], "transformers", "one int seed, or rng='counter'"),
    (2**64, "transformers", "0..2\\*\\*64-1"),
    (-1, "transformers", "0..2\\*\\*64-1"),
])
def test_bad_seeds_are_refused(model64, seed, rng, match):
    with pytest.raises(InputError, match=match):
        run(model64, [[5, 6, 7]] * 3, seed, rng=rng, max_new_tokens=4)


def test_transformers_rng_takes_its_whole_range(model64):
    for seed in (0, 2**64 - 1):
        assert run(model64, [[5, 6, 7]], seed, rng="transformers", max_new_tokens=4).shape == (1, 4)
