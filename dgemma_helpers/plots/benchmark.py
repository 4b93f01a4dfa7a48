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
from .style import figure

AUTOREGRESSIVE = "autoregressive"  # a row's "kind" in results.json (bench/engines.py writes it)

Rows = list[dict[str, Any]]


def _figure(width: float = 9, height: float = 4.5, ncols: int = 1):
    return figure(width, height, 1, ncols)


def _ok(results: dict[str, Any], kind: str | None = None) -> Rows:
    return [r for r in results["rows"] if r["status"] == "ok" and (kind is None or r["kind"] == kind)]


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True, color="0.4")
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
def plot_tokens_per_s(results: dict[str, Any]):
    fig, ax = _figure(max(9, 1.2 * len(_diffusion_settings(results)) + 3), 4.8)
    rows = _ok(results)
    if not rows:
        _empty(ax, "no successful runs")
        return fig
    settings = _diffusion_settings(results)
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    width = 0.8 / len(engines)
    for i, name in enumerate(engines):
        xs, ys, lo, hi = [], [], [], []
        for x, (n, b, s, e) in enumerate(settings):
            r = _find(rows, name, n, b, s, e)
            if r is None:
                continue
            xs.append(x + (i - (len(engines) - 1) / 2) * width)
            ys.append(r["tokens_per_s"])
            lo.append(r["tokens_per_s"] - r["tokens_per_s_min"])
            hi.append(r["tokens_per_s_max"] - r["tokens_per_s"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([_setting_label(dict(max_new_tokens=n, batch=b, steps=s, entropy_bound=e))
                        for n, b, s, e in settings], fontsize=8)
    ax.set_ylabel("tokens / s (median; bars: min-max)")
    ax.set_title("Throughput per engine, same machine, same run\n" + _subtitle(results), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def _find(rows: Rows, engine: str, n, b, s, e) -> dict[str, Any] | None:
    for r in rows:
        if r["engine"] == engine and r["max_new_tokens"] == n and r["batch"] == b:
            if r["kind"] == AUTOREGRESSIVE or (r["steps"] == s and r["entropy_bound"] == e):
                return r
    return None


# ---- 2. diffusion vs autoregressive against output length --------------------------------------
def plot_speedup_vs_ar(results: dict[str, Any]):
    fig, ax = _figure(7.5, 4.5)
    rows = [r for r in _ok(results, "diffusion") if r["speedup_vs_baseline"] is not None]
    baseline = results["sweep"]["baseline"]
    if not rows:
        _empty(ax, f"no diffusion run with the autoregressive baseline '{baseline}' beside it")
        return fig
    lines: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        lines.setdefault((r["engine"], r["batch"], r["steps"], r["entropy_bound"]), []).append(
            (r["max_new_tokens"], r["speedup_vs_baseline"]))
    for (engine, b, s, e), points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                label=f"{engine}, batch {b}, {s} steps, H<={e:g}")
    ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1, label=f"{baseline} (1 token per forward)")
    lengths = sorted({r["max_new_tokens"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths)
    ax.set_xticklabels([str(n) for n in lengths])
    ax.set_xlabel("output length (max_new_tokens)")
    ax.set_ylabel(f"speed-up over {baseline} (tokens/s ratio)")
    ax.set_title("Block diffusion vs autoregressive decoding, same weights\n" + _subtitle(results), fontsize=10)
    ax.legend(fontsize=7)
    return fig


# ---- 3. the speed-quality trade-off -----------------------------------------------------------
def quality_label(metric: str | None) -> str:
    return {"word_validity": "word validity (share of words seen in training; higher is better)",
            "gen_nll": "generated-text NLL, own encoder (nats/token; lower is better)"}.get(metric or "", "quality")


def plot_quality_tradeoff(results: dict[str, Any]):
    fig, axes = _figure(14, 4.5, ncols=3)
    diffusion = _ok(results, "diffusion")
    if not diffusion:
        for ax in axes:
            _empty(ax, "no successful diffusion runs")
        return fig
    names = [r["engine"] for r in diffusion]
    engine = "kit" if "kit" in names else names[0]
    mine = [r for r in diffusion if r["engine"] == engine]
    n, b = max(r["max_new_tokens"] for r in mine), min(r["batch"] for r in mine)
    mine = [r for r in mine if r["max_new_tokens"] == n and r["batch"] == b]
    metric = results.get("quality_metric")
    for ax, key, ylabel in ((axes[0], "tokens_per_forward", "tokens per forward (median)"),
                            (axes[1], "quality", quality_label(metric))):
        for s in sorted({r["steps"] for r in mine}):
            pts = sorted((r["entropy_bound"], r[key]) for r in mine if r["steps"] == s and r[key] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{s} steps")
        ax.set_xscale("log")
        ax.set_xlabel("entropy bound (log)")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(f"{engine}: {n} tokens, batch {b}", fontsize=9)
    for r in _ok(results, AUTOREGRESSIVE):
        if r["max_new_tokens"] == n and r["batch"] == b and r["quality"] is not None:
            axes[1].axhline(r["quality"], linestyle="--", color="0.4", linewidth=1, label=f"{r['engine']} (greedy)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    ax = axes[2]
    for name in dict.fromkeys(r["engine"] for r in _ok(results)):
        pts = [(r["tokens_per_s"], r["quality"]) for r in _ok(results) if r["engine"] == name
               and r["max_new_tokens"] == n and r["batch"] == b and r["quality"] is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel("tokens / s")
    ax.set_ylabel(quality_label(metric), fontsize=8)
    ax.set_title("speed vs quality, every setting", fontsize=9)
    ax.legend(fontsize=7)
    fig.suptitle("The speed-quality trade-off: entropy bound and step count\n" + _subtitle(results), fontsize=10)
    return fig


# ---- 4. ms per denoising step against the weight-streaming floor ------------------------------
def plot_ms_per_step(results: dict[str, Any]):
    rows = [r for r in _ok(results, "diffusion") if r["ms_per_step"] is not None]
    settings = _diffusion_settings(results)
    fig, ax = _figure(max(9, 1.2 * len(settings) + 3), 4.8)
    if not rows:
        _empty(ax, "no successful diffusion runs")
        return fig
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    width = 0.8 / len(engines)
    for i, name in enumerate(engines):
        xs, ys, lo, hi = [], [], [], []
        for x, key in enumerate(settings):
            r = _find(rows, name, *key)
            if r is not None:
                xs.append(x + (i - (len(engines) - 1) / 2) * width)
                ys.append(r["ms_per_step"])
                lo.append(r["ms_per_step"] - r["ms_per_step_min"])
                hi.append(r["ms_per_step_max"] - r["ms_per_step"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name)
    floor = results.get("floor")
    if floor:
        ax.axhline(floor["floor_ms_per_step"], color="crimson", linestyle="--",
                   label=f"weight-streaming floor {floor['floor_ms_per_step']:.2f} ms "
                         f"({floor['weights_mb']:.0f} MB at {floor['bandwidth_gb_s']:.0f} GB/s)")
        note = ""
    else:
        note = " (floor: measured on GPU only)"
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels([_setting_label(dict(max_new_tokens=n, batch=b, steps=s, entropy_bound=e))
                        for n, b, s, e in settings], fontsize=8)
    ax.set_ylabel("ms per denoising step (median; bars: min-max)")
    ax.set_title(f"Time per denoising step{note}\n" + _subtitle(results), fontsize=10)
    ax.legend(fontsize=8)
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
