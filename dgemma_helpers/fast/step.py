"""FastStepper: one denoising round with fused kernels, captured once per generation as a CUDA
graph and replayed for every round of every canvas.

It is a drop-in for generation.denoise_step (same call, same updates to the CanvasState, same
record fields), with three differences that a graph needs:
  * static buffers: canvas, argmax, soft embedding, done flags, pins, temperature and the two RNG
    stream keys live in tensors allocated once; each round copies its few scalars in (async
    fills, no host sync) and replays the graph;
  * no branch on device values: rows that already stopped are kept with torch.where every round
    (denoise_step tests `done.any()` on the host first), pins are a mask that may be all False;
  * the sample comes from the fused head's Gumbel-max draw at every position, which at the
    accepted positions is CounterRNG's draw (same hash, same key), so the tokens are the same.
The only host read per round is generate()'s `done.all()` stop test.

Capture happens on the first round: a warm-up run on a side stream (compiles the Triton kernels,
creates lazily cached tensors), the inputs restored, then the capture; the KV cache's canvas slots
are rewritten by every round, so the warm-up leaves nothing behind. Without CUDA (tests) the same
body runs eagerly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..cache import KVCache
from ..config import GenerationSettings
from ..model import DiffusionGemma
from ..rng import _NOISE, _SAMPLE, CounterRNG, noise_ids, stream_key
from ..sampler import StableAndConfident, sampler_round
from .layer import fused_layers
from .ops import Ops, kernel_ops
from .static_cache import StaticDenoiseView


class StaticStop(StableAndConfident):
    """StableAndConfident with its history in one static buffer: the parent's update (a roll into
    a new tensor) is copied back in place, so a graph that captured it replays it correctly."""

    def __init__(self, stability_threshold: int, confidence_threshold: float, shape: tuple[int, int],
                 device: torch.device) -> None:
        super().__init__(stability_threshold, confidence_threshold)
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


class FastStepper:
    """Call it like generation.denoise_step. One instance per generate() call."""

    def __init__(self, model: DiffusionGemma, settings: GenerationSettings, *, use_graph: bool | None = None,
                 ops: Ops | None = None) -> None:
        self.model = model
        self.settings = settings
        self.device = model.device
        self.ops = ops or kernel_ops(self.device)
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        self.view: StaticDenoiseView | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._state = None
        self.replays = 0  # rounds run (for tests and benchmarks)

    # ---- buffers ------------------------------------------------------------------------------
    def _allocate(self, cache: KVCache, B: int, L: int) -> None:
        dev, m = self.device, self.model
        self.view = StaticDenoiseView(cache)
        long = dict(dtype=torch.long, device=dev)
        self.canvas = torch.zeros(B, L, **long)
        self.argmax = torch.zeros(B, L, **long)
        self.pinned_ids = torch.zeros(B, L, **long)
        self.pins = torch.zeros(B, L, dtype=torch.bool, device=dev)
        self.accepted = torch.zeros(B, L, dtype=torch.bool, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.entropy = torch.zeros(B, L, dtype=torch.float32, device=dev)
        self.soft = torch.zeros(B, L, m.config.hidden_size, dtype=m.dtype, device=dev)
        self.temperature = torch.ones(1, dtype=torch.float32, device=dev)
        self.sample_key = torch.zeros(1, **long)
        self.noise_key = torch.zeros(1, **long)
        self.stop = StaticStop(self.settings.stability_threshold, self.settings.confidence_threshold, (B, L), dev)
        w = m.embed_tokens.weight
        self.embed_scale = torch.tensor(m.config.embed_scale, dtype=w.dtype, device=dev)

    def _begin_canvas(self, state) -> None:
        """A new canvas: load its starting state into the static buffers (outside the graph)."""
        self.canvas.copy_(state.canvas)
        self.argmax.copy_(state.argmax)
        self.done.copy_(state.done)
        if state.soft is None:  # the first round's zero signal: exactly model.denoise(soft=None)
            self.soft.zero_()
        else:
            self.soft.copy_(state.soft)
        if state.pins is None:
            self.pins.zero_()
        else:
            self.pins.copy_(state.pins)
            self.pinned_ids.copy_(state.pinned_ids)
        self.stop.reset()
        self.view.refresh()
        self._state = state

    # ---- the round ----------------------------------------------------------------------------
    def _denoise(self) -> torch.Tensor:
        """model.denoise over the static buffers. Its embedding scale is a tensor made once here,
        because model.embed builds one per call (a host-to-device copy, which a graph cannot hold),
        and the RoPE memo is dropped so that the tables are computed from the static positions."""
        m = self.model
        x = m.self_conditioning(F.embedding(self.canvas, m.embed_tokens.weight) * self.embed_scale, self.soft)
        positions, masks = self.view.begin_denoise()
        m._rope_memo = None
        with fused_layers(m, self.ops):
            hidden = m._run_layers(x, positions, masks, self.view, encoder=False)
        m._rope_memo = None
        return hidden

    def _body(self) -> None:
        """One round on the static buffers; the same update as generation.denoise_step."""
        m, s = self.model, self.settings
        B, L = self.canvas.shape
        hidden = self._denoise()
        head = self.ops.denoise_head(hidden.reshape(B * L, -1), m.embed_tokens.weight, self.temperature,
                                     self.sample_key, m.config.final_logit_softcapping)
        out = sampler_round(self, head.entropy.view(B, L), head.argmax.view(B, L), head.soft.view(B, L, -1),
                            lambda accepted: head.sample.view(B, L),
                            lambda: noise_ids(self.noise_key, B, L, m.config.vocab_size, self.device),
                            s.entropy_bound, self.stop)
        self.canvas.copy_(out.canvas)
        self.argmax.copy_(out.argmax)
        self.soft.copy_(out.soft)
        self.done.copy_(out.done)
        self.accepted.copy_(out.accepted)
        self.entropy.copy_(out.entropy)

    def _capture(self, state) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._body()  # warm-up: compiles kernels, fills lazy caches
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._begin_canvas(state)  # undo the warm-up's updates
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body()

    # ---- denoise_step's signature -------------------------------------------------------------
    def __call__(self, model: DiffusionGemma, cache: KVCache, state, temperature: float, settings: GenerationSettings,
                 stop: StableAndConfident, source: CounterRNG, canvas_index: int, step: int, record: bool = False,
                 topk: int = 0) -> dict[str, Any]:
        B, L = state.canvas.shape
        if self.view is None or self.view.cache is not cache:
            self._allocate(cache, B, L)
            self.graph = None
        if state is not self._state:
            self._begin_canvas(state)
        # Scalars of this round: fills are asynchronous kernel launches, no host sync.
        self.temperature.fill_(temperature)
        self.sample_key.fill_(stream_key(source.seed, _SAMPLE, canvas_index, step))
        self.noise_key.fill_(stream_key(source.seed, _NOISE, canvas_index, step + 1))
        if not self.use_graph:
            self._body()
        elif self.graph is None:
            self._capture(state)
            self.graph.replay()
        else:
            self.graph.replay()
        self.replays += 1
        state.canvas, state.argmax, state.soft, state.done = self.canvas, self.argmax, self.soft, self.done
        if not record:
            return {}
        # Copies, also on a CPU (where .cpu() would return the static buffer the next round overwrites).
        snap = lambda t: t.to("cpu", copy=True)  # noqa: E731
        return dict(canvas_ids=snap(self.canvas), argmax_ids=snap(self.argmax), accepted=snap(self.accepted),
                    entropy=snap(self.entropy), pinned=None if state.pins is None else state.pins.cpu())
