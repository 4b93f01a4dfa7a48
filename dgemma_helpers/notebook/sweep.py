"""How the sampler's settings shape a generation (notebook 03): `RoundLog`, an on_step callback keeping a
few numbers per round, and `sampler_sweep()`, which varies one setting at a time around a base, with the
same seed for every run, and returns one `SweepRow` per run (tokens per forward, rounds per canvas,
acceptance, the text and, for a model that ships its training vocabulary, the text's word validity).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import GenerationSettings
from ..errors import InputError
from ..generation import GenerationResult, StepRecord, generate, resolve_settings
from ..model import DiffusionGemma
from ..tokenizer import decode
from ..train.word_validity import VOCABULARY_FILE, load_vocabulary, word_validity
from ..validate import check
from .tables import format_table


@dataclass
class RoundLog:
    """on_step callback: one dict per denoising round of batch row `row` (rounds where that row
    was already finished are skipped). Give `tokenizer` to keep the argmax canvas as text too."""

    row: int = 0
    tokenizer: Any = None
    rounds: list[dict] = field(default_factory=list)

    def __call__(self, record: StepRecord) -> None:
        r = self.row
        if not bool(record.active[r]):
            return
        entry = dict(canvas=record.canvas_index, step=record.step, temperature=record.temperature,
                     accepted=int(record.accepted[r].sum()), mean_entropy=float(record.entropy[r].mean()))
        if self.tokenizer is not None:
            entry["guess"] = decode(self.tokenizer, record.argmax_ids[r].tolist())
        self.rounds.append(entry)

    def mean_accepted(self) -> float:
        return sum(x["accepted"] for x in self.rounds) / max(len(self.rounds), 1)


def canvas_texts(model: DiffusionGemma, result: GenerationResult, row: int = 0) -> list[str | None]:
    """The text of each committed canvas of one row (pads dropped), in order."""
    L = model.config.canvas_length
    ids = result.token_ids[row]
    pad = result.settings.pad_token_id
    return [decode(model.tokenizer, [t for t in ids[s:s + L].tolist() if t != pad]) for s in range(0, len(ids), L)]


# ---- the sweep ---------------------------------------------------------------------------------------
DEFAULT_GRID: dict[str, Sequence] = {
    "max_denoising_steps": (4, 8, 16),
    "entropy_bound": (0.1, 1.0, 4.0),
    "temperature": ((0.1, 0.2), (0.4, 0.8), (0.8, 1.2)),  # (t_min, t_max): cold, the default, hot
    "adaptive_stopping": (True, False),
}
KNOBS = tuple(DEFAULT_GRID)  # the settings a sweep can vary (knob_settings maps each value to generate() keywords)


@dataclass
class SweepRow:
    knob: str  # the setting this run varied
    value: Any
    max_denoising_steps: int
    entropy_bound: float
    t_min: float
    t_max: float
    adaptive_stopping: bool
    tokens_per_forward: float
    forwards: int  # denoiser passes
    steps_per_canvas: list[int]  # rounds each canvas ran
    accepted_per_round: float  # mean positions accepted per round
    new_tokens: int  # generated tokens that are not padding
    text: str | None
    seconds: float  # wall time, for orientation only (never compared in tests)
    word_validity: float | None = None  # share of real words in the text; None: the model ships no vocabulary

    @property
    def label(self) -> str:
        v = self.value
        if self.knob == "temperature":
            return f"t {v[0]:g}->{v[1]:g}"
        if self.knob == "adaptive_stopping":
            return "adaptive stop" if v else "all steps"
        return f"{v:g}"


def knob_settings(knob: str, value: Any) -> dict[str, Any]:
    """generate() keyword arguments for one swept value."""
    if knob == "max_denoising_steps":
        return {"max_denoising_steps": int(value)}
    if knob == "entropy_bound":
        return {"entropy_bound": float(value)}
    if knob == "temperature":
        try:
            t_min, t_max = value
        except (TypeError, ValueError):
            raise InputError(f"temperature values are (t_min, t_max) pairs, e.g. (0.4, 0.8) (got {value!r}).") from None
        return {"t_min": float(t_min), "t_max": float(t_max)}
    if knob == "adaptive_stopping":
        return {} if value else {"confidence_threshold": 0.0}
    raise InputError(f"unknown sweep setting {knob!r}; choose from {list(KNOBS)}.")


def sampler_sweep(model: DiffusionGemma, prompt: str, *, grid: dict[str, Sequence] | None = None,
                  max_new_tokens: int | None = None, seed: int = 0, **base: Any) -> list[SweepRow]:
    """Run `generate` once per value in `grid` (default DEFAULT_GRID), changing one setting at a
    time; every other setting stays at `base` (generate() keywords) or the model's defaults."""
    grid = DEFAULT_GRID if grid is None else grid
    check(isinstance(prompt, str), InputError, "sweep runs one prompt: pass a single string.")
    unknown = [k for k in grid if k not in KNOBS]
    check(not unknown, InputError, f"unknown sweep setting(s) {unknown}; choose from {list(KNOBS)}.")
    # Plan and check every point before running any, so a bad value fails at once, not after minutes.
    setting_names = {f.name for f in dataclasses.fields(GenerationSettings)}
    plan = []
    for knob, values in grid.items():
        check(values, InputError, f"the sweep grid gives no values for {knob!r}: give at least one.")
        for value in values:
            kwargs = dict(base, max_new_tokens=max_new_tokens, seed=seed)
            kwargs.update(knob_settings(knob, value))
            settings = resolve_settings(model, {k: v for k, v in kwargs.items() if k in setting_names})
            others = sorted((k, repr(v)) for k, v in kwargs.items() if k not in setting_names)
            plan.append((knob, value, kwargs, repr(settings) + repr(others)))
    # Points with the same effective settings (each knob's default value, typically) give the same
    # tokens, seed for seed: run each once.
    vocabulary = load_vocabulary(model.path) if (model.path / VOCABULARY_FILE).exists() else None
    done: dict[str, SweepRow] = {}
    rows = []
    for knob, value, kwargs, key in plan:
        if key not in done:
            done[key] = run_point(model, prompt, knob, value, kwargs, vocabulary)
        row = done[key]
        rows.append(dataclasses.replace(row, knob=knob, value=value, steps_per_canvas=list(row.steps_per_canvas)))
    return rows


def run_point(model: DiffusionGemma, prompt: str, knob: str, value: Any, kwargs: dict[str, Any],
              vocabulary: set[str] | None = None) -> SweepRow:
    log = RoundLog()
    t0 = time.perf_counter()
    result = generate(model, prompt, on_step=log, **kwargs)
    seconds = time.perf_counter() - t0
    s = result.settings
    return SweepRow(
        knob=knob, value=value, max_denoising_steps=s.max_denoising_steps, entropy_bound=s.entropy_bound,
        t_min=s.t_min, t_max=s.t_max, adaptive_stopping=s.confidence_threshold > 0,
        tokens_per_forward=result.tokens_per_forward, forwards=result.num_forwards,
        steps_per_canvas=[steps[0] for steps in result.steps_per_canvas], accepted_per_round=log.mean_accepted(),
        new_tokens=int((result.token_ids[0] != s.pad_token_id).sum()), text=result.text, seconds=seconds,
        word_validity=None if vocabulary is None else word_validity([result.text], vocabulary))


def format_sweep(rows: Sequence[SweepRow], text_width: int = 60) -> str:
    """A plain-text table of a sweep, one line per run."""
    quality = any(r.word_validity is not None for r in rows)
    return format_table([dict(setting=r.knob, value=r.label, tokens_per_forward=r.tokens_per_forward,
                              forwards=r.forwards, accepted_per_round=r.accepted_per_round,
                              **({"word_validity": r.word_validity} if quality else {}), text=r.text or "")
                         for r in rows], width=text_width)
