"""The fast path's selection logic and its step logic, on a CPU (no Triton needed): FastStep
with the kernels' PyTorch references must reproduce the PyTorch path token for token."""

from __future__ import annotations

import pytest
import torch

import dgemma_helpers as dg
import dgemma_helpers.generation as gen
from dgemma_helpers import devices
from dgemma_helpers.errors import DeviceError, InputError
from dgemma_helpers.fast.step import StaticStop
from dgemma_helpers.sampler import StableAndConfident

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    """No interpreter here: the fast path uses the kernels' PyTorch references (tests/test_kernels.py
    runs the Triton kernels themselves)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_auto_never_picks_fast_on_cpu():
    for path in (None, "auto"):
        chosen, reason = devices.select_path(path, CPU, "counter", 0)
        assert chosen == "torch" and "needs a CUDA GPU" in reason


def test_auto_picks_fast_on_a_capable_gpu(monkeypatch):
    monkeypatch.setattr(devices, "triton_support", lambda device: (True, "test"))
    monkeypatch.setattr(devices, "has_fp8", lambda device: False)
    assert devices.select_path(None, CUDA, "counter", 0) == ("fast", None)
    assert "full probabilities" in devices.select_path(None, CUDA, "transformers", 0)[1]  # torch, and why
    assert devices.select_path(None, CUDA, "counter", 5)[0] == "torch"  # top-k recording likewise
    assert "8.9" in devices.select_path(None, CUDA, "counter", 0, fp8=True)[1]  # no fp8 conversions on this GPU
    assert devices.select_path("torch", CUDA, "counter", 0) == ("torch", None)  # asked for: no fallback reason
    monkeypatch.setattr(devices, "triton_support", lambda device: (False, "triton is not installed"))
    assert devices.select_path(None, CUDA, "counter", 0) == ("torch", "triton is not installed")


def test_forced_fast_path_errors_name_the_fix(monkeypatch):
    with pytest.raises(InputError, match="rng='counter' or path='torch'"):
        devices.select_path("fast", CPU, "transformers", 0)
    with pytest.raises(InputError, match="record_topk=0"):
        devices.select_path("fast", CPU, "counter", 3)
    with pytest.raises(InputError, match="'auto', 'torch', 'fast'"):
        devices.select_path("cuda-graph", CPU, "counter", 0)
    monkeypatch.setattr(devices, "triton_support", lambda device: (False, "triton is not installed (pip install triton"))
    with pytest.raises(DeviceError, match="pip install triton"):
        devices.select_path("fast", CUDA, "counter", 0)
    assert devices.select_path("fast", CPU, "counter", 0) == ("fast", None)  # CPUs run it eagerly, for tests


def test_triton_support_on_cpu(monkeypatch):
    ok, why = devices.triton_support(CPU)
    assert not ok and why
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    ok, why = devices.triton_support(CPU)
    assert ok == (devices.importlib.util.find_spec("triton") is not None)


def test_result_says_which_path_ran_and_why(checkpoint, ours):
    model = ours(checkpoint("plain"))
    kw = dict(input_ids=[5, 6, 7], seed=0, max_new_tokens=8, max_denoising_steps=2)
    auto = dg.generate(model, **kw)
    assert (auto.path, auto.fallback_reason) == ("torch", "the fast path needs a CUDA GPU; the model is on 'cpu'")
    forced = dg.generate(model, path="fast", **kw)
    assert (forced.path, forced.fallback_reason) == ("fast", None)
    assert (dg.generate(model, path="torch", **kw).fallback_reason) is None


def test_generate_rejects_bad_path(checkpoint, ours):
    model = ours(checkpoint("plain"))
    with pytest.raises(InputError, match="path must be one of"):
        dg.generate(model, input_ids=[5, 6, 7], path="graph", max_new_tokens=4)


def test_static_stop_matches_stable_and_confident():
    g = torch.Generator().manual_seed(0)
    for threshold in (0, 1, 2):
        plain, static = StableAndConfident(threshold, 0.5), StaticStop(threshold, torch.tensor(0.5), (3, 4), CPU)
        seq = [torch.randint(0, 2, (3, 4), generator=g) for _ in range(6)]
        for a in seq + seq[-1:] * 3:
            m = torch.rand(3, generator=g)
            assert torch.equal(plain(a, m), static(a, m))
        static.reset()
        plain.reset()
        assert torch.equal(plain(seq[0], torch.zeros(3)), static(seq[0], torch.zeros(3)))


def _both(model, **kw):
    records = {"torch": [], "fast": []}
    results = {p: dg.generate(model, path=p, on_step=records[p].append, **kw) for p in records}
    return results, records


@pytest.mark.parametrize("shape", ["confident", "ring"])
def test_fast_step_reproduces_the_torch_path(checkpoint, ours, shape):
    """Several canvases (the static cache view is refreshed between them), a left-padded batch, and
    adaptive stopping on: the same tokens, rounds and per-round records."""
    model = ours(checkpoint(shape))
    L = model.config.canvas_length
    results, records = _both(model, input_ids=[[5, 6, 7, 8, 9, 10, 11], [3, 4, 5]], seed=3, max_new_tokens=3 * L,
                             max_denoising_steps=6, eos_token_ids=[], confidence_threshold=0.5)
    a, b = results["torch"], results["fast"]
    assert torch.equal(a.token_ids, b.token_ids)
    assert a.steps_per_canvas == b.steps_per_canvas and len(a.steps_per_canvas) == 3
    assert len(records["torch"]) == len(records["fast"])
    for r, f in zip(records["torch"], records["fast"]):
        assert torch.equal(r.canvas_ids, f.canvas_ids) and torch.equal(r.argmax_ids, f.argmax_ids)
        assert torch.equal(r.accepted, f.accepted) and torch.equal(r.active, f.active)
        assert torch.allclose(r.entropy, f.entropy, atol=1e-4, rtol=1e-4)


def test_fast_step_with_pins_and_early_stop(checkpoint, ours):
    model = ours(checkpoint("confident"))
    L = model.config.canvas_length
    canvas = torch.randint(0, model.config.vocab_size, (L,), generator=torch.Generator().manual_seed(2))
    results, _ = _both(model, input_ids=[5, 6, 7], seed=1, max_new_tokens=2 * L, initial_canvas=canvas,
                       pinned=[0, 3, 4], max_denoising_steps=12, eos_token_ids=[])
    a, b = results["torch"], results["fast"]
    assert torch.equal(a.token_ids, b.token_ids)
    assert a.steps_per_canvas == b.steps_per_canvas
    assert torch.equal(b.token_ids[0, [0, 3, 4]], canvas[[0, 3, 4]])


def test_fast_step_rows_stopping_at_different_rounds(checkpoint, ours):
    """Adaptive stop firing (stability 0: the entropy test alone), rows finishing at different
    rounds: the fast step freezes finished rows without a host branch, with the same outcome."""
    model = ours(checkpoint("plain"))
    fired = False
    for threshold in (6.88, 100.0):  # near log(vocab) the rows of this uncertain model may part ways
        results, _ = _both(model, input_ids=[[5, 6, 7, 8], [9, 10, 11, 12], [13, 14]], seed=4,
                           max_new_tokens=model.config.canvas_length, max_denoising_steps=8, eos_token_ids=[],
                           stability_threshold=0, confidence_threshold=threshold)
        a, b = results["torch"], results["fast"]
        assert torch.equal(a.token_ids, b.token_ids)
        assert a.steps_per_canvas == b.steps_per_canvas
        fired |= min(a.steps_per_canvas[0]) < 8
    assert fired


def test_auto_path_falls_back_to_torch_when_the_fast_path_fails_first(checkpoint, ours, capfd, monkeypatch):
    """path=None: the fast step (selected as on a GPU) fails on its first round, the PyTorch step runs
    the call and the result says why; a failure after the first round, or of a forced path, is raised."""
    from dgemma_helpers.fast import step as fast_step

    model = ours(checkpoint("plain"))
    monkeypatch.setattr(gen, "select_path", lambda path, *a, **k: ("torch" if path == "torch" else "fast", None))
    working = fast_step.fast_round

    def broken(*args, **kwargs):
        raise RuntimeError("kernel does not compile here")

    monkeypatch.setattr(fast_step, "fast_round", broken)
    result = dg.generate(model, input_ids=[5, 6, 7], seed=0, max_new_tokens=16, max_denoising_steps=4)
    with pytest.raises(RuntimeError, match="does not compile"):  # forced path='fast': never a fallback
        dg.generate(model, input_ids=[5, 6, 7], seed=0, max_new_tokens=16, max_denoising_steps=4, path="fast")
    calls = []

    def fails_later(*args, **kwargs):  # the first round runs, the second fails
        calls.append(1)
        return working(*args, **kwargs) if len(calls) == 1 else broken()

    monkeypatch.setattr(fast_step, "fast_round", fails_later)
    with pytest.raises(RuntimeError, match="does not compile"):
        dg.generate(model, input_ids=[5, 6, 7], seed=0, max_new_tokens=16, max_denoising_steps=4)
    expected = dg.generate(model, input_ids=[5, 6, 7], seed=0, max_new_tokens=16, max_denoising_steps=4, path="torch")
    assert torch.equal(result.token_ids, expected.token_ids)
    assert "fast path failed on its first round" in capfd.readouterr().err
    assert result.path == "torch"
    assert result.fallback_reason == "the fast path failed on its first round: RuntimeError: kernel does not compile here"


def test_kit_cuda_engine_records_a_fallback_as_a_failure_not_as_fast_timings(checkpoint, ours):
    """kit-cuda asks for what users get (path=None); a run that ended on the PyTorch step raises with
    the reason, which the harness records as a failed run."""
    from types import SimpleNamespace

    from dgemma_helpers.benchmarks.engines import KitCudaEngine, Prompts
    from dgemma_helpers.benchmarks.grid import GridPoint

    engine = KitCudaEngine()
    engine.sweep, engine.model = SimpleNamespace(ignore_eos=True, early_stop=False), ours(checkpoint("plain"))
    with pytest.raises(RuntimeError, match="ran the torch path instead of the fast path: the fast path needs a CUDA"):
        engine.run(Prompts(texts=["x"], ids=[[5, 6, 7]]), GridPoint(max_new_tokens=8, batch=1, steps=2), seed=0)


def test_the_cuda_graph_is_captured_once_per_shape_and_freed_with_the_model(checkpoint, monkeypatch):
    """generate() replays the graph an earlier call of the same shape captured (CUDA stubbed: a
    "capture" runs the warm-up, restores, and hands back the round itself as the replay). A kept graph
    gives the tokens a fresh one gives; a new batch size is a new shape; the graphs go with the model."""
    import gc
    import weakref

    from dgemma_helpers.fast import step

    captures = []

    def fake_capture(round_fn, restore, device):
        round_fn()
        restore()
        captures.append(device)
        return round_fn

    monkeypatch.setattr(step, "uses_graphs", lambda device: True)
    monkeypatch.setattr(step, "capture", fake_capture)
    model = dg.load_model(checkpoint("plain"), device="cpu", dtype="float32")
    run = lambda ids, seed: dg.generate(model, input_ids=ids, seed=seed, max_new_tokens=48,  # noqa: E731
                                        max_denoising_steps=6, path="fast")
    first = run([5, 6, 7], 0)
    second = run([5, 6, 7, 8, 9], 1)  # another prompt length, in the same cache capacity
    assert len(captures) == 1
    assert len(step.graph_rounds(model)) == 1
    run([[5, 6, 7], [8, 9, 10]], 2)  # batch 2: a graph of its own
    assert len(captures) == 2 and len(step.graph_rounds(model)) == 2
    run([5, 6, 7, 8, 9], 1)
    assert len(captures) == 2  # batch 1's graph was kept

    step.graph_rounds(model).clear()
    monkeypatch.setattr(step, "uses_graphs", lambda device: False)  # fresh, uncaptured rounds
    assert torch.equal(run([5, 6, 7], 0).token_ids, first.token_ids)
    assert torch.equal(run([5, 6, 7, 8, 9], 1).token_ids, second.token_ids)
    kept = weakref.ref(next(iter(step.graph_rounds(model).values())))
    del model
    gc.collect()
    assert kept() is None
