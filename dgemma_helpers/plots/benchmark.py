"""The report's figures, from a results dict (results.json): each function returns a matplotlib
Figure (no pyplot state, so they work headless), and `save_plots` writes them all as PNG.

A plot whose data is missing (an engine skipped or failed) says so inside the figure instead of
failing: the report always renders.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from . import style
from .style import figure

AUTOREGRESSIVE = "autoregressive"  # a row's "kind" in results.json (bench/engines.py writes it)

Rows = list[dict[str, Any]]


def _figure(width: float = 9, height: float = 4.5, ncols: int = 1):
    return figure(width, height, 1, ncols)


def _ok(results: dict[str, Any], kind: str | None = None) -> Rows:
    return [r for r in results["rows"] if r["status"] == "ok" and (kind is None or r["kind"] == kind)]


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, color="0.4",
            fontsize=style.FONT)
    ax.set_xticks([])
    ax.set_yticks([])


def _setting_label(r: dict[str, Any]) -> str:
    label = f"{r['max_new_tokens']} tok, b{r['batch']}"
    if r["steps"] is not None:
        label += f"\n{r['steps']} steps, H<={r['entropy_bound']:g}"
    return label


def _diffusion_settings(results: dict[str, Any]) -> list[tuple]:
    """Grid points of the diffusion engines, in sweep order (or the AR ones if no diffusion ran)."""
    rows = _ok(results, "diffusion") or _ok(results)
    seen: dict[tuple, None] = {}
    for r in rows:
        seen.setdefault((r["max_new_tokens"], r["batch"], r["steps"], r["entropy_bound"]), None)
    return list(seen)


def _subtitle(results: dict[str, Any]) -> str:
    m = results["machine"]
    return f"{m['gpu'] or m['cpu']} | {m['dtype']} | {results['model']['summary']}"


# ---- 1. tokens per second per engine ----------------------------------------------------------
def _grouped_bars(ax, rows: Rows, settings: list[tuple], value: str) -> None:
    """One group of bars per setting, one bar per engine (min-max whiskers)."""
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    width = 0.8 / len(engines)
    for i, name in enumerate(engines):
        xs, ys, lo, hi = [], [], [], []
        for x, key in enumerate(settings):
            r = _find(rows, name, *key)
            if r is not None:
                xs.append(x + (i - (len(engines) - 1) / 2) * width)
                ys.append(r[value])
                lo.append(r[value] - r[f"{value}_min"])
                hi.append(r[f"{value}_max"] - r[value])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name, color=style.color(i))
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([_setting_label({"max_new_tokens": n, "batch": b, "steps": s, "entropy_bound": e})
                        for n, b, s, e in settings])


def plot_tokens_per_s(results: dict[str, Any]):
    fig, ax = _figure(max(10, 1.3 * len(_diffusion_settings(results)) + 4), 5)
    rows = _ok(results)
    if not rows:
        _empty(ax, "no successful runs")
        style.label(ax, "Throughput per engine", "", "")
        return fig
    _grouped_bars(ax, rows, _diffusion_settings(results), "tokens_per_s")
    style.label(ax, "Throughput per engine, same machine, same run\n" + _subtitle(results),
                "setting (output tokens, batch; denoising steps, entropy bound)", "tokens / s (median; whiskers: min-max)")
    style.legend_outside(ax, title="engine")
    return fig


def _find(rows: Rows, engine: str, n, b, s, e) -> dict[str, Any] | None:
    for r in rows:
        if r["engine"] == engine and r["max_new_tokens"] == n and r["batch"] == b and (
                r["kind"] == AUTOREGRESSIVE or (r["steps"] == s and r["entropy_bound"] == e)):
            return r
    return None


# ---- 2. diffusion vs autoregressive -----------------------------------------------------------
def plot_speedup_vs_ar(results: dict[str, Any]):
    """One panel per output length; in each, a horizontal bar per diffusion engine and setting, coloured by
    entropy bound, against the autoregressive baseline's 1.0 (log scale: 0.05x and 2x read alike)."""
    rows = [r for r in _ok(results, "diffusion") if r["speedup_vs_baseline"] is not None]
    baseline = results["sweep"]["baseline"]
    lengths = sorted({r["max_new_tokens"] for r in rows}) or [None]
    fig, axes = _figure(5.5 * len(lengths) + 3, 1.5 + 0.42 * max(1, len(rows) // len(lengths)), ncols=len(lengths))
    axes = list(axes) if len(lengths) > 1 else [axes]
    if not rows:
        _empty(axes[0], f"no diffusion run with the autoregressive baseline '{baseline}' beside it")
        style.label(axes[0], "Block diffusion vs autoregressive", "", "")
        return fig
    bounds = sorted({r["entropy_bound"] for r in rows})
    keys = sorted({(r["engine"], r["batch"], r["steps"], r["entropy_bound"]) for r in rows},
                  key=lambda k: (k[0], k[1], k[3], k[2]))
    for ax, n in zip(axes, lengths):
        for y, key in enumerate(keys):
            r = next((r for r in rows if r["max_new_tokens"] == n
                      and (r["engine"], r["batch"], r["steps"], r["entropy_bound"]) == key), None)
            if r is not None:
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
    handles, labels = axes[-1].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[-1].legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                    fontsize=style.FONT)
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
    fig, axes = _figure(17, 5, ncols=3)
    diffusion = _ok(results, "diffusion")
    if not diffusion:
        for ax in axes:
            _empty(ax, "no successful diffusion runs")
            style.label(ax, "The speed-quality trade-off", "", "")
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
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=style.color(i),
                        label=f"{engine}, {s} steps")
        for r in ar:
            if r.get(key) is not None:
                ax.axhline(r[key], ls="--", color=style.REFERENCE, lw=1.2, label=f"{r['engine']} (greedy)")
        ax.set_xscale("log")
        style.label(ax, f"{ylabel.splitlines()[0]}: {n} tokens, batch {b}", "entropy bound (log)", ylabel)
    style.legend_below(axes[0])
    style.legend_below(axes[1])
    ax = axes[2]
    for i, name in enumerate(dict.fromkeys(r["engine"] for r in _ok(results))):
        pts = [(r["tokens_per_s"], r["quality"]) for r in _ok(results) if r["engine"] == name
               and r["max_new_tokens"] == n and r["batch"] == b and r["quality"] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name, color=style.color(i), s=40)
    style.label(ax, "Speed vs quality, every setting", "tokens / s", quality_label(metric))
    style.legend_below(ax)
    fig.suptitle("The speed-quality trade-off: entropy bound and step count\n" + _subtitle(results),
                 fontsize=style.TITLE)
    return fig


# ---- 4. ms per denoising step against the weight-streaming floor ------------------------------
def plot_ms_per_step(results: dict[str, Any]):
    rows = [r for r in _ok(results, "diffusion") if r["ms_per_step"] is not None]
    settings = _diffusion_settings(results)
    fig, ax = _figure(max(10, 1.3 * len(settings) + 4), 5)
    if not rows:
        _empty(ax, "no successful diffusion runs")
        style.label(ax, "Time per denoising step", "", "")
        return fig
    _grouped_bars(ax, rows, settings, "ms_per_step")
    floor = results.get("floor")
    if floor:
        ax.axhline(floor["floor_ms_per_step"], color=style.OKABE_ITO[4], linestyle="--",
                   label=f"weight-streaming floor {floor['floor_ms_per_step']:.2f} ms\n"
                         f"({floor['weights_mb']:.0f} MB at {floor['bandwidth_gb_s']:.0f} GB/s)")
    note = "" if floor else " (floor: measured on GPU only)"
    style.label(ax, f"Time per denoising step{note}\n" + _subtitle(results),
                "setting (output tokens, batch; denoising steps, entropy bound)",
                "ms per denoising step (median; whiskers: min-max)")
    style.legend_outside(ax, title="engine")
    return fig


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
