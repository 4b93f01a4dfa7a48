"""DenoisingTrace: recording generate's rounds, what it derives from them, its file format and the
refusal of every kind of bad file."""

from __future__ import annotations

import base64
import copy
import dataclasses
import gzip
import json
import os
import tracemalloc

import numpy as np
import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.visualization import trace_file
from dgemma_helpers.generation import StepRecord
from dgemma_helpers.visualization.player_html import player_html
from dgemma_helpers.visualization.trace import DenoisingTrace


def generate_traced(model, prompt="The sky is", **kwargs):
    trace = DenoisingTrace.from_model(model, prompt=prompt)
    settings = dict(max_new_tokens=40, max_denoising_steps=6, seed=3, record_topk=3)
    settings.update(kwargs)
    result = dg.generate(model, prompt, on_step=trace.record, **settings)
    return trace.finish(result), result


@pytest.fixture(scope="module")
def recorded(checkpoint, ours):
    return generate_traced(ours(checkpoint("confident")))


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


def _document(trace: DenoisingTrace) -> dict:
    return json.loads(json.dumps(trace.to_document()))


def _write(tmp_path, doc, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


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


# ---- every field typed: a bad value is a TraceError naming the field, never a raw error later ---------------
def _set(path: str, value):
    """An edit that sets a dotted field of a document ("meta.settings.pad_token_id", "rounds.step.0")."""
    def edit(doc):
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("meta.vocab_size", "big"), r"meta\.vocab_size is 'big', but it must be an integer >= 1"),
    (_set("meta.vocab_size", True), r"meta\.vocab_size is True"),
    (_set("meta.vocab_size", -5), r"meta\.vocab_size is -5"),
    (_set("meta.canvas_length", 16.0), r"meta\.canvas_length is 16\.0"),
    (_set("meta.canvas_length", -16), r"meta\.canvas_length is -16"),
    (_set("meta.canvas_length", None), r"meta\.canvas_length is None"),
    (_set("meta.row", "0"), r"meta\.row is '0'"),
    (_set("meta.complete", "yes"), r"meta\.complete is 'yes', but it must be true or false"),
    (_set("meta.prompt", 5), r"meta\.prompt is 5, but it must be a string or null"),
    (_set("meta.title", "\ud800"), r"meta\.title is .*lone surrogate"),
    (_set("meta.prompt_ids", "1 2 3"), r"meta\.prompt_ids is '1 2 3', but it must be a list"),
    (_set("meta.prompt_ids.0", "a"), r"meta\.prompt_ids\[0\] is 'a', but it must be a token id"),
    (_set("meta.settings", [1]), r"meta\.settings is \[1\], but it must be a JSON object"),
    (_set("meta.settings.pad_token_id", "0"), r"meta\.settings\.pad_token_id is '0', but it must be a token id"),
    (_set("meta.settings.pad_token_id", False), r"meta\.settings\.pad_token_id is False"),
    (_set("meta.settings.eos_token_ids", 5), r"meta\.settings\.eos_token_ids is 5, but it must be a list"),
    (_set("meta.settings.eos_token_ids", ["a"]), r"meta\.settings\.eos_token_ids\[0\] is 'a'"),
    (_set("meta.settings.t_min", "0.1"), r"meta\.settings\.t_min is '0\.1', but it must be a finite number"),
    (_set("meta.settings.t_max", float("inf")), r"meta\.settings\.t_max is inf"),
    (_set("meta.settings.entropy_bound", float("nan")), r"meta\.settings\.entropy_bound is nan"),
    (_set("meta.settings.max_new_tokens", 0), r"meta\.settings\.max_new_tokens is 0, but it must be an integer >= 1"),
    (_set("meta.settings.max_new_tokens", "lots"), r"meta\.settings\.max_new_tokens is 'lots'"),
    (_set("meta.settings.temperature", 1.0), r"meta\.settings has unknown key\(s\) \[\"'temperature'\"\]"),
    (_set("vocab.20", 5), r"vocab\['20'\] is 5, but it must be a string or null"),
    (lambda d: d["vocab"].update({" 7": "x"}), r"vocab has the key ' 7', but its keys must be token ids"),
    (lambda d: d["vocab"].update({"9" * 5000: "x"}), r"vocab has the key '9999"),
    (_set("rounds.temperature", ["hot", "cold"]), r"rounds\.temperature\[0\] is 'hot', but it must be a finite"),
    (_set("rounds.temperature.0", float("nan")), r"rounds\.temperature\[0\] is nan"),
    (_set("rounds.temperature.0", -0.5), r"rounds\.temperature\[0\] is -0\.5"),
    (_set("rounds.step.0", True), r"rounds\.step\[0\] is True, but it must be an integer >= 1"),
    (_set("rounds.step.0", 2**40), r"rounds\.step\[0\] is 1099511627776, but it must be an integer >= 1 and <= "),
    (_set("rounds.canvas_index.0", -1), r"rounds\.canvas_index\[0\] is -1"),
    (_set("rounds.remaining", 3), r"rounds\.remaining is 3, but it must be a list"),
    (_set("rounds.canvas_ids.shape.0", -1), r"rounds\.canvas_ids\.shape\[0\] is -1, but it must be an integer in"),
    (_set("rounds.canvas_ids.shape.1", "16"), r"rounds\.canvas_ids\.shape\[1\] is '16'"),
    (_set("rounds.canvas_ids.shape", [1, 2, 3, 4]), r"rounds\.canvas_ids\.shape has 4 dimensions"),
    (_set("rounds.canvas_ids.data", 12), r"field 'canvas_ids' has corrupt base64 data"),
    (_set("rounds.canvas_ids", "AAAA"), r"rounds\.canvas_ids is not a int32 array record"),
    (_set("meta", "x"), r"meta is 'x', but it must be a JSON object"),
    (_set("vocab", []), r"vocab is \[\], but it must be a JSON object"),
    (_set("rounds", None), r"rounds is None, but it must be a JSON object"),
    (_set("version", True), r"version True, but this dgemma_helpers reads version 1"),
])
def test_load_refuses_a_field_of_the_wrong_type_or_range(recorded, tmp_path, edit, message):
    doc = _document(recorded[0])
    edit(doc)
    with pytest.raises(dg.TraceError, match=message) as info:
        DenoisingTrace.load(_write(tmp_path, doc))
    assert "record and save the trace again" in str(info.value)  # and the fix


def _encoded(arr: np.ndarray) -> dict:
    return {"dtype": str(arr.dtype), "shape": list(arr.shape),
            "data": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode()}


@pytest.mark.parametrize("name, change, message", [
    ("entropy", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a).astype(np.float32),
     "entropy holds NaN or infinite values"),
    ("entropy", lambda a: np.full_like(a, np.inf), "entropy holds NaN or infinite values"),
    ("top_probs", lambda a: a * 3, "top_probs holds values outside 0..1"),
    ("top_probs", lambda a: np.full_like(a, np.nan), "top_probs holds values outside 0..1"),
    ("accepted", lambda a: a.astype(np.uint8) * 2, "accepted' holds bytes other than 0 and 1"),
    ("canvas_ids", lambda a: a - 10_000, "outside the vocabulary"),
])
def test_load_refuses_array_values_out_of_range(recorded, tmp_path, name, change, message):
    doc = _document(recorded[0])
    dtype = {"accepted": "bool"}.get(name)
    arr = np.frombuffer(base64.b64decode(doc["rounds"][name]["data"]), dtype=dtype or doc["rounds"][name]["dtype"])
    doc["rounds"][name] = dict(_encoded(change(arr.reshape(doc["rounds"][name]["shape"]))),
                               dtype=doc["rounds"][name]["dtype"])
    with pytest.raises(dg.TraceError, match=message):
        DenoisingTrace.load(_write(tmp_path, doc))


@pytest.mark.parametrize("field, value", [("prompt_ids", [2, 10**6]), ("eos", 10**6), ("pad", 10**6),
                                          ("vocab", str(10**6))])
def test_every_id_in_a_file_is_within_its_vocabulary(recorded, tmp_path, field, value):
    doc = _document(recorded[0])
    if field == "prompt_ids":
        doc["meta"]["prompt_ids"] = value
    elif field == "eos":
        doc["meta"]["settings"]["eos_token_ids"] = [1, value]
    elif field == "pad":
        doc["meta"]["settings"]["pad_token_id"] = value
    else:
        doc["vocab"][value] = "x"
    with pytest.raises(dg.TraceError, match=r"holds token id 1000000, outside the vocabulary 0\.\.\d+"):
        DenoisingTrace.load(_write(tmp_path, doc))


def test_a_huge_declared_shape_is_refused_with_its_real_size(recorded, tmp_path):
    doc = _document(recorded[0])
    doc["rounds"]["canvas_ids"]["shape"] = [2**31 - 1, 2**31 - 1]
    with pytest.raises(dg.TraceError, match=r"needs 18446744056529682436 bytes") as info:
        DenoisingTrace.load(_write(tmp_path, doc))
    assert "needs 0 bytes" not in str(info.value)
    doc["rounds"]["canvas_ids"]["shape"] = [2**32, 2**32]  # beyond int32: refused as a size, never multiplied
    with pytest.raises(dg.TraceError, match=r"shape\[0\] is 4294967296, but it must be an integer in 0\.\.2147483647"):
        DenoisingTrace.load(_write(tmp_path, doc))


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"format": ' + "9" * 5000 + "}",
                                  '{"format": "dgemma-denoising-trace", "version": 1, "meta": \ud800}'])
def test_json_the_parser_chokes_on_is_a_trace_error(tmp_path, text):
    path = tmp_path / "odd.json"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    with pytest.raises(dg.TraceError, match="is not valid JSON"):
        DenoisingTrace.load(path)


# Every field of a real file, set to each of these (or removed): load either succeeds with a trace that
# everything downstream accepts, or raises TraceError. A deterministic fuzz over the whole format.
HOSTILE = [None, True, False, 0, -1, 1, 2**31, 2**64, 0.5, -0.5, float("nan"), float("inf"), "", "x", "3", [],
           ["a"], [1, 2], {}, {"a": 1}, "\ud800"]
REMOVE = object()


def _leaves(node, path=()):
    yield path
    if isinstance(node, dict):
        items = list(node.items())
        if path == ("vocab",):
            items = items[:1]  # one token's entry stands for all
        for key, value in items:
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list) and node:
        yield from _leaves(node[0], path + (0,))  # the first element stands for all


def _mutated(doc, path, value):
    """A copy of doc with one field changed (or removed); only the containers on the path are copied."""
    if not path:
        return value
    top = node = copy.copy(doc)
    for key in path[:-1]:
        node[key] = copy.copy(node[key])
        node = node[key]
    if value is REMOVE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return top


def test_every_field_set_to_anything_loads_or_is_a_trace_error(recorded):
    doc = _document(recorded[0])
    loaded, refused = 0, 0
    for path in _leaves(doc):
        for value in HOSTILE + ([REMOVE] if path else []):
            bad = _mutated(doc, path, value)
            try:
                trace = DenoisingTrace.from_document(bad, source="fuzzed")
            except dg.TraceError:
                refused += 1
                continue
            loaded += 1
            # Whatever loaded is safe for all that reads a trace later, including a save and a reload
            # (in memory here: the file path is the round-trip test's) and the HTML export's page.
            trace.tokens(), trace.lock_in_steps(), trace.accepted_counts(), trace.tokens_per_forward()
            player_html(trace.to_payload())
            text = json.dumps(trace.to_document(), ensure_ascii=False, allow_nan=False).encode()
            assert len(DenoisingTrace.from_document(json.loads(text))) == len(trace)
    assert refused > 500 and loaded > 20  # both sides exercised


# ---- memory: a gzip bomb costs what its limit allows, never what it inflates to ------------------------------
def test_a_gzip_bomb_is_refused_after_inflating_at_most_the_limit(tmp_path):
    path = tmp_path / "bomb.json.gz"
    head = ('{"format": "dgemma-denoising-trace", "version": 1, "meta": {"canvas_length": 16}, "vocab": {}, '
            '"rounds": {"canvas_index": [0], "step": [1], "remaining": [0], "temperature": [0.5], '
            '"canvas_ids": {"dtype": "int32", "shape": [1, 16], "data": "').encode()
    chunk = b"A" * (16 << 20)
    with gzip.open(path, "wb", compresslevel=9) as f:  # 1.5 GiB of JSON, written 16 MiB at a time
        f.write(head)
        for _ in range(96):
            f.write(chunk)
        f.write(b'"}}}')
    size = path.stat().st_size
    assert size < 2 << 20  # a 1.5 MB file...
    tracemalloc.start()
    try:
        with pytest.raises(dg.TraceError, match=r"inflates to more than [\d,]+ bytes from [\d,]+ compressed") as info:
            DenoisingTrace.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"gzip bomb: {size:,} bytes compressed, peak traced memory while refusing it {peak / 2**20:.1f} MiB")
    assert peak < 200 << 20  # ...costs less than 200 MB to refuse, not the 1.5 GiB it inflates to
    assert "max_bytes=" in str(info.value)  # the way to load a genuine, unusually regular trace


def test_the_inflate_limit_follows_the_file_and_can_be_raised(recorded, tmp_path):
    trace, _ = recorded
    path = trace.save(tmp_path / "t.json.gz")
    inflated = len(gzip.decompress(path.read_bytes()))
    with pytest.raises(dg.TraceError, match="over the .*-byte limit"):
        DenoisingTrace.load(path, max_bytes=inflated - 1)
    assert len(DenoisingTrace.load(path, max_bytes=inflated)) == len(trace)
    assert trace_file.inflate_limit(10) == trace_file.INFLATE_FLOOR
    assert trace_file.inflate_limit(10 << 20) == 64 * (10 << 20)
    assert trace_file.inflate_limit(10 << 30) == trace_file.MAX_TRACE_BYTES
    with pytest.raises(dg.TraceError, match="max_bytes must be a positive integer"):
        DenoisingTrace.load(path, max_bytes="1e6")


def test_an_oversized_plain_json_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:  # sparse: 2 GiB on paper, nothing on disk
        f.truncate(2 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(dg.TraceError, match=r"is 2,147,483,648 bytes, over the 1,073,741,824-byte limit"):
            DenoisingTrace.load(path)
        assert tracemalloc.get_traced_memory()[1] < 10 << 20
    finally:
        tracemalloc.stop()


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
