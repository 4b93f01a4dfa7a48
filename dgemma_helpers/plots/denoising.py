"""Plots of a DenoisingTrace (matplotlib): what each round accepted, how uncertain every position was,
when each position locked in, how many tokens each denoiser pass produced; and the animation behind
trace.save_gif / save_mp4.

Every function returns a matplotlib Figure built without pyplot (no global figure state, nothing
leaks in loops); in a notebook, `%matplotlib inline` displays it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib import animation, colors
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_file
from ..errors import InputError, MissingToolError
from .style import STATE_COLORS

if TYPE_CHECKING:  # for annotations only: trace.py imports this module (lazily, for matplotlib) to export GIF/MP4
    from ..visualization.trace import DenoisingTrace


def _axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _need_rounds(trace: DenoisingTrace) -> None:
    if len(trace) == 0:
        raise InputError("this trace has no rounds yet: record a generation first (on_step=trace.record).")


def _canvas_boundaries(trace: DenoisingTrace, ax: Axes) -> None:
    for _, start, _ in trace.canvas_ranges()[1:]:
        ax.axvline(start - 0.5, color="#5f6368", lw=0.8, ls="--")


def accepted_per_round(trace: DenoisingTrace, ax: Axes | None = None) -> Figure:
    """Tokens accepted in each round, split into newly accepted and kept from the round before."""
    _need_rounds(trace)
    fig, ax = _axes(ax, (8, 3))
    accepted, new = trace.accepted_counts()
    x = np.arange(len(accepted))
    ax.bar(x, accepted - new, color=STATE_COLORS["kept"], label="accepted earlier, kept")
    ax.bar(x, new, bottom=accepted - new, color=STATE_COLORS["new"], label="accepted this round")
    _canvas_boundaries(trace, ax)
    ax.set(xlabel="round (all canvases; dashed lines separate canvases)", ylabel="accepted tokens",
           title="Accepted tokens per round")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def entropy_heatmap(trace: DenoisingTrace, ax: Axes | None = None) -> Figure:
    """Entropy of every position (rows) in every round (columns): uncertainty draining away."""
    _need_rounds(trace)
    fig, ax = _axes(ax, (8, 4))
    image = ax.imshow(trace.stack("entropy").T, aspect="auto", origin="lower", cmap="magma_r", interpolation="nearest")
    _canvas_boundaries(trace, ax)
    fig.colorbar(image, ax=ax, label="entropy (nats)")
    ax.set(xlabel="round (all canvases)", ylabel="canvas position", title="Entropy per position and round")
    return fig


def lock_in_order(trace: DenoisingTrace, ax: Axes | None = None) -> Figure:
    """The round at which each position locked in (stayed accepted to the end of its canvas)."""
    _need_rounds(trace)
    fig, ax = _axes(ax, (8, 1.2 + 0.5 * trace.num_canvases))
    steps = trace.lock_in_steps()
    shown = np.ma.masked_less_equal(steps, 0)  # 0: committed from the argmax without acceptance; -1: pinned
    cmap = colors.ListedColormap(["#c6dbef"]) if shown.count() == 0 else matplotlib.colormaps["viridis"]
    image = ax.imshow(shown, aspect="auto", cmap=cmap.with_extremes(bad="#e8eaed"), interpolation="nearest")
    fig.colorbar(image, ax=ax, label="round locked in")
    ax.set_yticks(range(steps.shape[0]), [f"canvas {c + 1}" for c in range(steps.shape[0])])
    ax.set(xlabel="canvas position (grey: not accepted in the last round, or pinned)",
           title="Lock-in order: when each position settled")
    return fig


def tokens_per_forward(trace: DenoisingTrace, ax: Axes | None = None) -> Figure:
    """Committed tokens per denoiser pass, for each canvas (higher = more parallel)."""
    _need_rounds(trace)
    fig, ax = _axes(ax, (6, 3))
    tpf = trace.tokens_per_forward()
    rounds = [end - start for _, start, end in trace.canvas_ranges()]
    bars = ax.bar([f"canvas {c + 1}" for c in range(len(tpf))], tpf, color=STATE_COLORS["kept"])
    for bar, n in zip(bars, rounds):
        ax.annotate(f"{n} rounds", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=8)
    ax.set(ylabel="tokens per forward", title="Tokens per forward, per canvas")
    ax.margins(y=0.15)
    return fig


def overview(trace: DenoisingTrace) -> Figure:
    """The four plots in one figure."""
    fig = Figure(figsize=(13, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    accepted_per_round(trace, axes[0, 0])
    entropy_heatmap(trace, axes[0, 1])
    lock_in_order(trace, axes[1, 0])
    tokens_per_forward(trace, axes[1, 1])
    return fig


# ---- animation ------------------------------------------------------------------------------------------
def _label(text: str | None, token_id: int, width: int = 9) -> str:
    if text is None:
        text = f"#{token_id}"
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text) or "\u2205"  # \n, \x18, ...
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def animate(trace: DenoisingTrace, path: str | os.PathLike, *, fps: float = 4.0, canvases: list[int] | None = None,
            writer: str = "pillow") -> Path:
    """One frame per round (optionally only some canvases), written atomically as GIF ("pillow") or MP4
    ("ffmpeg")."""
    _need_rounds(trace)
    if writer == "ffmpeg" and not animation.writers.is_available("ffmpeg"):
        raise MissingToolError("MP4 export needs ffmpeg, which is not installed: `apt-get install ffmpeg` "
                               "(or `conda install ffmpeg`, `brew install ffmpeg`), or save a GIF with save_gif().")
    if writer not in ("pillow", "ffmpeg"):
        raise InputError(f"writer must be 'pillow' (GIF) or 'ffmpeg' (MP4), got {writer!r}.")
    if fps <= 0:
        raise InputError(f"fps must be > 0 (got {fps}).")
    frames = [i for i, rd in enumerate(trace.rounds) if canvases is None or rd.canvas_index in canvases]
    if not frames:
        raise InputError(f"no recorded rounds belong to canvases {canvases}: the trace has canvases "
                         f"{[c for c, _, _ in trace.canvas_ranges()]}.")
    L = trace.canvas_length
    cols = 16 if L >= 128 else 8
    rows = -(-L // cols)
    entropy = trace.stack("entropy")
    scale = float(entropy.max()) or 1.0
    previous = trace.previous_accepted()
    text = trace.token_text(trace.stack("canvas_ids"))
    rgb = {k: np.array(colors.to_rgb(v)) for k, v in STATE_COLORS.items()}

    fig = Figure(figsize=(cols * 0.9, rows * 0.32 + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.86))
    ax.set_axis_off()
    image = ax.imshow(np.ones((rows, cols, 3)), interpolation="nearest", aspect="auto")
    labels = [ax.text(p % cols, p // cols, "", ha="center", va="center", fontsize=7, family="monospace",
                      parse_math=False) for p in range(L)]
    title = fig.suptitle("", fontsize=10)

    def draw(i: int) -> list:
        rd = trace.rounds[i]
        pixels = np.ones((rows * cols, 3))
        for p in range(L):
            state = ("pinned" if rd.pinned[p] else "noise" if not rd.accepted[p]
                     else "kept" if previous[i, p] else "new")
            conf = 1.0 - min(float(rd.entropy[p]) / scale, 1.0)
            mix = 0.12 + 0.58 * conf
            pixels[p] = mix * rgb[state] + (1 - mix)
            labels[p].set_text(_label(text[int(rd.canvas_ids[p])], int(rd.canvas_ids[p])))
            labels[p].set_color("#70757a" if state == "noise" else "#202124")
        image.set_data(pixels.reshape(rows, cols, 3))
        title.set_text(f"canvas {rd.canvas_index + 1} \u00b7 round {rd.step} \u00b7 temperature {rd.temperature:.2f} "
                       f"\u00b7 accepted {int(rd.accepted.sum())}")
        return [image, title, *labels]

    anim = animation.FuncAnimation(fig, draw, frames=frames, interval=1000 / fps, blit=False, repeat=False)
    out = Path(path)
    with atomic_file(out) as tmp:
        make = animation.PillowWriter if writer == "pillow" else animation.FFMpegWriter
        anim.save(str(tmp), writer=make(fps=fps))
    return out
