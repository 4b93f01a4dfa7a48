"""Plots of a DenoisingTrace: what each round accepted, how uncertain every position was, when each
position locked in, tokens per denoiser pass; the GIF/MP4 behind trace.save_gif / save_mp4, and the
player's still image (final_rounds_png). Figures are built without pyplot.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from matplotlib import animation, colors
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from ..atomic import atomic_file
from ..errors import InputError, MissingToolError
from ..validate import check
from . import style
from .style import STATE_COLORS

if TYPE_CHECKING:  # for annotations only: trace.py imports this module (lazily, for matplotlib) to export GIF/MP4
    from ..visualization.trace import DenoisingTrace


def _axes(trace: DenoisingTrace, ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    """The figure and axes to draw a trace's plot in (`ax`, or a new figure of `size`)."""
    _need_rounds(trace)
    return (ax.figure, ax) if ax is not None else style.figure(*size)


def _need_rounds(trace: DenoisingTrace) -> None:
    check(len(trace), InputError, "this trace has no rounds yet: record a generation first (on_step=trace.record).")


def _canvas_boundaries(trace: DenoisingTrace, ax: Axes) -> None:
    for _, start, _ in trace.canvas_ranges()[1:]:
        ax.axvline(start - 0.5, color=style.REFERENCE, lw=0.8, ls="--")


def accepted_per_round(trace: DenoisingTrace, ax: Axes | None = None) -> Figure:
    """Tokens accepted in each round, split into newly accepted and kept from the round before."""
    fig, ax = _axes(trace, ax, (9, 3.4))
    accepted, new = trace.accepted_counts()
    x = np.arange(len(accepted))
    ax.bar(x, accepted - new, color=STATE_COLORS["kept"], label="accepted earlier, kept")
    ax.bar(x, new, bottom=accepted - new, color=STATE_COLORS["new"], label="accepted this round")
    _canvas_boundaries(trace, ax)
    style.label(ax, "Accepted tokens per round", "round (all canvases; dashed lines separate canvases)",
                "accepted tokens")
    style.legend_outside(ax)
    return fig


def entropy_heatmap(trace: DenoisingTrace, ax: Axes | None = None) -> Figure:
    """Entropy of every position (rows) in every round (columns): uncertainty draining away. Dark is
    low entropy (certain), as in the player."""
    fig, ax = _axes(trace, ax, (9, 4))
    image = ax.imshow(trace.stack("entropy").T, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    _canvas_boundaries(trace, ax)
    fig.colorbar(image, ax=ax).set_label("entropy (nats; dark = certain)", fontsize=style.FONT)
    style.label(ax, "Entropy per position and round", "round (all canvases)", "canvas position")
    return fig


def lock_in_order(trace: DenoisingTrace, ax: Axes | None = None) -> Figure:
    """The round at which each position locked in (stayed accepted to the end of its canvas)."""
    fig, ax = _axes(trace, ax, (9, 1.8 + 0.5 * trace.num_canvases))
    steps = trace.lock_in_steps()
    shown = np.ma.masked_less_equal(steps, 0)  # 0: committed from the argmax without acceptance; -1: pinned
    cmap = colors.ListedColormap([style.OKABE_ITO[1]]) if shown.count() == 0 else matplotlib.colormaps["viridis"]
    image = ax.imshow(shown, aspect="auto", cmap=cmap.with_extremes(bad="#e8eaed"), interpolation="nearest")
    fig.colorbar(image, ax=ax).set_label("round locked in", fontsize=style.FONT)
    style.label(ax, "Lock-in order: when each position settled",
                "canvas position (grey: not settled, or pinned)", "canvas")
    ax.set_yticks(range(steps.shape[0]), [str(c + 1) for c in range(steps.shape[0])])
    return fig


def tokens_per_forward(trace: DenoisingTrace, ax: Axes | None = None) -> Figure:
    """Committed tokens per denoiser pass, for each canvas (higher = more parallel), against the
    autoregressive 1 token per forward."""
    fig, ax = _axes(trace, ax, (7, 3.4))
    tpf = trace.tokens_per_forward()
    rounds = [end - start for _, start, end in trace.canvas_ranges()]
    bars = ax.bar([f"canvas {c + 1}" for c in range(len(tpf))], tpf, color=STATE_COLORS["kept"],
                  label="block diffusion")
    for bar, n in zip(bars, rounds):
        ax.annotate(f"{n} rounds", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=style.FONT)
    ax.axhline(1.0, color=style.REFERENCE, ls="--", lw=1.2, label="autoregressive (1 token per forward)")
    ax.set_ylim(0, 1.2 * max(max(tpf), 1.0))
    style.label(ax, "Tokens per forward, per canvas", "canvas", "tokens per forward")
    style.legend_outside(ax)
    return fig


def overview(trace: DenoisingTrace) -> Figure:
    """The four plots in one figure."""
    fig, axes = style.figure(16, 8.5, 2, 2)
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
    check(writer in ("pillow", "ffmpeg"), InputError,
          f"writer must be 'pillow' (GIF) or 'ffmpeg' (MP4), got {writer!r}.")
    check(fps > 0, InputError, f"fps must be > 0 (got {fps}).")
    frames = [i for i, rd in enumerate(trace.rounds) if canvases is None or rd.canvas_index in canvases]
    check(frames, InputError, f"no recorded rounds belong to canvases {canvases}: the trace has canvases "
          f"{[c for c, _, _ in trace.canvas_ranges()]}.")
    fig = _grid_figure(trace, 1, dpi=100)
    draw = _round_grid(trace, fig.add_axes((0.01, 0.01, 0.98, 0.86)), fig.suptitle("", fontsize=style.FONT))
    anim = animation.FuncAnimation(fig, draw, frames=frames, interval=1000 / fps, blit=False, repeat=False)
    out = Path(path)
    with atomic_file(out) as tmp:
        make = animation.PillowWriter if writer == "pillow" else animation.FFMpegWriter
        anim.save(str(tmp), writer=make(fps=fps))
    return out


def final_rounds_png(trace: DenoisingTrace, *, dpi: int = 80) -> bytes:
    """A PNG of the last round of every canvas (the text each canvas committed, coloured by state): the
    player's still image, for where its JavaScript does not run (nbconvert's HTML, GitHub)."""
    _need_rounds(trace)
    last = [end - 1 for _, _, end in trace.canvas_ranges()]
    fig = _grid_figure(trace, len(last), dpi)
    share = 1 / len(last)  # each canvas's band of the figure: its grid, with its title above it
    for row, i in enumerate(last):
        ax = fig.add_axes((0.01, 1 - (row + 1) * share + 0.02 * share, 0.98, 0.84 * share))
        _round_grid(trace, ax, ax.set_title("", fontsize=style.FONT))(i)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _grid_shape(trace: DenoisingTrace) -> tuple[int, int]:  # (rows, columns) of the player's token grid
    cols = 16 if trace.canvas_length >= 128 else 8
    return -(-trace.canvas_length // cols), cols


def _grid_figure(trace: DenoisingTrace, panels: int, dpi: int) -> Figure:
    rows, cols = _grid_shape(trace)
    fig = Figure(figsize=(cols * 0.9, panels * (rows * 0.32 + 0.8)), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _round_grid(trace: DenoisingTrace, ax: Axes, title: Text) -> Callable[[int], list]:
    """Draws round i of the trace into `ax` as the player's grid (one cell per position, coloured by state,
    shaded by certainty): returns draw(i), which updates the same artists (an animation calls it per frame)."""
    L = trace.canvas_length
    rows, cols = _grid_shape(trace)
    scale = float(trace.stack("entropy").max()) or 1.0
    previous = trace.previous_accepted()
    text = trace.token_text(trace.stack("canvas_ids"))
    rgb = {k: np.array(colors.to_rgb(v)) for k, v in STATE_COLORS.items()}
    ax.set_axis_off()
    image = ax.imshow(np.ones((rows, cols, 3)), interpolation="nearest", aspect="auto")
    labels = [ax.text(p % cols, p // cols, "", ha="center", va="center", fontsize=7, family="monospace",
                      parse_math=False) for p in range(L)]

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

    return draw
