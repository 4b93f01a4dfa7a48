"""Fuzzing every input boundary with generated values and types (hypothesis): each call either
succeeds with a well-formed result or raises the kit's own error class (DGemmaError), never a raw
TypeError/ValueError/RuntimeError from inside torch, json, safetensors or pathlib, and each stays
within a bounded time (hypothesis' deadline) and memory (the process's peak RSS, checked last).

    generate()        arguments drawn from valid values, edge numbers and wrong types
    load_model()      mutated copies of models/dgemma-tiny's files: config.json, generation_config.json,
                      the safetensors header, the shard index
    DenoisingTrace    mutated fields of a real saved trace, then load() and save_html()
"""

from __future__ import annotations

import copy
import json
import math
import resource
import shutil
import struct

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed: pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dgemma_helpers as dg  # noqa: E402
from dgemma_helpers.errors import DGemmaError  # noqa: E402

FUZZ = settings(max_examples=40, deadline=20_000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PEAK_RSS_LIMIT = 6 * 2**30  # what this whole test module may reach (the tiny model is 22 MB)

# Values of every kind a careless or hostile caller might pass.
JUNK = st.sampled_from([None, "", "x", "0.5", b"1", 0, 1, -1, 2, 2**31, 2**64, -2**70, 0.0, 0.5, -0.5, 1.5,
                        math.nan, math.inf, -math.inf, True, False, [], [1], [1, "a"], ["a"], [[1, 2], [3]], {},
                        {"a": 1}, {1, 2}, (3, 4), object(), print])
SMALL_INT = st.integers(min_value=-3, max_value=6)
SMALL_FLOAT = st.floats(min_value=-1.0, max_value=4.0)  # NaN and the infinities come with JUNK


def value(good: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(good, good, JUNK)  # mostly plausible, often junk


GENERATE_ARGS = dict(
    max_new_tokens=value(st.integers(min_value=0, max_value=40)),
    max_denoising_steps=value(SMALL_INT),
    entropy_bound=value(SMALL_FLOAT),
    t_min=value(SMALL_FLOAT),
    t_max=value(SMALL_FLOAT),
    stability_threshold=value(SMALL_INT),
    confidence_threshold=value(SMALL_FLOAT),
    eos_token_ids=value(st.lists(st.integers(min_value=-2, max_value=5000), max_size=3)),
    seed=value(st.one_of(st.integers(), st.lists(st.integers(), min_size=1, max_size=3))),
    rng=value(st.sampled_from(["counter", "transformers", "numpy"])),
    initial_canvas=value(st.lists(st.integers(min_value=-1, max_value=5000), min_size=15, max_size=17)),
    pinned=value(st.lists(st.integers(min_value=-2, max_value=17), max_size=4)),
    thinking=value(st.booleans()),
    record_topk=value(st.integers(min_value=-1, max_value=5)),
    path=value(st.sampled_from(["auto", "torch", "fast", "graph"])),
)
PROMPTS = st.one_of(
    st.fixed_dictionaries({"prompt": value(st.text(min_size=0, max_size=30))}),
    st.fixed_dictionaries({"input_ids": value(st.lists(st.integers(min_value=-1, max_value=5000), max_size=6))}),
    st.fixed_dictionaries({"messages": value(st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "robot"]), "content": value(st.text(max_size=20))}),
        max_size=2))}),
)


@pytest.fixture(scope="module")
def model(checkpoint):
    return dg.load_model(checkpoint("plain"), device="cpu", dtype="float32")  # canvas 16, with a tokenizer


@FUZZ
@given(prompt=PROMPTS, args=st.fixed_dictionaries({}, optional=GENERATE_ARGS))
def test_generate_succeeds_or_raises_the_kits_error(model, prompt, args):
    # A valid long run (None means the checkpoint's 256 tokens x 48 rounds) costs time and proves nothing more.
    if args.get("max_new_tokens") is None or (isinstance(args["max_new_tokens"], int) and args["max_new_tokens"] > 32):
        args["max_new_tokens"] = 32
    try:
        result = dg.generate(model, **prompt, **args)
    except DGemmaError:
        return
    B = result.token_ids.shape[0]
    assert result.token_ids.ndim == 2 and result.token_ids.shape[1] <= result.settings.max_new_tokens
    assert len(result.texts) == B and len(result.row_tokens_per_forward) == B
    assert result.path in ("torch", "fast") and all(math.isfinite(x) for x in result.row_tokens_per_forward)
    assert ((result.token_ids >= 0) & (result.token_ids < model.config.vocab_size)).all()


# ---- load_model on mutated checkpoints ------------------------------------------------------------
TINY = dg.find_model()
CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads",
               "head_dim", "num_experts", "top_k_experts", "moe_intermediate_size", "sliding_window",
               "layer_types", "max_position_embeddings", "final_logit_softcapping", "rms_norm_eps", "eos_token_id"]
GEN_KEYS = ["max_new_tokens", "max_denoising_steps", "t_min", "t_max", "entropy_bound", "stability_threshold",
            "confidence_threshold", "eos_token_id", "pad_token_id"]
HEADER_FIELDS = ["dtype", "shape", "data_offsets"]


def read_header(path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


@pytest.fixture(scope="module")
def tiny_files():
    header, body = read_header(TINY / "model.safetensors")
    return dict(config=json.loads((TINY / "config.json").read_text()),
                gen=json.loads((TINY / "generation_config.json").read_text()), header=header, body=body)


def mutated_copy(tmp, tiny_files, mutation) -> None:
    kind, key, val = mutation
    target = tmp / "ckpt"
    shutil.copytree(TINY, target, ignore=shutil.ignore_patterns("model.safetensors"))
    config, gen, header = (copy.deepcopy(tiny_files[k]) for k in ("config", "gen", "header"))
    if kind == "config":
        config["text_config"][key] = val
    elif kind == "gen":
        gen[key] = val
    elif kind == "header":
        name = sorted(k for k in header if k != "__metadata__")[key % (len(header) - 1)]
        header[name][val[0]] = val[1]
    body = tiny_files["body"]
    if kind == "truncate":
        body = body[: int(len(body) * val)]
    (target / "config.json").write_text(json.dumps(config, allow_nan=True))
    (target / "generation_config.json").write_text(json.dumps(gen, allow_nan=True))
    head = json.dumps(header).encode()
    weights = target / "model.safetensors"
    with open(weights, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        f.write(body)
    if kind == "index":  # a shard index (and only it) naming the weights: `val` is where it points
        (target / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: val for k in header if k != "__metadata__"}}))
        if val != "model.safetensors":
            weights.rename(target / "weights.safetensors")
    return target


JSON_JUNK = st.sampled_from([None, "six", "", -1, 0, 1, 2, 3, 7, 2**40, -2**40, 1.5, -0.5, math.nan, math.inf, True,
                             False, [], [1], ["full_attention"], ["sliding_attention"] * 6, {"a": 1}])
MUTATIONS = st.one_of(
    st.tuples(st.just("config"), st.sampled_from(CONFIG_KEYS), JSON_JUNK),
    st.tuples(st.just("gen"), st.sampled_from(GEN_KEYS), JSON_JUNK),
    st.tuples(st.just("header"), st.integers(min_value=0, max_value=10**6), st.tuples(
        st.sampled_from(HEADER_FIELDS), st.sampled_from(["F32", "I64", "BOOL", "F8_E4M3", "F16", "XX", [], [3], [0, 8],
                                                         [10**12, 10**12 + 4], [-4, 0], 5, None]))),
    st.tuples(st.just("truncate"), st.none(), st.floats(min_value=0.0, max_value=0.99)),
    st.tuples(st.just("index"), st.none(), st.sampled_from(["model.safetensors", "../model.safetensors", "/etc/passwd",
                                                            "weights.safetensors", "pytorch_model.bin", "", 3, None])),
)


@FUZZ
@given(mutation=MUTATIONS)
def test_load_model_on_mutated_tiny_checkpoints(tmp_path_factory, tiny_files, mutation):
    tmp = tmp_path_factory.mktemp("mutated")
    try:
        path = mutated_copy(tmp, tiny_files, mutation)
    except (ValueError, TypeError):  # json cannot write this value: nothing to load
        return
    try:
        m = dg.load_model(path)
    except DGemmaError:
        return
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with torch.inference_mode():  # what loaded must also run
        r = dg.generate(m, input_ids=[5, 6, 7], max_new_tokens=4, max_denoising_steps=2, seed=0)
    assert r.token_ids.shape == (1, 4)


# ---- trace files -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trace_document(model):
    trace = dg.DenoisingTrace.from_model(model)
    dg.generate(model, input_ids=[5, 6, 7], max_new_tokens=32, max_denoising_steps=3, seed=1, on_step=trace.record,
                record_topk=2)
    return trace.finish().to_document()


def paths_of(doc, prefix=()):
    """Every (path, value) in a JSON document, depth first."""
    out = [(prefix, doc)]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_of(v, prefix + (k,))
    elif isinstance(doc, list) and len(doc) <= 8:
        for i, v in enumerate(doc):
            out += paths_of(v, prefix + (i,))
    return out


@FUZZ
@given(picks=st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), JSON_JUNK | st.text(max_size=8)),
                      min_size=1, max_size=3))
def test_trace_files_load_or_raise_the_kits_error(tmp_path_factory, trace_document, picks):
    doc = copy.deepcopy(trace_document)
    for index, new in picks:
        places = paths_of(doc)[1:]
        where, _ = places[index % len(places)]
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        parent[where[-1]] = new
    tmp = tmp_path_factory.mktemp("trace")
    path = tmp / "trace.json"
    try:
        path.write_text(json.dumps(doc, allow_nan=True))
    except (ValueError, TypeError):
        return
    try:
        trace = dg.DenoisingTrace.load(path)
        trace.save_html(tmp / "player.html")
    except DGemmaError:
        return
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert len(trace.rounds) >= 0


def test_peak_memory_stayed_bounded():
    """Runs after the fuzzers above (file order): no input made the process balloon."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**30:.1f} GiB"
