"""Benchmark results on disk (results.json, results.csv) and as Markdown tables.

Files are written whole or not at all: each goes to a temporary name in the same directory and
is renamed into place, so an interrupted report never leaves a half-written results file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..errors import InputError
from .harness import ROW_FIELDS, SCHEMA


def write_results(results: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """results.json (everything) and results.csv (one line per row, ROW_FIELDS columns)."""
    out = Path(out_dir)
    text = json.dumps(_jsonable(results), indent=2, allow_nan=False) + "\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in results["rows"]:
        writer.writerow({k: "" if v is None else v for k, v in _jsonable(row).items()})
    return atomic_write(out / "results.json", text), atomic_write(out / "results.csv", buf.getvalue())


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results.json (or the directory holding one), checking that it is one."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
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
    """NaN and infinities become None (JSON has neither); floats are rounded to 4 significant places."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ---- tables -----------------------------------------------------------------------------------
SUMMARY_COLUMNS = [
    ("engine", "engine"), ("max_new_tokens", "tokens"), ("batch", "batch"), ("steps", "steps"),
    ("entropy_bound", "bound"), ("tokens_per_s", "tok/s"), ("tokens_per_s_min", "min"), ("tokens_per_s_max", "max"),
    ("ms_per_step", "ms/step"), ("tokens_per_forward", "tok/fwd"), ("steps_per_canvas", "steps/canvas"),
    ("first_canvas_ms", "1st canvas ms"), ("peak_mem_mb", "peak MB"), ("quality", "quality"),
    ("speedup_vs_reference", "x ref"), ("speedup_vs_baseline", "x AR"),
]


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]] | None = None) -> str:
    columns = columns or SUMMARY_COLUMNS
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "|".join("---" if key == "engine" else "---:" for key, _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def results_table(results: dict[str, Any]) -> str:
    """The successful rows, engine by engine."""
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    return markdown_table(ok) if ok else "_no successful runs_"


def engines_table(results: dict[str, Any]) -> str:
    """Every engine asked for, with its status and, when skipped or failed, why; plus failed runs."""
    lines = ["| engine | kind | status | detail |", "|---|---|---|---|"]
    for e in results["engines"]:
        lines.append(f"| {e['name']} | {e['kind']} | {e['status']} | {_escape(e['reason'] or e['description'])} |")
    for r in results["rows"]:
        if r["status"] == "failed" and r["max_new_tokens"] is not None:
            where = ", ".join(f"{k} {r[k]}" for k in ("max_new_tokens", "batch", "steps", "entropy_bound")
                              if r[k] is not None)
            lines.append(f"| {r['engine']} | {r['kind']} | run failed ({where}) | {_escape(r['error'])} |")
    notes = results.get("notes") or []
    return "\n".join(lines + ([""] + [f"- note: {n}" for n in notes] if notes else []))


def machine_summary(results: dict[str, Any]) -> str:
    m, model = results["machine"], results["model"]
    where = m["gpu"] or f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    trained = " (UNTRAINED random weights: quality figures are meaningless)" if model["untrained"] else ""
    return (f"{where}; torch {m['torch']}, transformers {m['transformers']}, {m['dtype']} on {m['device']}; "
            f"{m['date']}. Model {model['path']}: {model['summary']}{trained}.")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return _escape(str(v))


def _escape(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")
