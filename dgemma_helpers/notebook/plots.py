"""Plots for the exploration notebooks (02 and 03): parameters, expert routing, sampler sweeps.

Each function returns a matplotlib Figure built without pyplot (no global state: a notebook shows
the returned figure once, a script calls fig.savefig). matplotlib is a notebook dependency, so
this module is imported on its own: `from dgemma_helpers.notebook import plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure

from .introspection import ParameterCounts, RoutingTrace
from .sweep import SweepRow


def plot_parameters(counts: ParameterCounts) -> Figure:
    """Total vs active parameters per part of the network (log scale: the experts dwarf the rest)."""
    rows = counts.records()
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    ax = fig.add_subplot()
    y = range(len(rows))
    ax.barh([i + 0.2 for i in y], [r["total"] for r in rows], height=0.4, label=f"total ({_short(counts.total)})")
    ax.barh([i - 0.2 for i in y], [r["active"] for r in rows], height=0.4,
            label=f"active per token ({_short(counts.active)})")
    ax.set_yticks(list(y), [r["part"] for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_title("Where the parameters are")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot_routing(trace: RoutingTrace) -> Figure:
    """Heatmap [layer x expert]: how many prompt tokens each expert received."""
    counts = trace.counts().numpy()
    fig = Figure(figsize=(min(2 + 0.25 * trace.num_experts, 14), 1.2 + 0.35 * counts.shape[0]), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_yticks(range(counts.shape[0]))
    ax.set_title(f"Tokens routed to each expert ({len(trace.token_ids)} tokens x top-{trace.top_k} per layer)")
    fig.colorbar(im, ax=ax, label="tokens")
    return fig


def plot_token_routing(trace: RoutingTrace, layer: int) -> Figure:
    """Heatmap [token x expert] of one layer's routing weights: which experts each token fired."""
    weights = trace.token_expert_weights(layer).numpy()
    n = len(trace.tokens)
    fig = Figure(figsize=(min(2.5 + 0.25 * trace.num_experts, 14), min(1.2 + 0.28 * n, 16)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(weights, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(n), [repr(t)[1:-1] for t in trace.tokens], fontsize=8)
    ax.set_xlabel("expert")
    ax.set_title(f"Layer {layer}: routing weight of each token (top-{trace.top_k} of {trace.num_experts})")
    fig.colorbar(im, ax=ax, label="weight")
    return fig


# Okabe-Ito: colours that colour-blind readers tell apart, one per quantity.
OKABE_ITO = {"blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "vermillion": "#D55E00"}


def plot_sweep(rows: Sequence[SweepRow]) -> Figure:
    """A grid: one column per swept setting, one row per quantity (tokens per forward, tokens
    accepted per round, and word validity where the rows have it), each row on one shared scale
    so that panels compare at a glance; the y label is written once, on the left."""
    knobs = list(dict.fromkeys(r.knob for r in rows))
    quantities = [("tokens per forward", lambda r: r.tokens_per_forward, OKABE_ITO["blue"]),
                  ("accepted per round", lambda r: r.accepted_per_round, OKABE_ITO["orange"])]
    if any(r.word_validity is not None for r in rows):
        quantities.append(("word validity", lambda r: r.word_validity if r.word_validity is not None else float("nan"),
                           OKABE_ITO["green"]))
    fig = Figure(figsize=(3.2 * len(knobs), 1.2 + 2.0 * len(quantities)), layout="constrained")
    axes = fig.subplots(len(quantities), len(knobs), squeeze=False, sharey="row")
    for col, knob in enumerate(knobs):
        group = [r for r in rows if r.knob == knob]
        x = list(range(len(group)))
        for row, (name, value, colour) in enumerate(quantities):
            ax = axes[row][col]
            heights = [value(r) for r in group]
            ax.bar(x, heights, color=colour, width=0.6)
            for xi, h in zip(x, heights):
                if not math.isnan(h):
                    ax.annotate(f"{h:.2g}", (xi, h), ha="center", va="bottom", fontsize=9,
                                xytext=(0, 2), textcoords="offset points")
            ax.set_xticks(x, [r.label for r in group] if row == len(quantities) - 1 else [""] * len(x))
            ax.margins(y=0.2)
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                ax.set_title(knob.replace("_", " "), fontsize=11)
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
        axes[-1][col].set_xlabel("value", fontsize=10)
    if len(quantities) == 3:
        axes[2][0].set_ylim(0, 1.15)  # a share: the whole 0..1 scale, room for the labels
    fig.suptitle("The sampler's settings, one at a time (same prompt and seed)", fontsize=12)
    return fig


def _short(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
