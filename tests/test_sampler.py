"""The sampler's rules on their own, and how the loop applies them."""

from __future__ import annotations

import itertools

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.sampler import StableAndConfident, entropy_bound_accept, finalize_canvas


def brute_force_accept(entropy: list[float], bound: float) -> set[int]:
    """Read the rule literally: the largest k such that the k lowest-entropy positions satisfy
    sum(H) - max(H) <= bound; those k positions are accepted."""
    order = sorted(range(len(entropy)), key=lambda i: entropy[i])
    best = 0
    for k in range(1, len(entropy) + 1):
        chosen = [entropy[i] for i in order[:k]]
        if sum(chosen) - max(chosen) <= bound:
            best = k
    return set(order[:best])


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("bound", [1e-3, 0.1, 0.5, 2.0])
def test_entropy_bound_accepts_what_the_rule_says(seed, bound):
    g = torch.Generator().manual_seed(seed)
    # Distinct entropies: with ties the rule does not say which of two equal positions comes first.
    entropy = torch.rand(3, 12, generator=g, dtype=torch.float64) ** 3
    accepted = entropy_bound_accept(entropy, bound)
    for row in range(3):
        assert set(torch.nonzero(accepted[row]).flatten().tolist()) == brute_force_accept(entropy[row].tolist(), bound)


def test_entropy_bound_exhaustive_small_cases():
    values = [0.0, 0.05, 0.1, 0.3]
    for combo in itertools.product(values, repeat=4):
        e = torch.tensor(combo, dtype=torch.float64) + torch.arange(4) * 1e-9  # break ties deterministically
        got = set(torch.nonzero(entropy_bound_accept(e[None], 0.1)[0]).flatten().tolist())
        assert got == brute_force_accept(e.tolist(), 0.1)


def test_at_least_one_position_is_always_accepted():
    entropy = torch.full((2, 8), 5.0)
    assert entropy_bound_accept(entropy, 1e-6).sum(-1).tolist() == [1, 1]


def test_early_stop_needs_stability_and_confidence():
    stop = StableAndConfident(stability_threshold=2, confidence_threshold=0.1)
    a, b = torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 4]])
    low, high = torch.tensor([0.01]), torch.tensor([0.5])
    assert not stop(a, low)  # no history yet
    assert not stop(a, low)  # stable for one step only
    assert stop(a, low)  # unchanged for two steps and confident
    assert not stop(a, high)  # stable but not confident
    assert not stop(b, low)  # confident but changed
    stop.reset()
    assert not stop(a, low)


def test_confidence_threshold_zero_never_stops():
    stop = StableAndConfident(stability_threshold=0, confidence_threshold=0.0)
    assert not stop(torch.tensor([[1]]), torch.tensor([0.0]))


def test_eos_padding_and_finished_rows():
    eos = torch.tensor([1, 5])
    canvas = torch.tensor([[7, 8, 1, 9, 1, 4],  # EOS at 2: everything after it becomes pad
                           [7, 8, 9, 9, 9, 4],  # no EOS
                           [5, 3, 3, 3, 3, 3],  # EOS first
                           [7, 7, 7, 7, 7, 7]])  # finished on an earlier canvas: all pad
    finished = torch.tensor([False, False, False, True])
    out, done = finalize_canvas(canvas, finished, eos, pad_id=0, out_of_length=False)
    assert out.tolist() == [[7, 8, 1, 0, 0, 0], [7, 8, 9, 9, 9, 4], [5, 0, 0, 0, 0, 0], [0] * 6]
    assert done.tolist() == [True, False, True, True]
    _, done = finalize_canvas(canvas, finished, eos, pad_id=0, out_of_length=True)
    assert done.all()


@pytest.fixture(scope="module")
def model(checkpoint, ours):
    return ours(checkpoint("plain"))


def record_steps(model, **kwargs):
    records = []
    result = dg.generate(model, on_step=records.append, **kwargs)
    return result, records


def test_pinned_positions_never_change(model):
    L, V = model.config.canvas_length, model.config.vocab_size
    start = torch.randint(0, V, (L,), generator=torch.Generator().manual_seed(0))
    pins = [0, 3, 4, 15]
    result, records = record_steps(model, input_ids=[4, 5, 6], initial_canvas=start, pinned=pins, seed=1,
                                   max_new_tokens=L, max_denoising_steps=12, eos_token_ids=[])
    assert records, "the callback saw no rounds"
    for r in records:
        assert torch.equal(r.canvas_ids[0, pins], start[pins])
        assert torch.equal(r.argmax_ids[0, pins], start[pins])
        assert not r.accepted[0, pins].any()
        assert r.pinned[0, pins].all() and r.pinned[0].sum() == len(pins)
    assert torch.equal(result.token_ids[0, pins], start[pins])


@pytest.mark.parametrize("stability", [0, 1, 2])
def test_early_stop_fires_exactly_when_the_rule_says(checkpoint, ours, stability):
    """Replay the records: the loop must stop on the first round whose argmax has been unchanged for
    `stability` rounds and whose mean entropy is below the threshold, and not before."""
    threshold = 0.1
    result, records = record_steps(ours(checkpoint("confident")), input_ids=[7, 8, 9], seed=2, max_new_tokens=48,
                                   max_denoising_steps=30, t_min=0.05, t_max=0.1, stability_threshold=stability,
                                   confidence_threshold=threshold, eos_token_ids=[])
    for canvas in range(len(result.steps_per_canvas)):
        rounds = [r for r in records if r.canvas_index == canvas]
        expected = len(rounds)
        for i in range(len(rounds)):
            stable = i >= stability and all(torch.equal(rounds[i].argmax_ids, rounds[i - d].argmax_ids)
                                            for d in range(1, stability + 1))
            if stable and rounds[i].entropy.mean() < threshold:
                expected = i + 1
                break
        assert len(rounds) == expected == result.steps_per_canvas[canvas][0]
    if stability == 0:  # confidence alone: this confident model gets there well before 30 rounds
        assert all(steps[0] < 30 for steps in result.steps_per_canvas)


def test_no_early_stop_runs_every_step(model):
    result, records = record_steps(model, input_ids=[7, 8, 9], seed=2, max_new_tokens=16, max_denoising_steps=7,
                                   confidence_threshold=0)
    assert result.steps_per_canvas == [[7]] and len(records) == 7
    assert [r.remaining for r in records] == [7, 6, 5, 4, 3, 2, 1]
    assert records[0].temperature == pytest.approx(0.8) and records[-1].temperature == pytest.approx(0.4 + 0.4 / 7)


def test_step_records_describe_the_round(model):
    _, records = record_steps(model, input_ids=[[7, 8, 9], [3, 4]], seed=5, max_new_tokens=16, max_denoising_steps=4,
                              record_topk=3)
    r = records[0]
    B, L = 2, model.config.canvas_length
    assert r.canvas_ids.shape == r.argmax_ids.shape == r.accepted.shape == r.entropy.shape == (B, L)
    assert r.top_ids.shape == r.top_probs.shape == (B, L, 3)
    assert torch.all(r.top_probs[..., :-1] >= r.top_probs[..., 1:])
    assert torch.equal(r.top_ids[..., 0], r.argmax_ids)
    assert r.active.tolist() == [True, True] and r.step == 1


def test_tokens_after_eos_are_pad_and_text_stops_at_eos(model):
    # Make every token an EOS except one: the first EOS ends each row.
    eos = [t for t in range(model.config.vocab_size) if t != 42]
    result = dg.generate(model, input_ids=[[1, 2], [3, 4, 5]], seed=0, max_new_tokens=48, eos_token_ids=eos)
    for row in result.token_ids.tolist():
        first = next(i for i, t in enumerate(row) if t in eos or t == 0)
        assert all(t == 0 for t in row[first + 1:])
    assert result.token_ids.shape[1] == model.config.canvas_length  # every row finished: one canvas only
