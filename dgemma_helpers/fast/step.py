"""FastStep: the denoising round with the fused kernels on, captured once per model and shape as a
CUDA graph and replayed for every round of every later generate() call of that shape.

A drop-in for generation.TorchStep: the model's own `denoise` over a StaticCanvasCache inside
dgemma_kernels.fused() (RMSNorm and Experts then call the kernels), the fused head, and
sampler.update_canvas. What a graph needs on top:
  * static buffers (StaticRound) for the canvas state and the round's scalars, filled by async
    copies, so no round syncs the host; the rows' RNG keys are derived inside the graph
    (rng.stream_keys), and the fused head's Gumbel-max draw is CounterRNG's draw;
  * no branch on device values: stopped rows are kept with torch.where, pins are a mask that may
    be all False, the first round's self-conditioning input is a zeroed buffer (its MLP maps zeros
    to zeros).
Graphs live per model (freed with it), keyed by batch, cache capacity (rounded up to CAPACITY_STEP
so similar prompts share one), stability threshold, dtype, device, kernels and fp8 experts.
Without CUDA (tests, the compile check on meta tensors) the same body runs eagerly.

With path=None a failure of the first round (a kernel that does not compile on this GPU) is a
one-line warning, and the PyTorch step runs the rest of the call (nothing is lost: the fast step
writes the canvas state only after a round succeeds); a later failure, or a forced path="fast", raises.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import dgemma_kernels as kernels
import torch

from ..cache import KVCache, StaticCanvasCache
from ..config import GenerationSettings
from ..model import DiffusionGemma
from ..rng import NOISE_STREAM, SAMPLE_STREAM, CounterRNG, noise_ids, stream_keys
from ..sampler import StableAndConfident, update_canvas
from .quant import is_quantized

CAPACITY_STEP = 1024  # cache slots a graph's KV cache is rounded up to (10 MiB of the official model's)
KEPT_GRAPHS = 2  # graphs kept per model, the most recently used (each holds its KV cache)


class StaticStop(StableAndConfident):
    """StableAndConfident with its history in one static buffer: the parent's update (a roll into
    a new tensor) is copied back in place, so a graph that captured it replays it correctly."""

    def __init__(self, stability_threshold: int, confidence: torch.Tensor, shape: tuple[int, int],
                 device: torch.device) -> None:
        super().__init__(stability_threshold, confidence)  # a device scalar: one graph serves any threshold
        self.buffer = torch.full((max(stability_threshold, 1), *shape), -1, dtype=torch.long, device=device)
        self.history = self.buffer

    def reset(self) -> None:
        self.buffer.fill_(-1)
        self.history = self.buffer

    def __call__(self, argmax_canvas: torch.Tensor, mean_entropy: torch.Tensor) -> torch.Tensor:
        out = super().__call__(argmax_canvas, mean_entropy)
        if self.history is not self.buffer:
            self.buffer.copy_(self.history)
            self.history = self.buffer
        return out


class StaticRound:
    """The state of a batch's canvas in buffers allocated once (the RoundInput update_canvas reads)."""

    def __init__(self, model: DiffusionGemma, stability_threshold: int, cache: KVCache) -> None:
        B, L, dev = cache.batch_size, cache.scratch, model.device
        long = dict(dtype=torch.long, device=dev)
        self.cache = StaticCanvasCache(cache)
        self.canvas = torch.zeros(B, L, **long)
        self.argmax = torch.zeros(B, L, **long)
        self.pinned_ids = torch.zeros(B, L, **long)
        self.pins = torch.zeros(B, L, dtype=torch.bool, device=dev)
        self.accepted = torch.zeros(B, L, dtype=torch.bool, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.entropy = torch.zeros(B, L, dtype=torch.float32, device=dev)
        self.soft = torch.zeros(B, L, model.config.hidden_size, dtype=model.dtype, device=dev)
        self.temperature = torch.ones(1, dtype=torch.float32, device=dev)
        self.entropy_bound = torch.zeros((), dtype=torch.float32, device=dev)
        self.confidence = torch.zeros((), dtype=torch.float32, device=dev)
        self.seed_words = torch.zeros(B, 4, **long)  # CounterRNG.words of this generation
        self.canvas_index = torch.zeros(1, **long)
        self.step = torch.zeros(1, **long)
        self.stop = StaticStop(stability_threshold, self.confidence, (B, L), dev)

    def load(self, state) -> None:
        """A new canvas: its starting state into the buffers (outside any graph)."""
        self.canvas.copy_(state.canvas)
        self.argmax.copy_(state.argmax)
        self.done.copy_(state.done)
        if state.soft is None:
            self.soft.zero_()
        else:
            self.soft.copy_(state.soft)
        if state.pins is None:
            self.pins.zero_()
        else:
            self.pins.copy_(state.pins)
            self.pinned_ids.copy_(state.pinned_ids)
        self.stop.reset()
        self.cache.refresh()


def fast_round(model: DiffusionGemma, buffers: StaticRound, kernel_kind: str = "auto") -> None:
    """One round on the static buffers: model.denoise with the fused kernels, the fused head,
    update_canvas; the same update as generation.TorchStep. What a CUDA graph captures."""
    b = buffers
    B, L = b.canvas.shape
    with kernels.fused(kernel_kind):
        hidden = model.denoise(b.canvas, b.cache, b.soft)
        sample_keys = stream_keys(b.seed_words, SAMPLE_STREAM, b.canvas_index, b.step)
        head = kernels.run_denoise_head(hidden.reshape(B * L, -1), model.embed_tokens.weight, b.temperature, sample_keys,
                                    model.config.final_logit_softcapping, model.embed_scale)
    out = update_canvas(b, head.entropy.view(B, L), head.argmax.view(B, L),
                        lambda accepted: head.sample.view(B, L),
                        lambda: noise_ids(stream_keys(b.seed_words, NOISE_STREAM, b.canvas_index, b.step + 1), L,
                                          model.config.vocab_size),
                        b.entropy_bound, b.stop)
    for name in ("canvas", "argmax", "done", "accepted", "entropy"):
        getattr(b, name).copy_(getattr(out, name))
    b.soft.copy_(head.soft.view(B, L, -1))


def capture(round_fn: Callable[[], None], restore: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """`round_fn` as one CUDA graph: a warm-up run on a side stream (compiles kernels, fills lazy
    caches), `restore()` to undo its updates, then the capture. Returns the graph's replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        round_fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    restore()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        round_fn()
    return graph.replay


def uses_graphs(device: torch.device) -> bool:
    return device.type == "cuda"


class GraphRound:
    """One captured round and what it reads: the static buffers, their KV cache, the graph."""

    def __init__(self, model: DiffusionGemma, kernel_kind: str, stability_threshold: int, cache: KVCache,
                 use_graph: bool) -> None:
        self.model = weakref.ref(model)  # the model keeps its rounds, never the other way round
        self.kernel_kind, self.cache, self.use_graph = kernel_kind, cache, use_graph
        self.buffers = StaticRound(model, stability_threshold, cache)
        self.replay: Callable[[], None] | None = None
        self.captures = 0

    def round(self) -> None:
        fast_round(self.model(), self.buffers, self.kernel_kind)

    def run(self, restore: Callable[[], None]) -> None:
        if not self.use_graph:
            self.round()
            return
        if self.replay is None:
            self.replay = capture(self.round, restore, self.model().device)
            self.captures += 1
        self.replay()


# Each model's graphs, most recently used last; an entry goes when its model does.
_ROUNDS: weakref.WeakKeyDictionary[DiffusionGemma, OrderedDict] = weakref.WeakKeyDictionary()


def graph_rounds(model: DiffusionGemma) -> OrderedDict:
    """The graphs kept for `model` (key -> GraphRound), for inspection; `.clear()` frees them."""
    return _ROUNDS.setdefault(model, OrderedDict())


class FastStep:
    """Call it like generation.TorchStep. One per generate() call; the graph it replays is kept by
    the model for the next call of the same shape (`new_cache`). `kernels`: "auto" (Triton where it
    runs, else the PyTorch references), "triton" or "reference"."""

    path = "fast"
    needs_probs = False  # the fused head never holds the [batch, canvas, vocab] probabilities

    def __init__(self, model: DiffusionGemma, settings: GenerationSettings, source: CounterRNG, *,
                 fallback=None, kernels: str = "auto", use_graph: bool | None = None) -> None:
        self.model, self.settings, self.source, self.fallback = model, settings, source, fallback
        self.kernel_kind = kernels
        self.use_graph = uses_graphs(model.device) if use_graph is None else use_graph
        self.fallback_reason: str | None = None
        self.graph: GraphRound | None = None
        self.cache: KVCache | None = None
        self._state = None
        self.rounds = 0  # rounds run (for tests and benchmarks)

    @property
    def buffers(self) -> StaticRound | None:
        return None if self.graph is None else self.graph.buffers

    @property
    def head_kind(self) -> str:
        return "fused"

    @head_kind.setter
    def head_kind(self, kind: str) -> None:  # what the memory estimate picked: for the fallback's head
        if self.fallback is not None:
            self.fallback.head_kind = kind

    @staticmethod
    def capacity(tokens: int) -> int:
        """The KV cache capacity new_cache gives for `tokens`: rounded up to CAPACITY_STEP."""
        return -(-tokens // CAPACITY_STEP) * CAPACITY_STEP

    def new_cache(self, batch: int, tokens: int) -> KVCache:
        """An empty KV cache for `tokens` committed tokens: the one a kept graph reads (its graph is
        then replayed, not captured again), or a new one with its graph to come."""
        m = self.model
        key = (batch, self.capacity(tokens), self.settings.stability_threshold, m.dtype, m.device, self.kernel_kind,
               is_quantized(m))
        rounds = graph_rounds(m)
        graph = rounds.pop(key, None)
        if graph is None:
            while len(rounds) >= KEPT_GRAPHS:  # the least recently used goes first
                rounds.popitem(last=False)
            cache = KVCache(m.config, batch, key[1], device=m.device, dtype=m.dtype)
            graph = GraphRound(m, self.kernel_kind, self.settings.stability_threshold, cache, self.use_graph)
        else:
            graph.cache.reset()
        rounds[key] = graph
        self.graph, self.cache = graph, graph.cache
        return graph.cache

    def __call__(self, state, canvas_index: int, round_index: int, record: bool = False) -> dict[str, Any]:
        if self.fallback_reason is not None:
            return self.fallback(state, canvas_index, round_index, record)
        try:
            return self._round(state, canvas_index, round_index, record)
        except Exception as e:  # noqa: BLE001 - reported and recorded, then the reference step takes over
            if self.fallback is None or self.rounds:
                raise
            self.fallback_reason = f"the fast path failed on its first round: {type(e).__name__}: {str(e)[:300]}"
            logging.getLogger("dgemma_helpers").warning(
                "%s; using the PyTorch path (path='torch' skips the attempt)", self.fallback_reason)
            self.path, self.fallback.cache = "torch", self.cache
            return self.fallback(state, canvas_index, round_index, record)

    def _round(self, state, canvas_index: int, round_index: int, record: bool) -> dict[str, Any]:
        if self.graph is None or self.graph.cache is not self.cache:  # a cache of the caller's own
            self.graph = GraphRound(self.model, self.kernel_kind, self.settings.stability_threshold, self.cache,
                                    self.use_graph)
        b = self.graph.buffers
        if state is not self._state:  # a new canvas (or a new call): its state and this call's settings
            b.load(state)
            b.seed_words.copy_(self.source.words)
            b.entropy_bound.fill_(self.settings.entropy_bound)
            b.confidence.fill_(self.settings.confidence_threshold)
            self._state = state
        # Scalars of this round: fills are asynchronous kernel launches, no host sync.
        b.temperature.fill_(self.settings.temperature(self.settings.max_denoising_steps - round_index))
        b.canvas_index.fill_(canvas_index)
        b.step.fill_(round_index)
        self.graph.run(restore=lambda: b.load(state))
        self.rounds += 1
        state.canvas, state.argmax, state.soft, state.done = b.canvas, b.argmax, b.soft, b.done
        if not record:
            return {}
        return dict(canvas_ids=b.canvas, argmax_ids=b.argmax, accepted=b.accepted, entropy=b.entropy, pinned=state.pins)
