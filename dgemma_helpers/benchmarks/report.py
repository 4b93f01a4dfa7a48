"""Benchmark results on disk (results.json, results.csv), the report directory, and Markdown tables,
each file and a whole report written whole or not at all."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_dir, atomic_write, make_readable
from ..errors import DGemmaError, InputError
from ..signals import STOP_SIGNALS, stop_on_signals
from .grid import GridPoint
from .harness import ROW_FIELDS, SCHEMA


def write_results(results: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """results.json (everything) and results.csv (one line per row, ROW_FIELDS columns)."""
    out = Path(out_dir)
    text = json.dumps(_jsonable(results), indent=2, allow_nan=False) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in _jsonable(row).items()} for row in results["rows"])
    return atomic_write(out / "results.json", text), atomic_write(out / "results.csv", buf.getvalue())


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results.json (or the directory holding one), checking that it is one."""
    path = Path(path) / "results.json" if Path(path).is_dir() else Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} not found: run `python -m dgemma_helpers bench --out DIR` or `make report` first.") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}): re-run the benchmark.") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise InputError(f"{path} is not a benchmark results file (schema {SCHEMA}).")
    return results


def _jsonable(value: Any) -> Any:
    """NaN and infinities become None (JSON has neither); floats keep 4 significant places."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ---- the report directory: complete, or absent -------------------------------------------------
KILL_AFTER_S = 20.0  # a kernel still running this long after Ctrl-C is killed
_GIVE_UP_S = 60.0  # after the kill, how long to wait for the notebook runner to notice


def build_report(out_dir: str | os.PathLike, build: Callable[[Path], dict[str, Path]]) -> dict[str, Path]:
    """Run `build(tmp)` (it writes a report into the empty directory tmp and returns its files) and move tmp
    into place as `out_dir` only when it returns. On a stop signal the notebook's kernel is stopped and
    nothing is written; if build fails, what it wrote is kept as <out_dir>.failed. An existing `out_dir`
    is replaced whole, so it must be empty or an earlier report."""
    final = Path(out_dir)
    _check_replaceable(final)
    with stop_on_signals(), atomic_dir(final) as tmp:
        try:
            paths = _interruptible(build, tmp)
        except DGemmaError as e:
            failed = _keep_failed(tmp, final)
            if failed is None:
                raise
            raise type(e)(f"{_moved(str(e), tmp, failed)} (what it wrote is kept in {shown(failed)}, "
                          "named as incomplete)") from None
        _retarget(tmp, final)
        if threading.current_thread() is threading.main_thread():
            # The report is complete: a stop signal from here on could only lose it, so none is heeded
            # until the move into place is done (stop_on_signals then puts the handlers back).
            for s in STOP_SIGNALS:
                signal.signal(s, signal.SIG_IGN)
    return {name: final / Path(p).relative_to(tmp) if Path(p).is_relative_to(tmp) else Path(p)
            for name, p in paths.items()}


def shown(path: str | os.PathLike) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_replaceable(final: Path) -> None:
    # atomic_dir replaces the target whole: only an empty directory or an earlier report may be replaced,
    # never, say, `--out .` or a home directory.
    if final.exists() and (not final.is_dir() or (any(final.iterdir()) and not (final / "results.json").is_file())):
        raise InputError(f"{shown(final)} exists and is not an earlier report (it has no results.json): a report "
                         "replaces its directory whole, so give a new one, e.g. --out reports/mine.")


def _interruptible(build: Callable[[Path], dict[str, Path]], tmp: Path) -> dict[str, Path]:
    """build(tmp) in a worker thread, so that Ctrl-C reaches this (main) thread as KeyboardInterrupt.
    (Run in the main thread, papermill's notebook client takes SIGINT for itself and carries on.)"""
    box: dict[str, Any] = {}
    # An Event, not Thread.join/is_alive: a join interrupted by Ctrl-C can leave the thread marked as
    # stopped while it still runs (Python < 3.13), and the kernel would outlive this process.
    done = threading.Event()

    def work() -> None:
        try:
            box["paths"] = build(tmp)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="report-notebook", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        _stop(done)
        raise
    if "error" in box:
        raise box["error"]
    return box["paths"]


def _stop(done: threading.Event) -> None:
    """End the kernel(s) this process started and all they started: SIGTERM, SIGKILL after KILL_AFTER_S
    or at once on a second Ctrl-C. Not SIGINT, Jupyter's 'interrupt': ipykernel ignores it between
    cells, and one landing in the kernel's own code leaves a reply unsent that the runner waits for.
    Returns once the worker is done (or after _GIVE_UP_S more)."""
    start = time.monotonic()
    kill_at, give_up = start + KILL_AFTER_S, start + KILL_AFTER_S + _GIVE_UP_S
    # papermill's notebook client logs "Kernel died while waiting for execute reply" about the kernel
    # stopped here on purpose: the user asked for it, and is told once what it means (nothing written).
    runner_log = logging.getLogger("papermill")
    was_disabled, runner_log.disabled = runner_log.disabled, True
    try:
        while not done.is_set() and time.monotonic() < give_up:
            sig = signal.SIGKILL if time.monotonic() >= kill_at else signal.SIGTERM
            for pid in _descendant_pids():  # each time round: a kernel still starting is caught too
                # A kernel and a vLLM server each lead their own process group (with their children in it);
                # any other process gets the signal alone, so this process's own group is never signalled.
                with contextlib.suppress(ProcessLookupError, PermissionError):  # gone already
                    (os.killpg if os.getpgid(pid) == pid else os.kill)(pid, sig)
            try:
                done.wait(0.5)
            except KeyboardInterrupt:
                kill_at = time.monotonic()
    finally:
        runner_log.disabled = was_disabled


def _descendant_pids() -> list[int]:
    """The processes below this one: the notebook's kernel and what it started (a vLLM server too)."""
    parents: dict[int, int] = {}
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                        fields = f.read().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
                    parents[int(entry)] = int(fields[1])
                except (OSError, IndexError, ValueError):
                    continue  # gone already, or not ours to read
    else:
        try:  # no /proc (macOS): ask ps
            listing = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True,
                                     timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        parents = {int(a): int(b) for a, b in (line.split() for line in listing.splitlines() if len(line.split()) == 2)}
    found, todo = [], [os.getpid()]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found += kids
        todo += kids
    return found


def _retarget(tmp: Path, new: Path) -> None:
    """The executed notebook and its HTML name the temporary directory they were written in: make them
    name the one they are moved to."""
    for path in tmp.iterdir():
        if path.suffix in (".ipynb", ".html"):
            text = path.read_text(encoding="utf-8")
            changed = _moved(text, tmp, new)
            if changed != text:
                atomic_write(path, changed)


def _moved(text: str, old: Path, new: Path) -> str:
    return text.replace(str(old.resolve()), str(new.resolve())).replace(str(old), str(new))


def _keep_failed(tmp: Path, final: Path) -> Path | None:
    """Move what a failed build wrote to <final>.failed (plainly not a report), or None if it wrote nothing."""
    if not any(tmp.iterdir()):
        return None
    failed = final.with_name(final.name + ".failed")
    _retarget(tmp, failed)
    shutil.rmtree(failed, ignore_errors=True)
    make_readable(tmp)
    tmp.rename(failed)
    return failed


# ---- tables -----------------------------------------------------------------------------------
SUMMARY_COLUMNS = [
    ("engine", "engine"), ("max_new_tokens", "tokens"), ("batch", "batch"), ("steps", "steps"),
    ("entropy_bound", "bound"), ("tokens_per_s", "tok/s"), ("tokens_per_s_min", "min"), ("tokens_per_s_max", "max"),
    ("ms_per_step", "ms/step"), ("tokens_per_forward", "tok/fwd"), ("steps_per_canvas", "steps/canvas"),
    ("first_canvas_ms", "1st canvas ms"), ("peak_mem_mb", "peak MB"), ("quality", "quality"),
    ("distinct_3grams", "distinct 3-grams"), ("speedup_vs_reference", "x ref"), ("speedup_vs_baseline", "x AR"),
]


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] | None = None) -> str:
    columns = columns or SUMMARY_COLUMNS
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "|".join("---" if key == "engine" else "---:" for key, _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


NOISY_SPREAD = 3.0  # a setting whose slowest timed run is this many times slower than its fastest


def results_table(results: dict[str, Any]) -> str:
    """The successful rows, engine by engine, then a line for each setting whose timed runs spread so
    widely (max/min > NOISY_SPREAD tokens/s) that its median means little."""
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    if not ok:
        return "_no successful runs_"
    noisy = [f"- **noisy, re-run**: {r['engine']}, {_setting(r)}: its runs gave {r['tokens_per_s_min']:.3g} to "
             f"{r['tokens_per_s_max']:.3g} tokens/s"
             for r in ok if r["tokens_per_s_min"] and r["tokens_per_s_max"] / r["tokens_per_s_min"] > NOISY_SPREAD]
    if noisy:
        noisy.insert(0, f"\nThe timed runs of these settings spread more than {NOISY_SPREAD:g}x (something else "
                        "ran on the machine, or a cache warmed up late): re-run them, with more `repeats`.\n")
    return "\n".join([markdown_table(ok), *noisy])


def engines_table(results: dict[str, Any]) -> str:
    """Every engine asked for, with its status and, when skipped or failed, why; plus failed runs."""
    lines = ["| engine | kind | status | detail |", "|---|---|---|---|"]
    for e in results["engines"]:
        lines.append(f"| {e['name']} | {e['kind']} | {e['status']} | {_escape(e['reason'] or e['description'])} |")
    for r in results["rows"]:
        if r["status"] == "failed" and r["max_new_tokens"] is not None:
            lines.append(f"| {r['engine']} | {r['kind']} | run failed ({_setting(r)}) | {_escape(r['error'])} |")
    notes = results.get("notes") or []
    return "\n".join(lines + ([""] + [f"- note: {n}" for n in notes] if notes else []))


def machine_summary(results: dict[str, Any]) -> str:
    m, model = results["machine"], results["model"]
    where = m["gpu"] or f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    trained = " (UNTRAINED random weights: quality figures are meaningless)" if model["untrained"] else ""
    return (f"{where}; torch {m['torch']}, transformers {m['transformers']}, {m['dtype']} on {m['device']}; "
            f"{m['date']}. Model {model['path']}: {model['summary']}{trained}.")


def _setting(row: dict[str, Any]) -> str:
    return GridPoint(row["max_new_tokens"], row["batch"], row["steps"], row["entropy_bound"]).label()


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return _escape(str(v))


def _escape(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")
