"""The sampler sweep's plot (notebook 03): what each setting does to tokens per forward, acceptance
and, where the model ships its vocabulary, the text's word validity."""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure

from ..notebook.sweep import SweepRow
from .style import FONT, TITLE, color, figure, label


def plot_sweep(rows: Sequence[SweepRow]) -> Figure:
    """A grid: one column per swept setting, one row per quantity, each row on one shared scale so
    that panels compare at a glance (twin axes would give every panel its own)."""
    knobs = list(dict.fromkeys(r.knob for r in rows))
    quantities = [("tokens per forward", lambda r: r.tokens_per_forward),
                  ("accepted per round", lambda r: r.accepted_per_round)]
    if any(r.word_validity is not None for r in rows):
        quantities.append(("word validity", lambda r: math.nan if r.word_validity is None else r.word_validity))
    fig, axes = figure(3.4 * len(knobs), 1.4 + 2.3 * len(quantities), len(quantities), len(knobs), squeeze=False)
    for row, (name, value) in enumerate(quantities):
        top = max((h for r in rows if not math.isnan(h := value(r))), default=1.0)
        for ax, knob in zip(axes[row], knobs):
            group = [r for r in rows if r.knob == knob]
            x, heights = list(range(len(group))), [value(r) for r in group]
            ax.bar(x, heights, color=color(row), width=0.6)
            for xi, h in zip(x, heights):
                if not math.isnan(h):
                    ax.annotate(f"{h:.2g}", (xi, h), ha="center", va="bottom", fontsize=FONT - 1,
                                xytext=(0, 2), textcoords="offset points")
            ax.set_xticks(x, [r.label for r in group])
            label(ax, knob.replace("_", " ") if row == 0 else "", knob.replace("_", " "), name)
            ax.grid(axis="y", alpha=0.3)
            # One scale per quantity, not per panel (a share keeps its whole 0..1 scale).
            ax.set_ylim(0, 1.15 if name == "word validity" else 1.2 * top)
    fig.suptitle("The sampler's settings, one at a time (same prompt and seed)", fontsize=TITLE)
    return fig
