"""Nothing in the fast round's body could break a CUDA graph, checked on a CPU.

One fast denoising round (after a warm-up round) runs with the Triton kernels under the
interpreter, inside a TorchDispatchMode that records every operation a graph cannot hold: host
syncs (.item(), bool() or int() of a tensor, .cpu(), .tolist(), .numpy()), data-dependent shapes
(nonzero, masked_select, boolean-mask indexing, unique, repeat_interleave without output_size),
tensors made from Python data (on a GPU a host-to-device copy, frozen into the graph), and tensors
made in the round that outlive it other than the static buffers (lazily cached state, which a
graph would leave pointing into its private memory pool). The interpreter's own work inside a
kernel launch (copies to and from numpy) is not the round's: on a GPU a launch is one kernel.
"""

from __future__ import annotations

import contextlib
import gc
import os
import weakref

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed: pip install -e '.[dev]' brings it (CPU interpreter)")

from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

import dgemma_helpers as dg  # noqa: E402
from dgemma_helpers.fast import FastStep  # noqa: E402
from dgemma_helpers.generation import CanvasState, TorchStep, prefill, resolve_settings  # noqa: E402
from dgemma_helpers.fast.quant import quantize_experts  # noqa: E402
from dgemma_helpers.rng import CounterRNG  # noqa: E402

aten = torch.ops.aten
HOST_SYNCS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.allclose}
DYNAMIC_SHAPES = {aten.nonzero, aten.masked_select, aten._unique, aten._unique2, aten.unique_dim,
                  aten.unique_consecutive, aten.argwhere}


class GraphSafety(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.made: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in HOST_SYNCS:
            self.problems.append(f"host sync: {func}")
        if packet in DYNAMIC_SHAPES:
            self.problems.append(f"data-dependent shape: {func}")
        if packet is aten.repeat_interleave and kwargs.get("output_size") is None:
            self.problems.append(f"data-dependent shape: {func} without output_size")
        if packet in (aten.index, aten.index_put, aten.index_put_) and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ())):
            self.problems.append(f"boolean-mask indexing: {func}")
        if packet in (aten.lift_fresh, aten.lift_fresh_copy):
            self.problems.append(f"a tensor made from Python data: {func}")
        if packet is aten._to_copy and "device" in kwargs and kwargs["device"] != args[0].device:
            self.problems.append(f"device copy: {func} to {kwargs['device']}")
        out = func(*args, **kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.made.append(weakref.ref(t))
        return out


@contextlib.contextmanager
def checked(mode: GraphSafety):
    """The mode on; kernel launches run outside it; host reads that bypass dispatch are recorded."""
    run = InterpretedFunction.run

    def launch(self, *args, **kwargs):
        with _disable_current_modes():
            return run(self, *args, **kwargs)

    def host_read(name):
        original = getattr(torch.Tensor, name)

        def recorded(self, *args, **kwargs):
            mode.problems.append(f"host sync: Tensor.{name}()")
            return original(self, *args, **kwargs)

        return original, recorded

    patched = {name: host_read(name) for name in ("cpu", "tolist", "numpy")}
    InterpretedFunction.run = launch
    for name, (_, recorded) in patched.items():
        setattr(torch.Tensor, name, recorded)
    try:
        with mode:
            yield mode
    finally:
        InterpretedFunction.run = run
        for name, (original, _) in patched.items():
            setattr(torch.Tensor, name, original)


def outlived(mode: GraphSafety, static: list[torch.Tensor]) -> list[str]:
    gc.collect()
    keep = {t.untyped_storage().data_ptr() for t in static}
    alive = [r() for r in mode.made]
    return [f"{tuple(t.shape)} {t.dtype}" for t in alive
            if t is not None and t.untyped_storage().data_ptr() not in keep and t.numel() > 0]


def fast_round_setup(model, *, pins: bool = False, done_row: bool = False):
    settings = resolve_settings(model, dict(confidence_threshold=0.5))
    B, L, V = 2, model.config.canvas_length, model.config.vocab_size
    ids = torch.randint(3, V, (B, 7), generator=torch.Generator().manual_seed(0))
    cache = dg.KVCache(model.config, B, 7 + L, device="cpu", dtype=model.dtype)
    prefill(model, ids, cache)
    noise = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(1))
    state = CanvasState(canvas=noise, argmax=noise, soft=None, done=torch.tensor([False, done_row]))
    if pins:
        state.pins = torch.zeros(B, L, dtype=torch.bool)
        state.pins[:, :3] = True
        state.pinned_ids = noise
    step = FastStep(model, settings, CounterRNG([3, 4], B), kernels="triton")
    step.cache = cache
    step(state, 0, 0)  # warm-up round
    b = step.buffers
    static = [b.canvas, b.argmax, b.pinned_ids, b.pins, b.accepted, b.done, b.entropy, b.soft, b.temperature,
              b.seed_words, b.canvas_index, b.step, b.stop.buffer, b.cache.positions, b.cache.full_mask, b.cache.sliding_mask,
              *[k for k in cache.keys if k is not None], *cache.values, b.cache.slot_positions]
    return step, static


@pytest.mark.parametrize("variant", ["plain", "pins and a finished row", "fp8 experts"])
def test_fast_round_holds_nothing_a_cuda_graph_cannot(checkpoint, ours, variant):
    model = ours(checkpoint("ring"))
    if variant == "fp8 experts":
        model = quantize_experts(dg.load_model(checkpoint("ring"), device="cpu", dtype="float32"))
    step, static = fast_round_setup(model, pins=variant != "plain", done_row=variant != "plain")
    with torch.inference_mode(), checked(GraphSafety()) as mode:
        step.graph.round()
    assert mode.problems == []
    assert outlived(mode, static) == []
    assert len(mode.made) > 100  # the round really ran under the mode


def test_the_check_finds_what_the_pytorch_step_does(checkpoint, ours):
    """The PyTorch step samples only the accepted positions (nonzero: a data-dependent shape) and
    builds its masks per canvas: the check must see that, or it checks nothing."""
    model = ours(checkpoint("ring"))
    settings = resolve_settings(model, {})
    L, V = model.config.canvas_length, model.config.vocab_size
    cache = dg.KVCache(model.config, 1, 4 + L, device="cpu", dtype=model.dtype)
    prefill(model, torch.tensor([[5, 6, 7, 8]]), cache)
    noise = torch.randint(0, V, (1, L), generator=torch.Generator().manual_seed(1))
    state = CanvasState(canvas=noise, argmax=noise, soft=None, done=torch.tensor([False]))
    with torch.inference_mode(), checked(GraphSafety()) as mode:
        step = TorchStep(model, settings, CounterRNG(3, 1))
        step.cache = cache
        step(state, 0, 0)
    assert any("nonzero" in p for p in mode.problems)
