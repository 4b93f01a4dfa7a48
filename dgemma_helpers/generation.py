"""Block-autoregressive diffusion generation: a plain function with a per-round callback.

    encode the prompt (causal, fills the KV cache)
    for each canvas:
        start from noise (or the user's initial canvas)
        for remaining = N..1:                               # one denoise_step per round
            logits = denoiser(canvas, cache, self-conditioning)
            accept the low-entropy positions (entropy bound), renoise the rest
            stop early once the argmax canvas is stable and confident
        commit the argmax canvas; pad after EOS; encode it into the cache

Random numbers come from the seed alone (see rng.py): by default a counter-based hash that
samples only the accepted positions; with rng="transformers", a private torch.Generator drawn in
the same order and shapes as transformers' `generate`, so a seed gives the reference's tokens.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch

from .cache import KVCache
from .config import GenerationSettings
from .devices import has_fp8, synchronize, triton_support
from .errors import DeviceError, InputError
from .fast import FastStepper
from .fast.quant import is_quantized
from .head import HeadBuffers, HeadOutput, denoise_head
from .inputs import canvas_inputs, check_call, prompt_inputs, token_id_list
from .memory import PREFILL_CHUNK, cache_capacity, check_fits, fitting_head
from .model import DiffusionGemma
from .rng import CounterRNG, TransformersRNG, make_rng
from .sampler import StableAndConfident, finalize_canvas, sampler_round
from .tokenizer import decode
from .vision import prompt_embeddings

PATHS = ("auto", "torch", "fast")


def prefill(model: DiffusionGemma, ids: torch.Tensor, cache: KVCache, valid: torch.Tensor | None = None, *,
            embeds: torch.Tensor | None = None, blocks: torch.Tensor | None = None,
            on_chunk: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Encode `ids` [B, n] into `cache`, about PREFILL_CHUNK tokens at a time, so that the attention
    masks and activations of a long prompt stay bounded (memory.py counts them). `embeds`/`blocks`:
    an image prompt's (see DiffusionGemma.encode); no chunk splits an image block. Returns the final
    hidden states of the last chunk (enough to predict the next token); `on_chunk(start, hidden)`
    sees every chunk's before it is dropped."""
    hidden = None
    for s, e in pairwise(chunk_bounds(blocks, ids.shape[1], PREFILL_CHUNK)):
        hidden = model.encode(ids[:, s:e], cache, None if valid is None else valid[:, s:e],
                              embeds=None if embeds is None else embeds[:, s:e],
                              blocks=None if blocks is None else blocks[:, s:e])
        if on_chunk is not None:
            on_chunk(s, hidden)
    return hidden


def chunk_bounds(blocks: torch.Tensor | None, n: int, chunk: int = PREFILL_CHUNK) -> list[int]:
    """Chunk boundaries 0 = b0 < b1 < ... = n, about `chunk` apart, never inside an image block (its
    tokens must see each other, and a block split over two encode calls could not): a boundary that
    would fall in one moves back to the block's start, or past its end when the block began the chunk."""
    bounds = [0]
    while bounds[-1] + chunk < n:
        b = bounds[-1] + chunk
        if blocks is not None:
            inside = (blocks[:, b] >= 0) & (blocks[:, b] == blocks[:, b - 1])  # rows whose block spans b
            while bool(inside.any()) and b > bounds[-1] + 1:
                b -= 1
                inside = (blocks[:, b] >= 0) & (blocks[:, b] == blocks[:, b - 1])
            if bool(inside.any()):  # one block fills the whole chunk: end the chunk after it
                b = bounds[-1] + chunk
                while b < n and bool(((blocks[:, b] >= 0) & (blocks[:, b] == blocks[:, b - 1])).any()):
                    b += 1
        bounds.append(b)
    return bounds + [n] if bounds[-1] < n else bounds


@dataclass
class StepRecord:
    """What one denoising round did, for every row of the batch (tensors on the CPU)."""

    canvas_index: int
    step: int  # 1-based round within this canvas
    remaining: int  # transformers' cur_step: N on the first round, counting down
    temperature: float
    canvas_ids: torch.Tensor  # [B, L] the canvas after this round: accepted tokens + fresh noise
    argmax_ids: torch.Tensor  # [B, L] the model's best guess this round (what would be committed)
    accepted: torch.Tensor  # [B, L] bool, positions accepted this round
    entropy: torch.Tensor  # [B, L] entropy of the tempered distribution
    active: torch.Tensor  # [B] bool, rows still denoising (finished rows are frozen)
    pinned: torch.Tensor | None = None  # [B, L] bool, positions held fixed (infilling)
    top_ids: torch.Tensor | None = None  # [B, L, k] most likely tokens, when record_topk > 0
    top_probs: torch.Tensor | None = None


@dataclass
class Timings:
    prefill_s: float = 0.0  # encoding the prompt
    denoise_s: float = 0.0  # all denoising rounds
    commit_s: float = 0.0  # encoding committed canvases
    first_canvas_s: float = 0.0  # from the call to the first committed canvas
    total_s: float = 0.0


@dataclass
class GenerationResult:
    token_ids: torch.Tensor  # [B, n] new tokens (pad after EOS), at most max_new_tokens
    texts: list[str | None]
    prompt_ids: list[list[int]]
    tokens_per_forward: float  # mean over rows of row_tokens_per_forward
    row_tokens_per_forward: list[float]  # tokens returned (non-pad, within max_new_tokens) / the row's denoiser passes
    steps_per_canvas: list[list[int]]  # [canvas][row] denoising rounds each row ran
    settings: GenerationSettings
    timings: Timings = field(default_factory=Timings)
    # transformers' figure: non-pad tokens of the committed canvases / denoiser passes (mean over rows,
    # and per row). It counts whole canvases: max_new_tokens=1 still counts the 255 tokens cut off.
    canvas_tokens_per_forward: float | None = None
    row_canvas_tokens_per_forward: list[float] | None = None
    path: str = "torch"  # the denoising step that ran: "fast" (fused kernels + CUDA graph) or "torch"
    fallback_reason: str | None = None  # why path=None/"auto" ran "torch"; None when it got the path asked for

    @property
    def text(self) -> str | None:
        return self.texts[0]

    @property
    def num_forwards(self) -> int:
        """Denoiser passes the batch ran (each pass covers every row)."""
        return sum(max(steps) for steps in self.steps_per_canvas)


def resolve_settings(model: DiffusionGemma, overrides: dict[str, Any]) -> GenerationSettings:
    base = model.generation_settings or GenerationSettings(eos_token_ids=model.config.eos_token_ids,
                                                           pad_token_id=model.config.pad_token_id)
    if overrides.get("eos_token_ids") is not None:
        overrides["eos_token_ids"] = token_id_list("eos_token_ids", overrides["eos_token_ids"], model.config.vocab_size)
    return base.replace(**overrides)


@torch.inference_mode()
def generate(
    model: DiffusionGemma,
    prompt: str | Sequence[str] | None = None,
    *,
    messages: Sequence[dict] | Sequence[Sequence[dict]] | None = None,
    input_ids: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None = None,
    max_new_tokens: int | None = None,
    max_denoising_steps: int | None = None,
    entropy_bound: float | None = None,
    t_min: float | None = None,
    t_max: float | None = None,
    stability_threshold: int | None = None,
    confidence_threshold: float | None = None,
    eos_token_ids: Sequence[int] | None = None,
    seed: int | Sequence[int] | None = None,
    rng: str = "counter",
    initial_canvas: Sequence[int] | torch.Tensor | None = None,
    pinned: Sequence[int] | torch.Tensor | None = None,
    thinking: bool | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    record_topk: int = 0,
    path: str | None = None,
) -> GenerationResult:
    """Generate text block by block. Give one of `prompt` (str or list of str), `messages` (a chat,
    or a list of chats, through the checkpoint's chat template) or `input_ids`.

    Sampler settings default to the checkpoint's generation_config.json (else the published ones);
    `confidence_threshold=0` switches adaptive stopping off. `initial_canvas` [L] or [B, L] is the
    first canvas to start from; `pinned` (positions, or a bool mask) are never renoised: infilling.
    `on_step` receives a StepRecord after every denoising round. `seed`: one int for the batch (row i
    draws from (seed, i); row 0 equals a batch-of-one run with that seed), or one int per prompt (row i
    equals a batch-of-one run with seed[i]); any Python int is a distinct seed (see rng.py).
    `rng="transformers"` replays the
    reference's random draws (same seed, same tokens as transformers' generate; slower).
    `path`: None/"auto" runs the fused-kernel CUDA-graph step (dgemma_helpers/fast) where it can
    (CUDA + Triton, counter RNG, no top-k), else the PyTorch step; "torch" or "fast" force one.
    """
    t_start = time.perf_counter()
    settings = resolve_settings(model, dict(
        max_new_tokens=max_new_tokens, max_denoising_steps=max_denoising_steps, entropy_bound=entropy_bound,
        t_min=t_min, t_max=t_max, stability_threshold=stability_threshold,
        confidence_threshold=confidence_threshold, eos_token_ids=eos_token_ids))
    config, device = model.config, model.device
    V, L, N = config.vocab_size, config.canvas_length, settings.max_denoising_steps
    ids, valid, prompt_ids, images = prompt_inputs(model, prompt, messages, input_ids, thinking, settings.pad_token_id)
    B, P = ids.shape
    n_canvases = math.ceil(settings.max_new_tokens / L)
    if P + n_canvases * L > config.max_position_embeddings:
        raise InputError(f"the prompt ({P} tokens) plus {n_canvases} canvas(es) of {L} tokens exceeds the model's "
                         f"context of {config.max_position_embeddings} tokens: shorten the prompt or max_new_tokens.")
    first_canvas, pin_mask = canvas_inputs(initial_canvas, pinned, B, L, V, device)
    check_call(record_topk, on_step, V)
    source = make_rng(rng, seed, B, device)
    # denoise_step, or the fast path's drop-in (same call, same state updates).
    step_fn = stepper(path, model, settings, rng, record_topk)
    capacity = step_fn.capacity(cache_capacity(config, P, settings.max_new_tokens))
    head_kind, needs = fitting_head(config, P, max_new_tokens=settings.max_new_tokens, batch_size=B, dtype=model.dtype,
                                    device=device, probabilities=source.needs_probs or bool(record_topk),
                                    capacity=capacity)
    step_fn.head_kind = head_kind
    check_fits(needs, device, f"generating {settings.max_new_tokens} tokens after {B} prompt(s) of up to {P:,} tokens")

    cache = step_fn.new_cache(config, B, capacity, device, model.dtype)
    timings = Timings()
    t0 = time.perf_counter()
    # An image prompt: the vision tower's features in place of the image tokens' embeddings.
    embeds, blocks = (None, None) if images is None else prompt_embeddings(model, ids, valid, images)
    prefill(model, ids, cache, valid, embeds=embeds, blocks=blocks)
    synchronize(device)
    timings.prefill_s = time.perf_counter() - t0

    eos = torch.tensor(settings.eos_token_ids, device=device) if settings.eos_token_ids else None
    stop = StableAndConfident(settings.stability_threshold, settings.confidence_threshold)
    finished_seq = torch.zeros(B, dtype=torch.bool, device=device)
    forwards = torch.zeros(B, dtype=torch.long, device=device)
    committed: list[torch.Tensor] = []
    steps_per_canvas: list[list[int]] = []
    for c in range(n_canvases):
        t0 = time.perf_counter()
        # Draw the noise even when the caller gives a canvas: seeds then line up with transformers.
        noise = source.canvas(c, B, L, V, device)
        state = CanvasState(canvas=noise, argmax=noise, soft=None, done=torch.zeros(B, dtype=torch.bool, device=device))
        if c == 0 and first_canvas is not None:
            state.canvas = state.argmax = first_canvas
            state.pins, state.pinned_ids = pin_mask, first_canvas if pin_mask is not None else None
        steps = torch.zeros(B, dtype=torch.long, device=device)
        stop.reset()
        for remaining in range(N, 0, -1):
            active = ~state.done
            forwards += active & ~finished_seq
            steps += active
            temperature = settings.temperature(remaining)
            record = step_fn(model, cache, state, temperature, settings, stop, source, c, N - remaining,
                             record=on_step is not None, topk=record_topk)
            if on_step is not None:
                on_step(StepRecord(canvas_index=c, step=N - remaining + 1, remaining=remaining,
                                   temperature=temperature, active=active.cpu(), **record))
            if bool(state.done.all()):
                break
        synchronize(device)
        timings.denoise_s += time.perf_counter() - t0
        steps_per_canvas.append(steps.tolist())

        out_of_length = (c + 1) * L >= settings.max_new_tokens
        final, finished_seq = finalize_canvas(state.argmax, finished_seq, eos, settings.pad_token_id, out_of_length)
        committed.append(final)
        if c == 0:
            timings.first_canvas_s = time.perf_counter() - t_start
        if bool(finished_seq.all()):
            break
        t0 = time.perf_counter()
        model.encode(final, cache)
        synchronize(device)
        timings.commit_s += time.perf_counter() - t0

    tokens = torch.cat(committed, dim=1)
    passes = forwards.clamp(min=1).float()
    row_canvas_tpf = ((tokens != settings.pad_token_id).sum(dim=1).float() / passes).tolist()
    tokens = tokens[:, :settings.max_new_tokens]
    row_tpf = ((tokens != settings.pad_token_id).sum(dim=1).float() / passes).tolist()
    tokens = tokens.cpu()
    texts = [decode(model.tokenizer, _until_eos(row, settings)) for row in tokens.tolist()]
    timings.total_s = time.perf_counter() - t_start
    return GenerationResult(token_ids=tokens, texts=texts, prompt_ids=prompt_ids,
                            tokens_per_forward=sum(row_tpf) / B, row_tokens_per_forward=row_tpf,
                            canvas_tokens_per_forward=sum(row_canvas_tpf) / B,
                            row_canvas_tokens_per_forward=row_canvas_tpf,
                            steps_per_canvas=steps_per_canvas, settings=settings, timings=timings,
                            path=step_fn.path, fallback_reason=step_fn.fallback_reason)


@dataclass
class CanvasState:
    """The live canvas of a batch, between denoising rounds."""

    canvas: torch.Tensor  # [B, L] what the denoiser reads next: accepted tokens + noise
    argmax: torch.Tensor  # [B, L] the latest argmax prediction: what gets committed
    soft: torch.Tensor | None  # [B, L, hidden] self-conditioning input (None on the first round)
    done: torch.Tensor  # [B] rows whose adaptive stop fired: frozen from then on
    pins: torch.Tensor | None = None  # [B, L] positions held fixed (infilling)
    pinned_ids: torch.Tensor | None = None
    # The previous round's head, when its soft input is still to be made (soft probabilities x E):
    # made at the start of the next round, so a canvas's last round never pays for it.
    head: HeadOutput | None = None


def denoise_step(model: DiffusionGemma, cache: KVCache, state: CanvasState, temperature: float,
                 settings: GenerationSettings, stop: StableAndConfident, source: CounterRNG | TransformersRNG,
                 canvas_index: int, step: int, record: bool = False, topk: int = 0,
                 head_kind: str = "materialized", buffers: HeadBuffers | None = None) -> dict[str, Any]:
    """One denoising round over the whole batch, updating `state` in place (rows in `state.done`
    keep theirs). Returns the round's record fields when `record` is set. `head_kind`: see
    memory.fitting_head (full probabilities, for transformers' draws or top-k, need "materialized");
    `buffers`: the head's tensors, reused from round to round."""
    B, L = state.canvas.shape
    V = model.config.vocab_size
    if state.head is not None:
        state.soft, state.head = state.head.soft_input(model), None
    hidden = model.denoise(state.canvas, cache, state.soft)
    head = denoise_head(model, hidden, temperature, head_kind, probs=source.needs_probs or bool(topk), buffers=buffers)
    out = sampler_round(state, head.entropy, head.argmax,
                        lambda accepted: source.sample(model, head, accepted, canvas_index, step),
                        lambda: source.renoise(canvas_index, step + 1, B, L, V, hidden.device),
                        settings.entropy_bound, stop)
    state.canvas, state.argmax, state.done, state.head = out.canvas, out.argmax, out.done, head

    if not record:
        return {}
    rec = dict(canvas_ids=out.canvas.cpu(), argmax_ids=out.argmax.cpu(), accepted=out.accepted.cpu(),
               entropy=out.entropy.float().cpu(), pinned=None if state.pins is None else state.pins.cpu())
    if topk:
        top = torch.topk(head.probs, topk, dim=-1)
        rec.update(top_ids=top.indices.cpu(), top_probs=top.values.cpu())
    return rec


def _until_eos(row: list[int], settings: GenerationSettings) -> list[int]:
    for i, t in enumerate(row):
        if t in settings.eos_token_ids:
            return row[:i]
    return [t for t in row if t != settings.pad_token_id]


# ---- which denoising step a call runs ---------------------------------------------------------
def select_path(path: str | None, device: torch.device, rng: str, record_topk: int,
                fp8: bool = False) -> tuple[str, str | None]:
    """('torch' or 'fast', why auto did not pick 'fast') for this call (`fp8`: the model's experts are
    quantized). Auto picks 'fast' only where it is known to work: a CUDA GPU of compute capability 8.0+
    with Triton, the counter-based RNG (the fused head draws with that hash) and no top-k recording
    (the fused head never holds full probabilities). Forcing path='fast' where it cannot run raises
    InputError/DeviceError naming the fix; on a CPU it runs the same round without a graph, with the
    kernels under TRITON_INTERPRET=1 or else their PyTorch references: slow, for tests."""
    if path is None or path == "auto":
        if device.type != "cuda":
            return "torch", f"the fast path needs a CUDA GPU; the model is on {device.type!r}"
        usable, why = triton_support(device)
        if not usable:
            return "torch", why
        if fp8 and not has_fp8(device):
            return "torch", "fp8 experts need a GPU with fp8 conversions (compute capability 8.9+)"
        if rng != "counter":
            return "torch", f"rng={rng!r} replays transformers' draws, which need full probabilities"
        if record_topk:
            return "torch", "record_topk needs full probabilities, which the fused head never holds"
        return "fast", None
    if path == "torch":
        return "torch", None
    if path != "fast":
        raise InputError(f"path must be one of {PATHS} (None means 'auto'); got {path!r}.")
    if rng != "counter":
        raise InputError(f"path='fast' samples with the counter-based RNG inside the fused head; rng={rng!r} "
                         "needs the PyTorch path: use rng='counter' or path='torch'.")
    if record_topk:
        raise InputError("path='fast' never materialises the probabilities, so record_topk is not available: "
                         "use record_topk=0 or path='torch'.")
    if device.type == "cuda":
        usable, why = triton_support(device)
        if not usable:
            raise DeviceError(f"path='fast' needs the Triton kernels, but {why}; use path='torch' (or path=None).")
        if fp8 and not has_fp8(device):
            raise DeviceError("path='fast' with fp8 experts needs a GPU with fp8 conversions (compute capability "
                              "8.9+: Ada, Hopper, Blackwell); use path='torch' or bf16 experts.")
    elif device.type != "cpu":
        raise DeviceError(f"path='fast' runs on CUDA GPUs (and, for tests, CPUs); not on {device.type!r}: "
                          "use path='torch'.")
    return "fast", None


class Stepper:
    """The step a generate() call runs, and which one it ran: `path` and `fallback_reason` end up in
    the GenerationResult. With path=None/'auto' on a GPU the fast step runs unless its first round
    fails (say, a kernel that does not compile on this GPU): then a one-line warning and the PyTorch
    step for the rest of the call, and the failure becomes the result's fallback_reason. Nothing is
    lost: the fast step writes the canvas state only after a round succeeds, and every round rewrites
    the KV cache's canvas slots. A failure after the first round, or of a forced path='fast', is raised."""

    def __init__(self, fast: FastStepper | None, *, may_fall_back: bool, reason: str | None = None) -> None:
        self.fast, self.may_fall_back = fast, may_fall_back
        self.head_kind = "materialized"  # the PyTorch step's head (generate sets it from the memory estimate)
        self.buffers = HeadBuffers()
        self.path = "fast" if fast is not None else "torch"
        self.fallback_reason = reason

    def new_cache(self, config, batch: int, tokens: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """The call's KV cache: on the fast path the one its kept CUDA graph reads (capacity rounded
        up, see fast/step.py), else a new one of exactly `tokens` slots."""
        if self.fast is not None:
            return self.fast.new_cache(batch, tokens)
        return KVCache(config, batch, tokens, device=device, dtype=dtype)

    def capacity(self, tokens: int) -> int:
        return tokens if self.fast is None else self.fast.capacity(tokens)

    def __call__(self, *args, **kwargs) -> dict[str, Any]:
        if self.fast is not None:
            try:
                return self.fast(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - reported and recorded, then the reference path takes over
                if not self.may_fall_back or self.fast.replays:
                    raise
                self.fallback_reason = f"the fast path failed on its first round: {type(e).__name__}: {str(e)[:300]}"
                logging.getLogger("dgemma_helpers").warning(
                    "%s; using the PyTorch path (path='torch' skips the attempt)", self.fallback_reason)
                self.fast, self.path = None, "torch"
        return denoise_step(*args, head_kind=self.head_kind, buffers=self.buffers, **kwargs)


def stepper(path: str | None, model: DiffusionGemma, settings: GenerationSettings, rng: str,
            record_topk: int) -> Stepper:
    chosen, reason = select_path(path, model.device, rng, record_topk, fp8=is_quantized(model))
    if chosen == "torch":
        return Stepper(None, may_fall_back=False, reason=reason)
    return Stepper(FastStepper(model, settings), may_fall_back=path in (None, "auto"))

