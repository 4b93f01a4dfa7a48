"""What a benchmark run measures: the engines, the grid of settings, repeats. Every value is checked
before any model is loaded, so a typo costs a second, not a sweep."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import read_config
from ..engines.vllm_setup import check_engine_kwargs
from ..errors import InputError
from ..validate import is_int, is_number

DEFAULT_PROMPTS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "ROMEO:\nBut, soft! what light through yonder window breaks?\n",
    "KING RICHARD III:\nNow is the winter of our discontent made glorious summer.\n",
    "HAMLET:\nTo be, or not to be, that is the question.\n",
)


# Settings the sweep gives every engine; vllm_args may not override them for vLLM alone.
VLLM_SAMPLER_KEYS = {"max_denoising_steps", "entropy_bound", "t_min", "t_max", "stability_threshold",
                     "confidence_threshold", "eos_token_ids", "generation_config", "diffusion_config"}


@dataclass(frozen=True)
class GridPoint:
    """One point of the grid. Autoregressive engines ignore `steps` and `entropy_bound` (None)."""

    max_new_tokens: int
    batch: int
    steps: int | None = None
    entropy_bound: float | None = None

    def label(self) -> str:
        parts = [f"{self.max_new_tokens} tokens", f"batch {self.batch}"]
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.entropy_bound is not None:
            parts.append(f"bound {self.entropy_bound:g}")
        return ", ".join(parts)


@dataclass
class Sweep:
    # The defaults are `make report`'s: every engine (those that cannot run here are listed as
    # skipped), and a grid small enough for a 2-core CPU and models/dgemma-tiny in a few minutes.
    model: str = "models/dgemma-tiny"
    engines: list[str] = field(default_factory=lambda: ["kit", "kit-cuda", "transformers", "ar", "ar-hf", "vllm",
                                                        "vllm-server"])
    max_new_tokens: list[int] = field(default_factory=lambda: [64, 128])
    steps: list[int] = field(default_factory=lambda: [8, 16])
    batch: list[int] = field(default_factory=lambda: [1])
    entropy_bounds: list[float] = field(default_factory=lambda: [0.1, 1.0])
    repeats: int = 3
    warmup: int = 1
    reference: str = "transformers"  # ratios against this engine, same settings, same run
    baseline: str = "ar"  # the autoregressive engine diffusion's speed-up is measured against
    ignore_eos: bool = True  # every run writes exactly max_new_tokens: equal work for every engine
    early_stop: bool = True  # the checkpoint's adaptive stopping (stable + confident)
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None  # CPU threads for torch (None: torch's default)
    ar_model: str | None = None  # an autoregressive (Gemma 4) checkpoint for the "ar-hf" engine
    interleave: bool | None = None  # engines alternate per repeat (None: when all models fit in memory)
    seed: int = 0
    # vLLM engine arguments for the "vllm"/"vllm-server" engines, e.g. {"tensor_parallel_size": 2}
    vllm_args: dict[str, Any] = field(default_factory=dict)

    def configs(self, autoregressive: bool) -> Iterator[GridPoint]:
        """The grid, as an engine sees it: autoregressive engines have no steps or entropy bound."""
        steps, bounds = ([None], [None]) if autoregressive else (self.steps, self.entropy_bounds)
        return (GridPoint(*p) for p in itertools.product(self.max_new_tokens, self.batch, steps, bounds))

    def validate(self, known_engines: Sequence[str]) -> Sweep:
        """Raise InputError on the first bad value; return self."""
        known = ", ".join(known_engines)
        if not self.engines:
            raise InputError(f"no engines given: pick some of {known}.")
        unknown = [e for e in self.engines if e not in known_engines]
        if unknown:
            raise InputError(f"unknown engine(s) {', '.join(map(repr, unknown))}: choose from {known} "
                             "(comma-separated, e.g. --engines kit,transformers,ar).")
        dupes = sorted({e for e in self.engines if self.engines.count(e) > 1})
        if dupes:
            raise InputError(f"engine(s) {', '.join(dupes)} listed twice: give each engine once.")
        for role in ("reference", "baseline"):
            if getattr(self, role) not in known_engines:
                raise InputError(f"{role} engine {getattr(self, role)!r} is unknown: choose from {known}.")
        for name in ("max_new_tokens", "steps", "batch"):
            _check_list(name, getattr(self, name), lambda v: is_int(v) and v > 0, "a positive integer")
        _check_list("entropy_bounds", self.entropy_bounds, lambda v: is_number(v) and math.isfinite(v) and v > 0,
                    "a number > 0 (e.g. 0.1)")
        if not is_int(self.repeats) or self.repeats < 1:
            raise InputError(f"repeats must be an integer >= 1 (got {self.repeats!r}); 3 or more gives a median.")
        if not is_int(self.warmup) or self.warmup < 0:
            raise InputError(f"warmup must be an integer >= 0 (got {self.warmup!r}).")
        if self.threads is not None and (not is_int(self.threads) or self.threads < 1):
            raise InputError(f"threads must be a positive integer or None (got {self.threads!r}).")
        if (not isinstance(self.prompts, (list, tuple)) or not self.prompts
                or not all(isinstance(p, str) and p.strip() for p in self.prompts)):
            raise InputError("prompts must be a non-empty list of non-empty strings.")
        args = self.vllm_args
        if not isinstance(args, dict) or not all(isinstance(k, str) and k.isidentifier() for k in args):
            raise InputError("vllm_args must map vLLM engine argument names to values, e.g. "
                             f'{{"tensor_parallel_size": 2}} (got {args!r}).')
        sampler = sorted(set(args) & VLLM_SAMPLER_KEYS)
        if sampler:
            raise InputError(f"vllm_args sets {sampler}: the sweep sets the sampler for every engine alike (--steps, "
                             "--entropy-bounds, --no-early-stop); leave them out of --vllm-args.")
        check_engine_kwargs(args)
        if self.ar_model is not None and not Path(self.ar_model).expanduser().is_dir():
            raise InputError(f"--ar-model {self.ar_model!r} is not a directory: give the path of an autoregressive "
                             "checkpoint (config.json + safetensors), or leave it out to skip the ar-hf engine.")
        read_config(self.model)  # a missing or foreign model directory fails here, with how to get one
        return self


def _check_list(name: str, values: Sequence[Any], ok, what: str) -> None:
    flag = "--" + name.replace("_", "-")
    if not values:
        raise InputError(f"{flag} is empty: give at least one value.")
    for v in values:
        if not ok(v):
            raise InputError(f"{flag}: {v!r} is not {what}.")
    if len(set(values)) != len(values):
        raise InputError(f"{flag} lists a value twice ({list(values)}): give each value once.")


def flag_list(values: Sequence) -> str:
    """A list as its flag is written: [0.1, 1.0] -> "0.1,1"."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def parse_list(text: str | Sequence, kind: type, flag: str) -> list:
    """'256,1024' -> [256, 1024]; a number or a list passes through (each item converted). InputError names the flag."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float, list, tuple)):
        raise InputError(f"--{flag} {text!r}: give comma-separated values, e.g. --{flag} 64,128.")
    if isinstance(text, (int, float)):  # papermill -p steps 16 passes an int
        text = [text]
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if not items or any(item == "" for item in items):
        raise InputError(f"--{flag} {text!r}: give comma-separated values without blanks, e.g. --{flag} 64,128.")
    example = "64,128" if kind is int else "0.1,0.5"
    out = []
    for item in items:
        try:
            value = kind(item)
        except (TypeError, ValueError):
            raise InputError(f"--{flag}: {item!r} is not {'an integer' if kind is int else 'a number'}; "
                             f"give comma-separated values, e.g. --{flag} {example}.") from None
        if kind is int and isinstance(item, float) and item != value:  # int(1.5) would truncate silently
            raise InputError(f"--{flag}: {item!r} is not an integer.")
        out.append(value)
    return out
