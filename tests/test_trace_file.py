"""The trace file format: every field typed and ranged, array values checked, ids inside the
vocabulary, huge declared shapes and gzip bombs refused within bounded memory; every bad value is a
TraceError naming the field, never a raw error later."""

from __future__ import annotations

import base64
import copy
import gzip
import json
import tracemalloc

import numpy as np
import pytest

import dgemma_helpers as dg
from dgemma_helpers.visualization import trace_file
from dgemma_helpers.visualization.player_html import player_html
from dgemma_helpers.visualization.trace import DenoisingTrace
from traces import _document, _write, generate_traced, recorded  # noqa: F401


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
