"""DenoisingTrace: recording generate's rounds, what it derives from them, its file format and the
refusal of every kind of bad file."""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np
import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.generation import StepRecord
from dgemma_helpers.visualization.trace import DenoisingTrace
from traces import _document, _write, generate_traced, recorded  # noqa: F401


def step(c: int, s: int, accepted: list[int], *, L: int = 4, pinned: list[int] | None = None,
         active: bool = True) -> StepRecord:
    """A hand-made one-row round: canvas ids 10+p, argmax ids 20+p, entropy 0.1*p."""
    acc = torch.tensor([bool(a) for a in accepted])[None]
    return StepRecord(canvas_index=c, step=s, remaining=9 - s, temperature=0.5,
                      canvas_ids=torch.arange(10, 10 + L)[None], argmax_ids=torch.arange(20, 20 + L)[None],
                      accepted=acc, entropy=torch.arange(L)[None] * 0.1, active=torch.tensor([active]),
                      pinned=None if pinned is None else torch.tensor([bool(p) for p in pinned])[None])


def assert_same_trace(a: DenoisingTrace, b: DenoisingTrace) -> None:
    assert len(a) == len(b) and a.canvas_length == b.canvas_length
    assert (a.prompt, a.prompt_ids, a.settings, a.row, a.complete, a.title) == (
        b.prompt, b.prompt_ids, b.settings, b.row, b.complete, b.title)
    for ra, rb in zip(a.rounds, b.rounds):
        assert (ra.canvas_index, ra.step, ra.remaining, ra.temperature) == (rb.canvas_index, rb.step, rb.remaining,
                                                                           rb.temperature)
        for name in ("canvas_ids", "argmax_ids", "accepted", "entropy", "pinned", "top_ids", "top_probs"):
            x, y = getattr(ra, name), getattr(rb, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert x.dtype == y.dtype and np.array_equal(x, y), name
    used = {int(i) for i in a.used_ids()}
    assert {k: v for k, v in a.vocab.items() if k in used} == b.vocab


# ---- recording ----------------------------------------------------------------------------------------
def test_trace_matches_the_generation_it_recorded(recorded):
    trace, result = recorded
    assert len(trace) == result.num_forwards  # one row: every round is one denoiser pass
    assert [end - start for _, start, end in trace.canvas_ranges()] == [row[0] for row in result.steps_per_canvas]
    assert trace.tokens() == result.token_ids[0].tolist()
    committed_tokens = sum(float((c != 0).sum()) for c in trace.committed())
    assert committed_tokens / len(trace) == pytest.approx(result.canvas_tokens_per_forward)  # transformers' figure
    assert sum(t != 0 for t in trace.tokens()) / len(trace) == pytest.approx(result.tokens_per_forward)  # returned
    assert trace.prompt_ids == result.prompt_ids[0] and trace.complete
    rd = trace.rounds[0]
    assert rd.canvas_ids.shape == (16,) and rd.top_ids.shape == (16, 3) and rd.top_probs.dtype == np.float32
    assert np.all(np.diff(rd.top_probs, axis=-1) <= 0)  # most likely first
    # Every id in the trace has its text; the ids that occur and no others are kept.
    assert set(trace.token_text(trace.used_ids())) == {int(i) for i in trace.used_ids()}


def test_trace_follows_the_chosen_batch_row(checkpoint, ours):
    model = ours(checkpoint("confident"))
    prompts = ["The sky is", "Block diffusion writes"]
    traces = [DenoisingTrace.from_model(model, row=r) for r in (0, 1)]

    def both(record):
        for t in traces:
            t.record(record)

    result = dg.generate(model, prompts, max_new_tokens=32, max_denoising_steps=5, seed=1, on_step=both)
    for row, trace in enumerate(traces):
        trace.finish(result)
        assert trace.tokens() == result.token_ids[row].tolist()
        assert trace.prompt_ids == result.prompt_ids[row]


def test_rounds_in_which_the_row_is_frozen_are_not_recorded():
    trace = DenoisingTrace(4)
    assert trace.record(step(0, 1, [1, 0, 0, 0]))
    assert not trace.record(step(0, 2, [1, 1, 0, 0], active=False))
    assert len(trace) == 1


def test_derived_counts_lock_in_and_tokens_per_forward():
    trace = DenoisingTrace(4, settings={"pad_token_id": 0, "eos_token_ids": [22]})
    for s, acc in enumerate([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0]], start=1):
        trace.record(step(0, s, acc))
    trace.record(step(1, 1, [0, 0, 0, 1], pinned=[1, 0, 0, 0]))
    accepted, new = trace.accepted_counts()
    assert accepted.tolist() == [1, 2, 2, 1] and new.tolist() == [1, 1, 1, 1]
    # Position 1 is accepted from round 2 on, position 2 from round 3; 0 and 3 are not accepted at the end.
    assert trace.lock_in_steps().tolist() == [[0, 2, 3, 0], [-1, 0, 0, 1]]
    # Argmax 20..23 with EOS id 22: canvas 0 commits [20, 21, 22, pad]; canvas 1 comes after EOS: all pad.
    assert [c.tolist() for c in trace.committed()] == [[20, 21, 22, 0], [0, 0, 0, 0]]
    assert trace.tokens_per_forward() == [3 / 3, 0.0]


def test_record_refuses_what_does_not_fit():
    trace = DenoisingTrace(4, row=1)
    with pytest.raises(dg.InputError, match="batch has 1 row"):
        trace.record(step(0, 1, [1, 0, 0, 0]))
    trace = DenoisingTrace(5)
    with pytest.raises(dg.InputError, match="canvas has 4 tokens but this trace's has 5"):
        trace.record(step(0, 1, [1, 0, 0, 0]))
    trace = DenoisingTrace(4)
    trace.record(step(1, 1, [1, 0, 0, 0]))
    with pytest.raises(dg.InputError, match="new generation"):
        trace.record(step(0, 1, [1, 0, 0, 0]))
    trace.finish()
    with pytest.raises(dg.InputError, match="finished"):
        trace.record(step(1, 2, [1, 0, 0, 0]))
    with pytest.raises(dg.InputError, match="row must be"):
        DenoisingTrace(4, row=-1)


def test_finish_refuses_the_result_of_another_generation(recorded):
    trace, result = recorded
    copy = DenoisingTrace.from_document(trace.to_document())
    copy.complete = False
    other = dataclasses.replace(result, token_ids=result.token_ids.clone())
    other.token_ids[0, 0] = (other.token_ids[0, 0] + 1) % 1000
    with pytest.raises(dg.InputError, match="result's tokens differ"):
        copy.finish(other)
    with pytest.raises(dg.InputError, match="result has 1 row"):
        DenoisingTrace(16, row=1).finish(result)


# ---- files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["trace.json.gz", "trace.json"])
def test_save_and_load_round_trip(recorded, tmp_path, name):
    trace, _ = recorded
    path = trace.save(tmp_path / name)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    loaded = DenoisingTrace.load(path)
    assert_same_trace(trace, loaded)
    # What the player shows is identical too (apart from the per-object id).
    a, b = trace.to_payload(), loaded.to_payload()
    a.pop("trace_id"), b.pop("trace_id")
    assert a == b
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


def test_a_failed_save_leaves_the_old_file_and_no_temporary(recorded, tmp_path, monkeypatch):
    trace, _ = recorded
    path = trace.save(tmp_path / "trace.json.gz")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gzip, "open", broken)
    with pytest.raises(OSError, match="disk full"):
        trace.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["trace.json.gz"]


def test_load_refuses_a_missing_or_corrupt_file(recorded, tmp_path):
    trace, _ = recorded
    with pytest.raises(dg.TraceError, match="no trace file"):
        DenoisingTrace.load(tmp_path / "missing.json.gz")
    (tmp_path / "garbage.json").write_bytes(b"{\"format\": \"dgemma-denoising-trace\", \"vers")
    with pytest.raises(dg.TraceError, match="not valid JSON"):
        DenoisingTrace.load(tmp_path / "garbage.json")
    data = trace.save(tmp_path / "t.json.gz").read_bytes()
    (tmp_path / "cut.json.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(dg.TraceError, match="truncated or corrupt gzip"):
        DenoisingTrace.load(tmp_path / "cut.json.gz")
    with pytest.raises(dg.TraceError, match="not a dgemma denoising trace"):
        DenoisingTrace.load(_write(tmp_path, {"hello": "world"}))
    with pytest.raises(dg.TraceError, match="not a dgemma denoising trace"):
        DenoisingTrace.load(_write(tmp_path, [1, 2, 3]))


def test_load_refuses_another_format_version(recorded, tmp_path):
    doc = _document(recorded[0])
    doc["version"] = 2
    with pytest.raises(dg.TraceError, match="version 2.*reads version 1"):
        DenoisingTrace.load(_write(tmp_path, doc))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["meta"].update(canvas_length=8), r"canvas_ids has shape \[\d+, 16\], expected \[\d+, 8\]"),
    (lambda d: d["rounds"]["step"].pop(), "step has .* entries but canvas_index has"),
    (lambda d: d["rounds"]["entropy"].update(shape=[len(d["rounds"]["step"]) + 1, 16]), "holds .* bytes but its shape"),
    (lambda d: d["rounds"]["accepted"].update(data="@@not base64@@"), "corrupt base64"),
    (lambda d: d["rounds"]["argmax_ids"].update(dtype="float32"), "not a int32 array"),
    (lambda d: d["rounds"].update(top_probs=None), "top_ids and top_probs must both"),
    (lambda d: d["meta"].update(vocab_size=5), "outside the vocabulary"),
    (lambda d: d["rounds"]["canvas_index"].reverse(), "canvas_index goes backwards"),
    (lambda d: d.pop("rounds"), "missing or has malformed fields"),
])
def test_load_refuses_an_inconsistent_file(recorded, tmp_path, edit, message):
    doc = _document(recorded[0])
    edit(doc)
    with pytest.raises(dg.TraceError, match=message):
        DenoisingTrace.load(_write(tmp_path, doc))


def test_an_empty_trace_saves_and_loads(tmp_path):
    trace = DenoisingTrace(4)
    loaded = DenoisingTrace.load(trace.save(tmp_path / "empty.json.gz"))
    assert len(loaded) == 0 and loaded.canvas_length == 4


def test_pinned_positions_are_recorded_for_infilling(checkpoint, ours):
    model = ours(checkpoint("confident"))
    canvas = list(range(20, 36))
    trace, _ = generate_traced(model, max_new_tokens=16, initial_canvas=canvas, pinned=[0, 5, 9])
    pinned = trace.stack("pinned")
    assert pinned[:, [0, 5, 9]].all() and pinned.sum() == 3 * len(trace)
    assert trace.lock_in_steps()[0, [0, 5, 9]].tolist() == [-1, -1, -1]
    assert [trace.committed()[0][p] for p in (0, 5, 9)] == [20, 25, 29]
    assert trace.round_payload(0)["pin"][5] == 1


def test_bad_paths_and_unreadable_files_are_trace_errors(tmp_path):
    for bad in (None, 5, b"trace.json"):
        with pytest.raises(dg.TraceError, match="a trace path must be a str or a pathlib.Path"):
            DenoisingTrace.load(bad)
    with pytest.raises(dg.TraceError, match="no trace file"):
        DenoisingTrace.load(tmp_path)  # a directory
    path = DenoisingTrace(4).save(tmp_path / "locked.json.gz")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who can read any file")
        with pytest.raises(dg.TraceError, match="cannot read .*permission"):
            DenoisingTrace.load(path)
    finally:
        path.chmod(0o644)


def test_an_empty_trace_without_a_canvas_length_round_trips(tmp_path):
    loaded = DenoisingTrace.load(DenoisingTrace().save(tmp_path / "empty.json.gz"))
    assert len(loaded) == 0 and loaded.canvas_length is None
    loaded.to_payload()


def test_a_trace_refuses_settings_it_could_not_save_and_load():
    with pytest.raises(dg.InputError, match=r"settings\.pad_token_id is '0'"):
        DenoisingTrace(4, settings={"pad_token_id": "0"})
    with pytest.raises(dg.InputError, match="canvas_length must be a positive integer"):
        DenoisingTrace("16")
    with pytest.raises(dg.InputError, match="canvas_length must be a positive integer"):
        DenoisingTrace(2**31)  # the file stores positions as int32: it could be saved but never loaded
    DenoisingTrace(2**31 - 1, vocab_size=2**31)  # the largest the file holds
    with pytest.raises(dg.InputError, match="row must be"):
        DenoisingTrace(4, row=True)


@pytest.mark.parametrize("call, message", [
    (lambda t, d: t.save(None), "an output path must be"),
    (lambda t, d: t.save_html(d / "x.html", speed="fast"), "speed must be a finite number > 0"),
    (lambda t, d: t.save_html(d / "x.html", speed=float("nan")), "speed must be a finite number > 0"),
    (lambda t, d: t.save_html(5), "an output path must be"),
    (lambda t, d: t.save_gif(d / "x.gif", fps=True), "fps must be a finite number > 0"),
    (lambda t, d: t.save_gif(d / "x.gif", canvases="0"), "canvases must be a list"),
])
def test_exports_refuse_arguments_of_the_wrong_type(recorded, tmp_path, call, message):
    with pytest.raises(dg.InputError, match=message):
        call(recorded[0], tmp_path)
    assert list(tmp_path.iterdir()) == []
