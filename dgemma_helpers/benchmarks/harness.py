"""The benchmark harness: every engine over the sweep's grid, measured alike, in one run.

Per grid point: `warmup` untimed runs per engine, then `repeats` timed runs with the engines
interleaved (kit, transformers, kit, ...), so machine noise hits them alike. Each run is timed from
outside between two device synchronisations. A run that raises is recorded as failed and the sweep
goes on. Ratios are taken against engines measured in this same run, never against another day's.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import read_config, weights_bytes
from ..devices import available_memory, resolve_device, resolve_dtype, synchronize
from ..engines.autoregressive import continuation_nll
from ..tokenizer import load_tokenizer
from ..train.word_validity import VOCABULARY_FILE, distinct_ngrams, load_vocabulary, word_validity
from .engines import AUTOREGRESSIVE, ENGINES, Engine, Measurement, ModelPool, Prompts, make_engine
from .grid import GridPoint, Sweep
from .measure import copy_bandwidth, peak_memory_kind, read_peak_memory, reset_peak_memory

SCHEMA = "dgemma-bench/1"

# One row per (engine, grid point), plus one per skipped engine or engine that failed to load.
ROW_FIELDS = [
    "engine", "kind", "status", "error", "max_new_tokens", "batch", "steps", "entropy_bound", "repeats",
    "tokens", "tokens_per_s", "tokens_per_s_min", "tokens_per_s_max", "ms_per_step", "ms_per_step_min",
    "ms_per_step_max", "latency_ms", "tokens_per_forward", "steps_per_canvas", "first_canvas_ms",
    "first_canvas_ms_min", "first_canvas_ms_max", "first_token_ms", "peak_mem_mb", "peak_mem_kind",
    "quality", "quality_metric", "distinct_3grams", "speedup_vs_reference", "step_speedup_vs_reference",
    "speedup_vs_baseline", "sample_text",
]


def run_benchmark(sweep: Sweep, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the sweep; return the results (see ROW_FIELDS and report.py). Bad sweeps raise InputError first."""
    sweep.validate(list(ENGINES))
    if sweep.threads:
        torch.set_num_threads(sweep.threads)
    device = resolve_device(sweep.device)
    dtype = resolve_dtype(sweep.dtype, device)
    started, t_start = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    run = _Run(sweep, device, progress or (lambda msg: print(msg, file=sys.stderr, flush=True)))
    usable = run.usable([make_engine(name) for name in sweep.engines])
    interleave = _decide_interleave(sweep, usable, device, run.notes)
    groups = [usable] if interleave else [[e] for e in usable]
    pool = ModelPool(sweep)
    # On any exit, a stop signal included (the CLI makes SIGTERM a KeyboardInterrupt), every engine's
    # processes and files go: a vLLM engine's EngineCore, a vLLM server's process group.
    try:
        prompt_ids = _prompt_ids(sweep)
        for group in groups:
            prepared = run.load(group, pool)
            run.grid(prepared, prompt_ids)
            if len(groups) > 1:
                for e in prepared:
                    e.release()
                pool.clear()
                _free(device)
        quality_metric = run.collect(usable, pool)
        floor = _guarded(_weight_streaming_floor, run.notes)(sweep, device, dtype) if device.type == "cuda" else None
    finally:
        for e in usable:
            e.release()
        pool.clear()
    return dict(schema=SCHEMA, created=started.isoformat(timespec="seconds"),
                duration_s=round(time.perf_counter() - t_start, 1),
                machine=machine_info(device, dtype), model=_model_info(sweep, dtype), sweep=dataclasses.asdict(sweep),
                engines=list(run.statuses.values()), rows=run.rows, floor=floor,
                peak_memory_kind=peak_memory_kind(device), quality_metric=quality_metric, interleaved=interleave,
                notes=run.notes)


class _Run:
    """One benchmark's state: the rows so far, each engine's status, the timed runs and the failures."""

    def __init__(self, sweep: Sweep, device: torch.device, say: Callable[[str], None]) -> None:
        self.sweep, self.device, self.say = sweep, device, say
        self.rows: list[dict[str, Any]] = []
        self.statuses: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []
        self.runs: dict[tuple[str, GridPoint], list[Measurement]] = {}
        self.failures: dict[tuple[str, GridPoint], str] = {}

    def usable(self, engines: list[Engine]) -> list[Engine]:
        """The engines that can run here; the others get a skipped row with the reason."""
        usable = []
        for e in engines:
            try:
                ok, reason = e.available(self.sweep)
            except Exception as ex:  # noqa: BLE001 - a broken optional dependency is a reason to skip, not to crash
                ok, reason = False, _describe(ex)
            self.statuses[e.name] = dict(name=e.name, kind=e.kind, description=e.description,
                                         status="ok" if ok else "skipped", reason=reason)
            if ok:
                usable.append(e)
            else:
                self.say(f"skipping {e.name}: {reason}")
                self.rows.append(_row(e, None, status="skipped", error=reason))
        return usable

    def load(self, engines: list[Engine], pool: ModelPool) -> list[Engine]:
        """The engines whose prepare() succeeded; a failure is recorded and the rest go on."""
        prepared = []
        for e in engines:
            self.say(f"loading {e.name} ...")
            try:
                e.prepare(self.sweep, pool)
                prepared.append(e)
            except Exception as ex:  # noqa: BLE001 - recorded, the report goes on
                error = _describe(ex)
                self.say(f"{e.name} failed to load: {error}")
                self.statuses[e.name].update(status="failed", reason=error)
                self.rows.append(_row(e, None, status="failed", error=error))
                e.release()
        return prepared

    def grid(self, engines: list[Engine], prompt_ids: list[list[int]]) -> None:
        points: dict[GridPoint, list[Engine]] = {}
        for e in engines:
            for config in self.sweep.configs(e.kind == AUTOREGRESSIVE):
                points.setdefault(config, []).append(e)
        # Grid points in (entropy bound, steps) order: engines that fix those when they start (vLLM)
        # restart once per pair rather than at every point. Rows are reported in the sweep's order.
        for config in sorted(points, key=lambda c: tuple((v is None, v or 0) for v in (c.entropy_bound, c.steps))):
            self._point(points[config], config, prompt_ids)

    def _point(self, engines: list[Engine], config: GridPoint, prompt_ids: list[list[int]]) -> None:
        s, n = self.sweep, config.batch
        prompts = Prompts(texts=[s.prompts[i % len(s.prompts)] for i in range(n)],
                          ids=[prompt_ids[i % len(prompt_ids)] for i in range(n)])
        alive = []
        for e in engines:
            try:
                e.configure(config)
                for w in range(s.warmup):
                    e.run(prompts, config, seed=s.seed + 1000 + w)
                alive.append(e)
            except Exception as ex:  # noqa: BLE001
                self._fail(e, config, ex)
        for r in range(s.repeats):
            for e in list(alive):
                try:
                    m = _timed_run(e, prompts, config, s.seed + r, self.device)
                except Exception as ex:  # noqa: BLE001
                    self._fail(e, config, ex)
                    alive.remove(e)
                    continue
                self.runs.setdefault((e.name, config), []).append(m)
        for e in alive:
            tps = statistics.median(m.tokens / m.total_s for m in self.runs[(e.name, config)])
            self.say(f"{e.name:<13} {config.label():<40} {tps:9.1f} tok/s")

    def _fail(self, engine: Engine, config: GridPoint, ex: BaseException) -> None:
        error = _describe(ex)
        self.say(f"{engine.name} failed at {config.label()}: {error}")
        self.failures[(engine.name, config)] = error
        _free(self.device)

    def collect(self, engines: list[Engine], pool: ModelPool) -> str:
        """A row per engine and grid point, scored and compared; returns the quality metric's name."""
        quality_metric, score = _quality_scorer(self.sweep, pool)
        for e in engines:
            if self.statuses[e.name]["status"] == "failed":
                continue
            for config in self.sweep.configs(e.kind == AUTOREGRESSIVE):
                key = (e.name, config)
                if key in self.failures:
                    self.rows.append(_row(e, config, status="failed", error=self.failures[key]))
                elif key in self.runs:
                    self.rows.append(_aggregate(e, config, self.runs[key], self.device, quality_metric,
                                                _guarded(score, self.notes)))
        _add_ratios(self.rows, self.sweep)
        for role in ("reference", "baseline"):
            name = getattr(self.sweep, role)
            if not any(r["engine"] == name and r["status"] == "ok" for r in self.rows):
                self.notes.append(f"no speed-ups over the {role} engine '{name}': it did not run "
                                  "(see the engines table).")
        return quality_metric


def _timed_run(engine: Engine, prompts: Prompts, config: GridPoint, seed: int, device: torch.device) -> Measurement:
    reset_peak_memory(device)
    synchronize(device)
    t = time.perf_counter()
    m = engine.run(prompts, config, seed)
    synchronize(device)
    m.total_s = time.perf_counter() - t
    m.prompt_ids = prompts.ids
    m.peak_memory_bytes = read_peak_memory(device) if engine.in_process_memory else None
    return m


def _describe(ex: BaseException) -> str:
    return f"{type(ex).__name__}: {ex}".strip()[:500]


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _prompt_ids(sweep: Sweep) -> list[list[int]]:
    """Each prompt's ids in the diffusion checkpoint's vocabulary, all cut to the shortest one's
    length (no padding anywhere). Without a tokenizer: fixed pseudo-random ids, 32 per prompt."""
    path, config = read_config(sweep.model)
    tokenizer = load_tokenizer(Path(path))
    if tokenizer is None:
        g = torch.Generator().manual_seed(sweep.seed)
        return torch.randint(3, config.vocab_size, (len(sweep.prompts), 32), generator=g).tolist()
    rows = [tokenizer.encode(p, add_special_tokens=True) for p in sweep.prompts]
    n = min(len(r) for r in rows)
    return [r[:n] for r in rows]


def _decide_interleave(sweep: Sweep, engines: list[Engine], device: torch.device, notes: list[str]) -> bool:
    if sweep.interleave is not None:
        return sweep.interleave
    need = sum(e.weights_bytes(sweep) for e in engines)
    free = available_memory(device)
    if free is None or need <= 0.7 * free:
        return True
    notes.append(f"engines ran one after another, not interleaved: together their weights ({need / 2**30:.1f} GiB) "
                 f"do not fit in the {free / 2**30:.1f} GiB free on {device}.")
    return False


# ---- aggregation ------------------------------------------------------------------------------
def _row(engine: Engine, config: GridPoint | None, **values: Any) -> dict[str, Any]:
    row = {f: None for f in ROW_FIELDS}
    row.update(engine=engine.name, kind=engine.kind)
    if config is not None:
        row.update(dataclasses.asdict(config))
    row.update(values)
    return row


def _spread(name: str, values: list[float]) -> dict[str, float | None]:
    """The median of `values` as `name`, and their range as `name`_min / `name`_max (None if empty)."""
    return {name: statistics.median(values) if values else None, f"{name}_min": min(values, default=None),
            f"{name}_max": max(values, default=None)}


def _aggregate(engine: Engine, config: GridPoint, ms: list[Measurement], device: torch.device,
               quality_metric: str | None, score) -> dict[str, Any]:
    med = statistics.median
    texts = [t for m in ms for t in m.texts if t is not None]
    peaks = [m.peak_memory_bytes for m in ms if m.peak_memory_bytes is not None]
    return _row(engine, config, status="ok", repeats=len(ms), tokens=med(m.tokens for m in ms),
                **_spread("tokens_per_s", [m.tokens / m.total_s for m in ms]),
                **_spread("ms_per_step", [1000 * m.step_s / m.forwards for m in ms if m.forwards]),
                **_spread("first_canvas_ms", [1000 * m.first_canvas_s for m in ms]),
                latency_ms=1000 * med(m.total_s for m in ms), tokens_per_forward=med(m.tokens_per_forward for m in ms),
                steps_per_canvas=None if engine.kind == AUTOREGRESSIVE else med(m.steps_per_canvas for m in ms),
                first_token_ms=1000 * med(m.first_token_s for m in ms),
                peak_mem_mb=max(peaks) / 2**20 if peaks else None,
                peak_mem_kind=peak_memory_kind(device, short=True) if engine.in_process_memory else "not_measured",
                quality=score(ms) if score else None, quality_metric=quality_metric,
                distinct_3grams=distinct_ngrams(texts) if texts else None,
                # Line breaks kept, as "\n" (the csv module quotes a field holding its line terminator, not "\r").
                sample_text=texts[0][:400].replace("\r\n", "\n").replace("\r", "\n") if texts else None)


def _add_ratios(rows: list[dict[str, Any]], sweep: Sweep) -> None:
    ok = [r for r in rows if r["status"] == "ok"]
    by_key = {(r["engine"], r["max_new_tokens"], r["batch"], r["steps"], r["entropy_bound"]): r for r in ok}
    for r in ok:
        ref = by_key.get((sweep.reference, r["max_new_tokens"], r["batch"], r["steps"], r["entropy_bound"]))
        if ref is not None:
            r["speedup_vs_reference"] = r["tokens_per_s"] / ref["tokens_per_s"]
            if r["ms_per_step"] and ref["ms_per_step"]:
                r["step_speedup_vs_reference"] = ref["ms_per_step"] / r["ms_per_step"]
        base = by_key.get((sweep.baseline, r["max_new_tokens"], r["batch"], None, None))
        if base is not None:
            r["speedup_vs_baseline"] = r["tokens_per_s"] / base["tokens_per_s"]


def _quality_scorer(sweep: Sweep, pool: ModelPool):
    """Word validity when the model ships its training vocabulary (models/dgemma-tiny does); else
    the generated text's NLL under the checkpoint's own causal encoder (lower is better)."""
    if (Path(sweep.model) / VOCABULARY_FILE).exists():
        vocabulary = load_vocabulary(sweep.model)
        return "word_validity", lambda ms: word_validity([t for m in ms for t in m.texts if t], vocabulary)

    def nll(ms: list[Measurement]) -> float | None:
        rows = [(p, t) for m in ms if m.token_ids is not None for p, t in zip(m.prompt_ids, m.token_ids)]
        if not rows:
            return None  # texts in another vocabulary (ar-hf): not scored
        return continuation_nll(pool.kit_model(), [p for p, _ in rows], [t for _, t in rows])

    return "gen_nll", nll


def _guarded(fn, notes: list[str]):
    """fn, except that an error becomes None and a note: a secondary figure never sinks the report."""
    def call(*args):
        try:
            return fn(*args)
        except Exception as ex:  # noqa: BLE001
            note = f"{getattr(fn, '__name__', 'quality')} failed: {_describe(ex)}"
            if note not in notes:
                notes.append(note)
            return None

    return call


# ---- machine, floor ---------------------------------------------------------------------------
def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = dict(
        device=str(device), dtype=str(dtype).replace("torch.", ""), cpu=_cpu_model(), cpu_cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(), platform=platform.platform(), python=platform.python_version(),
        torch=torch.__version__, transformers=transformers.__version__, cuda=torch.version.cuda,
        gpu=None, gpu_memory_gb=None, date=datetime.date.today().isoformat())
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpu_capability=f"{props.major}.{props.minor}")
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or platform.machine()


def _model_info(sweep: Sweep, dtype: torch.dtype) -> dict[str, Any]:
    path, c = read_config(sweep.model)
    return dict(path=str(path), untrained=(Path(path) / "dgemma_random.json").exists(),
                summary=f"hidden {c.hidden_size}, {c.num_layers} layers, {c.num_experts} experts top-{c.top_k_experts}, "
                        f"vocab {c.vocab_size}, canvas {c.canvas_length}",
                canvas_length=c.canvas_length, vocab_size=c.vocab_size,
                weights_mb=round(weights_bytes(c, dtype) / 2**20, 1))


def _weight_streaming_floor(sweep: Sweep, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """The least time a denoising step can take on this GPU: reading every weight once (a canvas of
    tokens each picking top-k hits every expert), at the copy bandwidth measured now."""
    bandwidth = copy_bandwidth(device)
    weights = weights_bytes(read_config(sweep.model)[1], dtype)
    return dict(bandwidth_gb_s=bandwidth / 1e9, weights_mb=weights / 2**20, floor_ms_per_step=1000 * weights / bandwidth)
