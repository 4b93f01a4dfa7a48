"""The benchmark report's figures, from a results dict (results.json); `save_plots` writes them all as PNG.
A plot whose data is missing (an engine skipped or failed) says so inside the figure: the report always renders.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from . import style
from .style import figure

AUTOREGRESSIVE = "autoregressive"  # a row's "kind" in results.json (benchmarks/engines.py writes it)
SETTING_AXIS = "setting (output tokens, batch; denoising steps, entropy bound)"

Rows = list[dict[str, Any]]


def _ok(results: dict[str, Any], kind: str | None = None) -> Rows:
    return [r for r in results["rows"] if r["status"] == "ok" and (kind is None or r["kind"] == kind)]


def _empty(ax, message: str, title: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, color="0.4",
            fontsize=style.FONT)
    ax.set(xticks=[], yticks=[])
    style.label(ax, title, "", "")


def _setting_label(n: int, batch: int, steps: int | None, entropy_bound: float) -> str:
    return f"{n} tok, b{batch}" + ("" if steps is None else f"\n{steps} steps, H<={entropy_bound:g}")


def _diffusion_settings(results: dict[str, Any]) -> list[tuple]:
    """Grid points of the diffusion engines, in sweep order (or the AR ones if no diffusion ran)."""
    rows = _ok(results, "diffusion") or _ok(results)
    return list(dict.fromkeys((r["max_new_tokens"], r["batch"], r["steps"], r["entropy_bound"]) for r in rows))


def _subtitle(results: dict[str, Any]) -> str:
    m = results["machine"]
    return f"{m['gpu'] or m['cpu']} | {m['dtype']} | {results['model']['summary']}"


def _find(rows: Rows, engine: str, n, b, s, e) -> dict[str, Any] | None:
    return next((r for r in rows if r["engine"] == engine and r["max_new_tokens"] == n and r["batch"] == b and (
        r["kind"] == AUTOREGRESSIVE or (r["steps"] == s and r["entropy_bound"] == e))), None)


def _bars_per_setting(results: dict[str, Any], rows: Rows, value: str, title: str, more: str, ylabel: str, empty: str,
                      floor: dict[str, Any] | None = None):
    """One group of bars per setting, one bar per engine (median, min-max whiskers): plots 1 and 4."""
    settings = _diffusion_settings(results)
    fig, ax = figure(max(10, 1.3 * len(settings) + 4), 5)
    if not rows:
        _empty(ax, empty, title)
        return fig
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    width = 0.8 / len(engines)
    for i, name in enumerate(engines):
        found = [(x, r) for x, key in enumerate(settings) if (r := _find(rows, name, *key)) is not None]
        low = [r[value] - r[f"{value}_min"] for _, r in found]
        high = [r[f"{value}_max"] - r[value] for _, r in found]
        ax.bar([x + (i - (len(engines) - 1) / 2) * width for x, _ in found], [r[value] for _, r in found], width,
               yerr=[low, high], capsize=2, label=name, color=style.color(i))
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([_setting_label(*key) for key in settings])
    if floor:
        ax.axhline(floor["floor_ms_per_step"], color=style.OKABE_ITO[4], linestyle="--",
                   label=f"weight-streaming floor {floor['floor_ms_per_step']:.2f} ms\n"
                         f"({floor['weights_mb']:.0f} MB at {floor['bandwidth_gb_s']:.0f} GB/s)")
    style.label(ax, f"{title}{more}\n{_subtitle(results)}", SETTING_AXIS, ylabel)
    style.legend_outside(ax, title="engine")
    return fig


# ---- 1. tokens per second per engine ----------------------------------------------------------
def plot_tokens_per_s(results: dict[str, Any]):
    return _bars_per_setting(results, _ok(results), "tokens_per_s", "Throughput per engine", ", same machine, same run",
                             "tokens / s (median; whiskers: min-max)", "no successful runs")


# ---- 2. diffusion vs autoregressive -----------------------------------------------------------
def plot_speedup_vs_ar(results: dict[str, Any]):
    """One panel per output length; in each, a horizontal bar per diffusion engine and setting, coloured by
    entropy bound, against the autoregressive baseline's 1.0 (log scale: 0.05x and 2x read alike)."""
    rows = [r for r in _ok(results, "diffusion") if r["speedup_vs_baseline"] is not None]
    baseline = results["sweep"]["baseline"]
    lengths = sorted({r["max_new_tokens"] for r in rows}) or [None]
    fig, (axes,) = figure(5.5 * len(lengths) + 3, 1.5 + 0.42 * max(1, len(rows) // len(lengths)), 1, len(lengths),
                          squeeze=False)
    if not rows:
        _empty(axes[0], f"no diffusion run with the autoregressive baseline '{baseline}' beside it",
               "Block diffusion vs autoregressive")
        return fig
    bounds = sorted({r["entropy_bound"] for r in rows})
    found = {(r["max_new_tokens"], r["engine"], r["batch"], r["steps"], r["entropy_bound"]): r for r in rows}
    keys = sorted({k[1:] for k in found}, key=lambda k: (k[0], k[1], k[3], k[2]))  # engine, batch, bound, steps
    for ax, n in zip(axes, lengths):
        for y, key in enumerate(keys):
            if (r := found.get((n, *key))) is not None:
                ax.barh(y, r["speedup_vs_baseline"], color=style.color(bounds.index(key[3])), height=0.7,
                        label=f"entropy bound {key[3]:g}")
                ax.annotate(f"{r['speedup_vs_baseline']:.2g}x", (r["speedup_vs_baseline"], y), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=style.TICKS)
        ax.axvline(1.0, color=style.REFERENCE, ls="--", lw=1.2, label=f"{baseline} (1 token per forward) = 1")
        ax.set_xscale("log")
        ax.set_yticks(range(len(keys)), [f"{e}, b{b}, {s} steps" for e, b, s, _ in keys])
        ax.invert_yaxis()
        ax.margins(x=0.25)
        style.label(ax, f"{n} output tokens", f"speed-up over {baseline} (tokens/s ratio, log)",
                    "engine, batch, steps" if ax is axes[0] else "")
    style.legend_outside(axes[-1])
    fig.suptitle("Block diffusion vs autoregressive decoding, same weights\n" + _subtitle(results),
                 fontsize=style.TITLE)
    return fig


# ---- 3. the speed-quality trade-off -----------------------------------------------------------
def quality_label(metric: str | None) -> str:
    return {"word_validity": "word validity\n(share of words seen in training)",
            "gen_nll": "generated-text NLL, own encoder\n(nats/token; lower is better)"}.get(metric or "", "quality")


def plot_quality_tradeoff(results: dict[str, Any]):
    """Quality and repetition against the entropy bound (one line per step count, the autoregressive
    baseline dashed), and speed against quality for every engine."""
    fig, axes = figure(17, 5, 1, 3)
    diffusion = _ok(results, "diffusion")
    if not diffusion:
        for ax in axes:
            _empty(ax, "no successful diffusion runs", "The speed-quality trade-off")
        return fig
    names = [r["engine"] for r in diffusion]
    engine = "kit" if "kit" in names else names[0]
    mine = [r for r in diffusion if r["engine"] == engine]
    n, b = max(r["max_new_tokens"] for r in mine), min(r["batch"] for r in mine)
    mine = [r for r in mine if r["max_new_tokens"] == n and r["batch"] == b]
    metric = results.get("quality_metric")
    ar = [r for r in _ok(results, AUTOREGRESSIVE) if r["max_new_tokens"] == n and r["batch"] == b]
    panels = ((axes[0], "quality", quality_label(metric)),
              (axes[1], "distinct_3grams", "distinct word 3-grams\n(1 = nothing repeated)"))
    for ax, key, ylabel in panels:
        for i, s in enumerate(sorted({r["steps"] for r in mine})):
            pts = sorted((r["entropy_bound"], r.get(key)) for r in mine if r["steps"] == s and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=style.color(i), label=f"{engine}, {s} steps")
        for r in ar:
            if r.get(key) is not None:
                ax.axhline(r[key], ls="--", color=style.REFERENCE, lw=1.2, label=f"{r['engine']} (greedy)")
        ax.set_xscale("log")
        style.label(ax, f"{ylabel.splitlines()[0]}: {n} tokens, batch {b}", "entropy bound (log)", ylabel)
        style.legend_below(ax)
    ax = axes[2]
    for i, name in enumerate(dict.fromkeys(r["engine"] for r in _ok(results))):
        pts = [(r["tokens_per_s"], r["quality"]) for r in _ok(results) if r["engine"] == name
               and r["max_new_tokens"] == n and r["batch"] == b and r["quality"] is not None]
        if pts:
            ax.scatter(*zip(*pts), label=name, color=style.color(i), s=40)
    style.label(ax, "Speed vs quality, every setting", "tokens / s", quality_label(metric))
    style.legend_below(ax)
    fig.suptitle("The speed-quality trade-off: entropy bound and step count\n" + _subtitle(results),
                 fontsize=style.TITLE)
    return fig


# ---- 4. ms per denoising step against the weight-streaming floor ------------------------------
def plot_ms_per_step(results: dict[str, Any]):
    floor = results.get("floor")
    rows = [r for r in _ok(results, "diffusion") if r["ms_per_step"] is not None]
    note = "" if floor else " (floor: measured on GPU only)"
    return _bars_per_setting(results, rows, "ms_per_step", "Time per denoising step", note,
                             "ms per denoising step (median; whiskers: min-max)", "no successful diffusion runs", floor)


PLOTS = {
    "tokens_per_s.png": plot_tokens_per_s,
    "speedup_vs_ar.png": plot_speedup_vs_ar,
    "quality_tradeoff.png": plot_quality_tradeoff,
    "ms_per_step.png": plot_ms_per_step,
}


def save_plots(results: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write every plot as PNG into out_dir; returns name -> path."""
    paths = {}
    for name, plot in PLOTS.items():
        buf = io.BytesIO()
        plot(results).savefig(buf, format="png", dpi=110)
        paths[name] = atomic_write(Path(out_dir) / name, buf.getvalue())
    return paths
