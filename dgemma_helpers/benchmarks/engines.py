"""Benchmark engines: one interface (the Engine class), one object per way of generating text:
"kit" and "kit-cuda" (generate() on its PyTorch and fused CUDA paths), "transformers" (the
reference), "ar" and "ar-hf" (autoregressive baselines), "vllm" and "vllm-server". More join with
`register_engine(name, factory)`. The harness times each run() from outside; an engine reports what
only it can see: tokens, forward passes and the time inside them.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import load_model, read_config, weights_bytes
from ..devices import resolve_device, resolve_dtype, synchronize, triton_support
from ..engines.autoregressive import generate_autoregressive
from ..engines.vllm import VLLMEngine, vllm_status
from ..engines.vllm_server import VLLMServer
from ..generation import generate
from ..tokenizer import decode, load_tokenizer
from .grid import GridPoint, Sweep

DIFFUSION, AUTOREGRESSIVE = "diffusion", "autoregressive"


@dataclass
class Prompts:
    """One batch of prompts: the texts, and their ids in the diffusion checkpoint's vocabulary
    (every row cut to the same length, so no engine pays for padding)."""

    texts: list[str]
    ids: list[list[int]]


@dataclass
class Measurement:
    """What one run() saw from inside. Times in seconds from the start of run()."""

    tokens: int  # generated tokens, all rows, pads (after EOS) excluded
    forwards: int  # forward passes that write tokens: denoising steps, or one-token decode steps
    step_s: float  # time inside those passes (prefill and canvas commits excluded)
    first_canvas_s: float  # first committed canvas (autoregressive: first canvas_length tokens)
    first_token_s: float  # first token the user could see (diffusion: with the first canvas)
    tokens_per_forward: float  # mean over rows of that row's tokens / its forward passes
    steps_per_canvas: float | None  # mean denoising steps per canvas (None: autoregressive)
    texts: list[str | None] = field(default_factory=list)
    token_ids: list[list[int]] | None = None  # in the diffusion checkpoint's vocabulary, when they are
    # Filled by the harness:
    total_s: float = 0.0  # the whole run(), timed from outside between device synchronisations
    prompt_ids: list[list[int]] | None = None
    peak_memory_bytes: int | None = None


class ModelPool:
    """Loaded weights shared by engines in one benchmark: "kit" and "ar" run the same model."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep, self._kit = sweep, None

    def kit_model(self):
        if self._kit is None:
            self._kit = load_model(self.sweep.model, device=self.sweep.device, dtype=self.sweep.dtype)
        return self._kit

    def clear(self) -> None:
        self._kit = None


class Engine:
    name = "engine"
    kind = DIFFUSION
    description = ""
    # False for engines that run in other processes (vLLM): this process cannot see their memory.
    in_process_memory = True

    def available(self, sweep: Sweep) -> tuple[bool, str]:
        """(ok, why not): cheap, nothing is loaded."""
        return True, ""

    def prepare(self, sweep: Sweep, pool: ModelPool) -> None:
        """Load the weights, once per benchmark (shared ones from the pool)."""
        self.sweep, self.model = sweep, pool.kit_model()

    def configure(self, config: GridPoint) -> None:
        """Untimed, before each grid point's warm-up: an engine whose settings are fixed when it starts
        (vLLM's entropy bound) restarts here, so no timed run pays for it."""

    def run(self, prompts: Prompts, config: GridPoint, seed: int) -> Measurement:
        raise NotImplementedError

    def release(self) -> None:
        self.model = None

    def weights_bytes(self, sweep: Sweep) -> int:
        """Memory its weights take (does every engine fit at once?); 0 if shared or unknown."""
        return 0


# ---- the kit ----------------------------------------------------------------------------------
class KitEngine(Engine):
    """dgemma_helpers.generate on its PyTorch path (any device)."""

    name, path = "kit", "torch"
    description = "this kit's engine, PyTorch path"

    def run(self, prompts: Prompts, config: GridPoint, seed: int) -> Measurement:
        s = self.sweep
        r = generate(self.model, input_ids=prompts.ids, max_new_tokens=config.max_new_tokens,
                     max_denoising_steps=config.steps, entropy_bound=config.entropy_bound, seed=seed,
                     eos_token_ids=() if s.ignore_eos else None, confidence_threshold=None if s.early_stop else 0.0,
                     path=self.path if self.path == "torch" else None)
        if r.path != self.path:
            raise RuntimeError(f"generate() ran the {r.path} path instead of the {self.path} path: {r.fallback_reason}")
        steps = [n for canvas in r.steps_per_canvas for n in canvas]
        first = r.timings.first_canvas_s
        return _measured(r, forwards=r.num_forwards, step_s=r.timings.denoise_s, first_canvas_s=first,
                         first_token_s=first, steps_per_canvas=statistics.mean(steps))

    def weights_bytes(self, sweep: Sweep) -> int:
        return _diffusion_weights_bytes(sweep)


class KitCudaEngine(KitEngine):
    """The kit's optimised GPU path: generate() with path=None, what a user gets by default. A run that did
    not end on the fast path (a fallback) is a failed run with its reason, never PyTorch timings under the
    fast path's name. Skipped, with the reason, where it cannot run (no CUDA GPU, no Triton)."""

    name, path = "kit-cuda", "fast"
    description = "this kit's engine, fused-kernel CUDA path"

    def available(self, sweep: Sweep) -> tuple[bool, str]:
        if not torch.cuda.is_available():
            return False, "needs a CUDA GPU; none is visible here"
        device = resolve_device(sweep.device)
        if device.type != "cuda":
            return False, f"runs on a CUDA GPU; this benchmark runs on {device} (--device)"
        usable, why = triton_support(device)
        return usable, "" if usable else why


def _measured(r, **values) -> Measurement:
    """A Measurement from a kit-style result (generate()'s, a vLLM engine's): its tokens, texts and ids."""
    return Measurement(tokens=int((r.token_ids != r.settings.pad_token_id).sum()),
                       tokens_per_forward=r.tokens_per_forward, texts=r.texts, token_ids=r.token_ids.tolist(), **values)


# ---- transformers' reference ------------------------------------------------------------------
def _transformers_available(cls_name: str, what: str = "") -> tuple[bool, str]:
    try:
        import transformers

        getattr(transformers, cls_name)
    except (ImportError, AttributeError) as e:
        return False, f"transformers {what}is not installed ({e})"
    return True, ""


def _load_transformers(engine: Engine, sweep: Sweep, cls, path: str, **kwargs):
    """A transformers engine's model, on the sweep's device and dtype, progress bars quiet."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    engine.sweep, engine.device = sweep, resolve_device(sweep.device)
    model = cls.from_pretrained(path, dtype=resolve_dtype(sweep.dtype, engine.device), **kwargs)
    return model.to(engine.device).eval()  # (device_map= would need the accelerate package)


class TransformersEngine(Engine):
    name = "transformers"
    description = 'transformers DiffusionGemmaForBlockDiffusion, experts_implementation="grouped_mm"'

    def available(self, sweep: Sweep) -> tuple[bool, str]:
        return _transformers_available("DiffusionGemmaForBlockDiffusion", "with DiffusionGemma (>= 5.16) ")

    def prepare(self, sweep: Sweep, pool: ModelPool) -> None:
        from transformers import DiffusionGemmaForBlockDiffusion

        self.model = _load_transformers(self, sweep, DiffusionGemmaForBlockDiffusion, sweep.model,
                                        experts_implementation="grouped_mm")
        self.tokenizer = load_tokenizer(Path(sweep.model))
        self._instrument()

    def _instrument(self) -> None:
        """Wrap the reference's denoising step and canvas commit to time them from the inside."""
        model, device, probe = self.model, self.device, self
        step, finalize = model._denoising_step, model._finalize_canvas

        def timed_step(*args, **kwargs):
            synchronize(device)
            t = time.perf_counter()
            out = step(*args, **kwargs)
            synchronize(device)
            probe._step_s += time.perf_counter() - t
            probe._forwards += 1
            return out

        def timed_finalize(*args, **kwargs):
            out = finalize(*args, **kwargs)
            probe._canvases += 1
            if probe._first_canvas_s is None:
                synchronize(device)
                probe._first_canvas_s = time.perf_counter() - probe._t0
            return out

        model._denoising_step, model._finalize_canvas = timed_step, timed_finalize

    def run(self, prompts: Prompts, config: GridPoint, seed: int) -> Measurement:
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

        self._t0, self._step_s, self._forwards, self._canvases, self._first_canvas_s = time.perf_counter(), 0.0, 0, 0, None
        ids = torch.tensor(prompts.ids, device=self.device)
        kwargs = dict(max_new_tokens=config.max_new_tokens, max_denoising_steps=config.steps,
                      sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(config.entropy_bound)),
                      attention_mask=torch.ones_like(ids))
        if self.sweep.ignore_eos:
            kwargs["eos_token_id"] = []  # never matches: every run writes max_new_tokens
        if not self.sweep.early_stop:
            kwargs.update(confidence_threshold=None, stability_threshold=None)
        torch.manual_seed(seed)  # the reference draws from the global RNG
        with torch.no_grad():
            out = self.model.generate(ids, **kwargs)
        new = out.sequences[:, ids.shape[1]:ids.shape[1] + config.max_new_tokens].cpu()
        pad = self.model.generation_config.pad_token_id
        texts = [decode(self.tokenizer, [t for t in row if t != pad]) for row in new.tolist()]
        return Measurement(tokens=int((new != pad).sum()), forwards=self._forwards, step_s=self._step_s,
                           first_canvas_s=self._first_canvas_s or 0.0, first_token_s=self._first_canvas_s or 0.0,
                           tokens_per_forward=float(out.tokens_per_forward.float().mean()),
                           steps_per_canvas=self._forwards / max(self._canvases, 1),
                           texts=texts, token_ids=new.tolist())

    def weights_bytes(self, sweep: Sweep) -> int:
        return _diffusion_weights_bytes(sweep)


# ---- autoregressive baselines -----------------------------------------------------------------
class AREngine(Engine):
    name = "ar"
    kind = AUTOREGRESSIVE
    description = "the checkpoint's own causal encoder, one token per forward pass, KV cache, greedy"

    def run(self, prompts: Prompts, config: GridPoint, seed: int) -> Measurement:
        r = generate_autoregressive(self.model, input_ids=prompts.ids, max_new_tokens=config.max_new_tokens,
                                    eos_token_ids=() if self.sweep.ignore_eos else None, seed=seed)
        pad = self.model.config.pad_token_id
        row_tokens = (r.token_ids != pad).sum(dim=1)
        # The prefill writes the first token, so a row of n tokens took n forward passes.
        tpf = float((row_tokens.float() / (r.num_forwards + 1)).mean())
        return Measurement(tokens=int(row_tokens.sum()), forwards=r.num_forwards, step_s=r.timings.decode_s,
                           first_canvas_s=r.timings.first_canvas_s, first_token_s=r.timings.first_token_s,
                           tokens_per_forward=tpf, steps_per_canvas=None, texts=r.texts,
                           token_ids=r.token_ids.tolist())


class HFAutoregressiveEngine(Engine):
    name = "ar-hf"
    kind = AUTOREGRESSIVE
    description = "an autoregressive checkpoint (e.g. Gemma 4) through transformers' generate, greedy"

    def available(self, sweep: Sweep) -> tuple[bool, str]:
        if not sweep.ar_model:
            return False, "no autoregressive checkpoint given (pass --ar-model PATH, e.g. a Gemma 4 model directory)"
        return _transformers_available("AutoModelForCausalLM")

    def prepare(self, sweep: Sweep, pool: ModelPool) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(sweep.ar_model, local_files_only=True, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = _load_transformers(self, sweep, AutoModelForCausalLM, sweep.ar_model, local_files_only=True)
        self.canvas_length = read_config(sweep.model)[1].canvas_length  # its "first canvas": as many tokens

    def run(self, prompts: Prompts, config: GridPoint, seed: int) -> Measurement:
        batch = self.tokenizer(prompts.texts, return_tensors="pt", padding=True).to(self.device)
        clock = _TokenClock(self.device, self.canvas_length)
        n = config.max_new_tokens
        kwargs = dict(max_new_tokens=n, do_sample=False, streamer=clock, pad_token_id=self.tokenizer.pad_token_id)
        if self.sweep.ignore_eos:
            kwargs["min_new_tokens"] = n
        with torch.no_grad():
            out = self.model.generate(**batch, **kwargs)
        new = out[:, batch["input_ids"].shape[1]:]
        pad = self.tokenizer.pad_token_id
        row_tokens = (new != pad).sum(dim=1) if pad is not None else torch.full((len(new),), new.shape[1])
        steps = max(clock.tokens - 1, 0)
        return Measurement(tokens=int(row_tokens.sum()), forwards=steps,
                           step_s=clock.last_s - (clock.first_token_s or 0.0),
                           first_canvas_s=clock.first_canvas_s or clock.last_s, first_token_s=clock.first_token_s or 0.0,
                           tokens_per_forward=float((row_tokens.float() / max(clock.tokens, 1)).mean()),
                           steps_per_canvas=None, texts=self.tokenizer.batch_decode(new, skip_special_tokens=True))


class _TokenClock:
    """A transformers streamer that only notes when tokens arrive (first put() is the prompt)."""

    def __init__(self, device: torch.device, canvas_length: int) -> None:
        self.device, self.canvas_length = device, canvas_length
        self.t0 = time.perf_counter()
        self.tokens, self.first_token_s, self.first_canvas_s, self.last_s = -1, None, None, 0.0

    def put(self, value) -> None:
        self.tokens += 1
        if self.tokens == 0:
            return
        self.last_s = time.perf_counter() - self.t0  # put() receives CPU tensors: the GPU has synchronised
        if self.tokens == 1:
            self.first_token_s = self.last_s
        if self.tokens == self.canvas_length:
            self.first_canvas_s = self.last_s

    def end(self) -> None:
        pass


def _diffusion_weights_bytes(sweep: Sweep) -> int:
    device = resolve_device(sweep.device)
    return weights_bytes(read_config(sweep.model)[1], resolve_dtype(sweep.dtype, device))


# ---- vLLM -------------------------------------------------------------------------------------
class VLLMBenchEngine(Engine):
    """vllm.LLM in this process. vLLM fixes the entropy bound, the step count and adaptive stopping when it
    starts, so the engine starts once per (entropy bound, steps) pair, in the untimed `configure()`. What
    vLLM does not report is left empty rather than guessed: ms per step and peak memory (its engine runs in
    other processes). Seeds are not applied (vLLM rejects them). The prefix cache is off: the kit has none,
    and the sweep repeats its prompts."""

    name = "vllm"
    description = "vLLM's DiffusionGemma, in-process vllm.LLM (per-request seeds not supported)"
    in_process_memory = False
    stream = False

    def available(self, sweep: Sweep) -> tuple[bool, str]:
        usable, why = vllm_status()
        return usable, "" if usable else why  # when usable the engines table shows the description

    def prepare(self, sweep: Sweep, pool: ModelPool) -> None:
        self.sweep, self.engine, self.key = sweep, None, None

    def configure(self, config: GridPoint) -> None:
        if (config.entropy_bound, config.steps) == self.key:
            return
        self.release()
        settings = dict(enable_prefix_caching=False, **self.sweep.vllm_args)  # (the sweep refuses sampler keys there)
        settings.update(max_denoising_steps=config.steps, entropy_bound=config.entropy_bound)
        if not self.sweep.early_stop:
            settings.update(confidence_threshold=0.0)
        self.engine, self.client = self._start(settings)
        self.key = (config.entropy_bound, config.steps)

    def _start(self, settings: dict):
        """(what release() closes, what generates)."""
        engine = VLLMEngine(self.sweep.model, **settings)
        return engine, engine

    def run(self, prompts: Prompts, config: GridPoint, seed: int) -> Measurement:
        self.configure(config)  # a no-op after the harness's own call; starts an engine if run alone
        r = self.client.generate(input_ids=prompts.ids, max_new_tokens=config.max_new_tokens,
                                 eos_token_ids=() if self.sweep.ignore_eos else None, stream=self.stream)
        first = r.timings.first_canvas_s
        steps = r.mean_steps_per_canvas if r.mean_steps_per_canvas is not None else math.nan
        return _measured(r, forwards=0, step_s=0.0,  # no time per step
                         first_canvas_s=first, first_token_s=first, steps_per_canvas=steps)

    def release(self) -> None:
        engine, self.engine, self.key = getattr(self, "engine", None), None, None
        if engine is not None:
            engine.close()

    def weights_bytes(self, sweep: Sweep) -> int:
        # On a GPU vLLM claims gpu_memory_utilization of it (0.9 unless set): it never fits beside another
        # engine, so the harness runs it on its own. On a CPU its share of RAM is small.
        if torch.cuda.is_available():
            share = sweep.vllm_args.get("gpu_memory_utilization", 0.9)
            return int(share * torch.cuda.get_device_properties(0).total_memory)
        return _diffusion_weights_bytes(sweep)


class VLLMServerBenchEngine(VLLMBenchEngine):
    name = "vllm-server"
    description = ("a vLLM server on 127.0.0.1 started for the run, queried with streaming via the openai client "
                   "(first token = first streamed chunk)")
    stream = True

    def available(self, sweep: Sweep) -> tuple[bool, str]:
        usable, why = super().available(sweep)
        if usable and importlib.util.find_spec("openai") is None:
            return False, "the openai package is not installed: pip install openai (`make setup-vllm` has it)"
        return usable, why

    def _start(self, settings: dict):
        server = VLLMServer(self.sweep.model, **settings).start()
        return server, server.client()


# ---- the registry -----------------------------------------------------------------------------
ENGINES: dict[str, Callable[[], Engine]] = {
    "kit": KitEngine,
    "kit-cuda": KitCudaEngine,
    "transformers": TransformersEngine,
    "ar": AREngine,
    "ar-hf": HFAutoregressiveEngine,
    "vllm": VLLMBenchEngine,
    "vllm-server": VLLMServerBenchEngine,
}


def register_engine(name: str, factory: Callable[[], Engine]) -> None:
    """Add (or replace) an engine: `factory()` returns a fresh Engine whose `name` is `name`."""
    ENGINES[name] = factory


def make_engine(name: str) -> Engine:
    engine = ENGINES[name]()
    engine.name = name
    return engine
