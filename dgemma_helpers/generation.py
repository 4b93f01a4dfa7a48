"""Block-autoregressive diffusion generation: a plain function with a per-round callback.

    encode the prompt (causal, fills the KV cache)
    for each canvas:
        start from noise (or the user's initial canvas)
        for remaining = N..1:                               # one step (TorchStep) per round
            logits = denoiser(canvas, cache, self-conditioning)
            accept the low-entropy positions (entropy bound), renoise the rest
            stop early once the argmax canvas is stable and confident
        commit the argmax canvas; pad after EOS; encode it into the cache

Random numbers come from the seed alone (see rng.py): by default a counter-based hash that
samples only the accepted positions; with rng="transformers", a private torch.Generator drawn in
the same order and shapes as transformers' `generate`, so a seed gives the reference's tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch

from .cache import KVCache
from .config import GenerationSettings
from .devices import select_path, synchronize
from .errors import InputError
from .fast.quant import is_quantized
from .fast.step import FastStep
from .head import HeadBuffers, HeadOutput, denoise_head
from .inputs import canvas_inputs, check_call, prompt_inputs, token_id_list
from .memory import PREFILL_CHUNK, cache_capacity, check_fits, fitting_head
from .model import DiffusionGemma
from .rng import CounterRNG, TransformersRNG, make_rng
from .sampler import StableAndConfident, finalize_canvas, update_canvas
from .tokenizer import decode, text_ids
from .vision import prompt_embeddings


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
    step: int  # the round's number within this canvas, from 1 (steps count from 0 everywhere else)
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

    @contextmanager
    def measure(self, phase: str, device: torch.device) -> Iterator[None]:
        """Adds the block's time to `phase` (prefill_s, denoise_s, commit_s), the device's queue included."""
        t0 = time.perf_counter()
        yield
        synchronize(device)
        setattr(self, phase, getattr(self, phase) + time.perf_counter() - t0)


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
    model: DiffusionGemma, prompt: str | Sequence[str] | None = None, *,
    messages: Sequence[dict] | Sequence[Sequence[dict]] | None = None,
    input_ids: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None = None,
    max_new_tokens: int | None = None, max_denoising_steps: int | None = None, entropy_bound: float | None = None,
    t_min: float | None = None, t_max: float | None = None, stability_threshold: int | None = None,
    confidence_threshold: float | None = None, eos_token_ids: Sequence[int] | None = None,
    seed: int | Sequence[int] | None = None, rng: str = "counter",
    initial_canvas: Sequence[int] | torch.Tensor | None = None, pinned: Sequence[int] | torch.Tensor | None = None,
    thinking: bool | None = None, on_step: Callable[[StepRecord], None] | None = None, record_topk: int = 0,
    path: str | None = None,
) -> GenerationResult:
    """Generate text block by block from `prompt` (str or list), `messages` (chats, through the chat
    template) or `input_ids`. Unset sampler settings come from the checkpoint's generation_config.json;
    `confidence_threshold=0` turns adaptive stopping off. `initial_canvas` + `pinned`: infilling.
    `on_step` gets a StepRecord per round. `seed`: an int (row i draws from (seed, i)) or one per row;
    `rng="transformers"` replays the reference's draws. `path`: None/"auto" (the fused-kernel CUDA-graph
    step where it runs), "torch" or "fast". README.md's "What `generate` does" walks through it."""
    t_start = time.perf_counter()
    settings = resolve_settings(model, dict(
        max_new_tokens=max_new_tokens, max_denoising_steps=max_denoising_steps, entropy_bound=entropy_bound,
        t_min=t_min, t_max=t_max, stability_threshold=stability_threshold,
        confidence_threshold=confidence_threshold, eos_token_ids=eos_token_ids))
    config, device, L = model.config, model.device, model.config.canvas_length
    ids, valid, prompt_ids, images = prompt_inputs(model, prompt, messages, input_ids, thinking, settings.pad_token_id)
    B, P = ids.shape
    n_canvases = canvases_needed(config, P, settings.max_new_tokens)
    first_canvas, pin_mask = canvas_inputs(initial_canvas, pinned, B, L, config.vocab_size, device)
    check_call(record_topk, on_step, config.vocab_size)
    source = make_rng(rng, seed, B, device)
    step = make_step(path, model, settings, source, record_topk)
    cache = allocate(step, model, B, P, settings.max_new_tokens)

    timings = Timings()  # (an image prompt: the vision tower's features replace its tokens' embeddings)
    with timings.measure("prefill_s", device):
        embeds, blocks = (None, None) if images is None else prompt_embeddings(model, ids, valid, images)
        prefill(model, ids, cache, valid, embeds=embeds, blocks=blocks)

    eos = torch.tensor(settings.eos_token_ids, device=device) if settings.eos_token_ids else None
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    forwards = torch.zeros(B, dtype=torch.long, device=device)  # denoiser passes per unfinished row
    committed, steps_per_canvas = [], []
    for c in range(n_canvases):
        with timings.measure("denoise_s", device):
            state = start_canvas(source, c, L, config.vocab_size,
                                 (first_canvas, pin_mask) if c == 0 and first_canvas is not None else None)
            steps = denoise_canvas(step, state, c, settings, finished, forwards, on_step)
        steps_per_canvas.append(steps.tolist())
        out_of_length = (c + 1) * L >= settings.max_new_tokens
        final, finished = finalize_canvas(state.argmax, finished, eos, settings.pad_token_id, out_of_length)
        committed.append(final)
        if c == 0:
            timings.first_canvas_s = time.perf_counter() - t_start
        if bool(finished.all()):
            break
        with timings.measure("commit_s", device):
            model.encode(final, cache)
    return result(model, torch.cat(committed, dim=1), forwards, prompt_ids, steps_per_canvas, settings, timings,
                  t_start, step)


def canvases_needed(config, prompt_tokens: int, max_new_tokens: int) -> int:
    """Canvases a call denoises, refused where prompt and canvases overflow the context."""
    n, L = math.ceil(max_new_tokens / config.canvas_length), config.canvas_length
    if prompt_tokens + n * L > config.max_position_embeddings:
        raise InputError(f"the prompt ({prompt_tokens} tokens) plus {n} canvas(es) of {L} tokens exceeds the "
                         f"model's context of {config.max_position_embeddings} tokens: shorten the prompt or "
                         "max_new_tokens.")
    return n


def allocate(step, model: DiffusionGemma, batch: int, prompt_tokens: int, max_new_tokens: int) -> KVCache:
    """The call's KV cache, after the memory estimate says it and the round's peak fit (the estimate
    also picks the PyTorch step's head: memory.fitting_head)."""
    capacity = step.capacity(cache_capacity(model.config, prompt_tokens, max_new_tokens))
    step.head_kind, needs = fitting_head(model.config, prompt_tokens, max_new_tokens=max_new_tokens, batch_size=batch,
                                         dtype=model.dtype, device=model.device, probabilities=step.needs_probs,
                                         capacity=capacity)
    check_fits(needs, model.device, f"generating {max_new_tokens} tokens after {batch} prompt(s) of up to "
                                    f"{prompt_tokens:,} tokens")
    return step.new_cache(batch, capacity)


def start_canvas(source: CounterRNG | TransformersRNG, canvas_index: int, length: int, vocab: int,
                 given: tuple[torch.Tensor, torch.Tensor | None] | None) -> CanvasState:
    """A canvas's first state: uniform noise, or the caller's canvas and pins (the noise is drawn
    anyway, so seeds line up with transformers)."""
    noise = source.canvas(canvas_index, length, vocab)
    state = CanvasState(canvas=noise, argmax=noise, soft=None,
                        done=torch.zeros(noise.shape[0], dtype=torch.bool, device=noise.device))
    if given is not None:
        canvas, pins = given
        state.canvas = state.argmax = canvas
        state.pins, state.pinned_ids = pins, canvas if pins is not None else None
    return state


def denoise_canvas(step, state: CanvasState, canvas_index: int, settings: GenerationSettings, finished: torch.Tensor,
                   forwards: torch.Tensor, on_step: Callable[[StepRecord], None] | None) -> torch.Tensor:
    """Rounds over one canvas until every row stops or the steps run out; returns each row's rounds."""
    N = settings.max_denoising_steps
    steps = torch.zeros_like(forwards)
    for i in range(N):
        active = ~state.done
        forwards += active & ~finished
        steps += active
        fields = step(state, canvas_index, i, record=on_step is not None)
        if on_step is not None:
            on_step(StepRecord(canvas_index=canvas_index, step=i + 1, remaining=N - i,
                               temperature=settings.temperature(N - i), active=active.cpu(),
                               **{k: None if v is None else v.to("cpu", copy=True) for k, v in fields.items()}))
        if bool(state.done.all()):
            break
    return steps


def result(model: DiffusionGemma, tokens: torch.Tensor, forwards: torch.Tensor, prompt_ids: list[list[int]],
           steps_per_canvas: list[list[int]], settings: GenerationSettings, timings: Timings, t_start: float,
           step) -> GenerationResult:
    """The GenerationResult: tokens cut to max_new_tokens, texts, and both tokens-per-forward figures."""
    B, pad = tokens.shape[0], settings.pad_token_id
    passes = forwards.clamp(min=1).float()
    row_canvas_tpf = ((tokens != pad).sum(dim=1).float() / passes).tolist()
    tokens = tokens[:, :settings.max_new_tokens]
    row_tpf = ((tokens != pad).sum(dim=1).float() / passes).tolist()
    tokens = tokens.cpu()
    texts = [decode(model.tokenizer, text_ids(row, settings.eos_token_ids, pad)) for row in tokens.tolist()]
    timings.total_s = time.perf_counter() - t_start
    return GenerationResult(token_ids=tokens, texts=texts, prompt_ids=prompt_ids,
                            tokens_per_forward=sum(row_tpf) / B, row_tokens_per_forward=row_tpf,
                            canvas_tokens_per_forward=sum(row_canvas_tpf) / B,
                            row_canvas_tokens_per_forward=row_canvas_tpf,
                            steps_per_canvas=steps_per_canvas, settings=settings, timings=timings,
                            path=step.path, fallback_reason=step.fallback_reason)


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


# ---- the step: one denoising round ------------------------------------------------------------
class TorchStep:
    """One denoising round over the whole batch in PyTorch, updating the CanvasState in place (rows in
    `state.done` keep theirs): model.denoise, the head (head.py), the sampler's rules (sampler.py).
    The reference step; the fast path's FastStep (fast/step.py) is its drop-in. One per generate() call:
    it holds what every round of the call shares (the adaptive stop, the head's buffers)."""

    path = "torch"

    def __init__(self, model: DiffusionGemma, settings: GenerationSettings, source: CounterRNG | TransformersRNG,
                 topk: int = 0, reason: str | None = None) -> None:
        self.model, self.settings, self.source, self.topk = model, settings, source, topk
        self.fallback_reason = reason  # why path=None did not run the fast step
        self.needs_probs = source.needs_probs or bool(topk)  # full probabilities: the materialized head
        self.head_kind = "materialized"  # memory.fitting_head may pick "tiled" (generate's allocate)
        self.stop = StableAndConfident(settings.stability_threshold, settings.confidence_threshold)
        self.buffers = HeadBuffers()
        self.cache: KVCache | None = None
        self._state: CanvasState | None = None

    @staticmethod
    def capacity(tokens: int) -> int:
        return tokens

    def new_cache(self, batch: int, tokens: int) -> KVCache:
        m = self.model
        self.cache = KVCache(m.config, batch, tokens, device=m.device, dtype=m.dtype)
        return self.cache

    def __call__(self, state: CanvasState, canvas_index: int, round_index: int,
                 record: bool = False) -> dict[str, torch.Tensor | None]:
        """Round `round_index` (from 0) of canvas `canvas_index`; returns the round's record fields
        (the tensors a StepRecord holds) when `record` is set."""
        model, source = self.model, self.source
        if state is not self._state:  # a new canvas
            self.stop.reset()
            self._state = state
        L = state.canvas.shape[1]
        if state.head is not None:
            state.soft, state.head = state.head.soft_input(model), None
        temperature = self.settings.temperature(self.settings.max_denoising_steps - round_index)
        hidden = model.denoise(state.canvas, self.cache, state.soft)
        head = denoise_head(model, hidden, temperature, self.head_kind, probs=self.needs_probs, buffers=self.buffers)
        out = update_canvas(state, head.entropy, head.argmax,
                            lambda accepted: source.sample(model, head, accepted, canvas_index, round_index),
                            lambda: source.renoise(canvas_index, round_index + 1, L, model.config.vocab_size),
                            self.settings.entropy_bound, self.stop)
        state.canvas, state.argmax, state.done, state.head = out.canvas, out.argmax, out.done, head
        if not record:
            return {}
        fields = dict(canvas_ids=out.canvas, argmax_ids=out.argmax, accepted=out.accepted, entropy=out.entropy.float(),
                      pinned=state.pins)
        if self.topk:
            top = torch.topk(head.probs, self.topk, dim=-1)
            fields.update(top_ids=top.indices, top_probs=top.values)
        return fields


def make_step(path: str | None, model: DiffusionGemma, settings: GenerationSettings,
              source: CounterRNG | TransformersRNG, topk: int = 0) -> TorchStep | FastStep:
    """The step a call runs (devices.select_path decides). With path=None/"auto" the fast step falls
    back to the PyTorch one if its first round fails (fast/step.py says how); a forced one never does."""
    chosen, reason = select_path(path, model.device, source.name, topk, fp8=is_quantized(model))
    torch_step = TorchStep(model, settings, source, topk, reason)
    if chosen == "torch":
        return torch_step
    return FastStep(model, settings, source, fallback=torch_step if path in (None, "auto") else None)
