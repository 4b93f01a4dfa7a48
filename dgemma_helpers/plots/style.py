"""The look every plot of the kit shares: the Okabe-Ito palette (told apart with any colour vision),
fonts >= 10 pt, titled and labelled axes, legends outside the data. Importing it does not import
matplotlib (the benchmark imports it and runs without).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Okabe & Ito (2008), "Color Universal Design": orange, sky blue, bluish green, yellow, blue, vermillion,
# reddish purple, black. Yellow is last-but-one: it is faint on white.
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442", "#000000")
GREY = "#999999"
REFERENCE = "#555555"  # reference lines (the autoregressive 1 token per forward, a floor)

FONT = 11  # axis labels, legends, annotations
TICKS = 10
TITLE = 12

# The player's token states (visualization/static/player.css uses the same colours).
STATE_COLORS = {"noise": GREY, "new": OKABE_ITO[0], "kept": OKABE_ITO[2], "pinned": OKABE_ITO[5]}


def color(i: int) -> str:
    """The i-th series' colour."""
    return OKABE_ITO[i % len(OKABE_ITO)]


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1, squeeze: bool = True) -> tuple[Figure, Any]:
    """A Figure with its own Agg canvas (no pyplot: no global state, nothing leaks in loops) and its axes
    (one Axes, or an array of them: always 2-D with squeeze=False); constrained layout keeps outside legends
    and colour bars in the figure."""
    # Imported here, not at the top: this module is imported with the benchmark, which runs without matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def label(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Title and axis labels at the kit's sizes, and readable tick labels."""
    ax.set_title(title, fontsize=TITLE)
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.tick_params(labelsize=TICKS)


def legend_outside(ax: Axes, **kwargs: Any) -> None:
    """The legend to the right of the axes, where it cannot cover a line or a bar."""
    _legend(ax, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def legend_below(ax: Axes, ncols: int = 2, **kwargs: Any) -> None:
    """The legend under the axes (for wide figures whose right edge is taken)."""
    _legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=ncols, **kwargs)


def _legend(ax: Axes, **kwargs: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # a label given to several bars (one per setting) is listed once
    ax.legend(unique.values(), unique.keys(), frameon=False, fontsize=FONT, **kwargs)
