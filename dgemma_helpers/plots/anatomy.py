"""Plots of the model's anatomy (notebook 02): parameters per part of the network, expert routing."""

from __future__ import annotations

from matplotlib.figure import Figure

from ..notebook.introspection import ParameterCounts, RoutingTrace
from . import style


def plot_parameters(counts: ParameterCounts) -> Figure:
    """Total vs active parameters per part of the network (log scale: the experts dwarf the rest)."""
    rows = counts.records()
    fig, ax = style.figure(9, 1.4 + 0.45 * len(rows))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r["total"] for r in rows], height=0.4, color=style.color(3),
            label=f"total ({_short(counts.total)})")
    ax.barh([i + 0.2 for i in y], [r["active"] for r in rows], height=0.4, color=style.color(0),
            label=f"active per token ({_short(counts.active)})")
    ax.set_xscale("log")
    style.label(ax, "Where the parameters are", "parameters (log scale)", "part of the network")
    ax.set_yticks(list(y), [r["part"] for r in rows])
    ax.invert_yaxis()
    style.legend_outside(ax)
    return fig


def plot_routing(trace: RoutingTrace) -> Figure:
    """Heatmap [layer x expert]: how many prompt tokens each expert received."""
    counts = trace.counts().numpy()
    fig, ax = style.figure(min(4 + 0.25 * trace.num_experts, 14), 1.8 + 0.35 * counts.shape[0])
    im = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    style.label(ax, f"Tokens routed to each expert ({len(trace.token_ids)} tokens x top-{trace.top_k} per layer)",
                "expert", "layer")
    ax.set_yticks(range(counts.shape[0]))
    fig.colorbar(im, ax=ax).set_label("tokens", fontsize=style.FONT)
    return fig


def plot_token_routing(trace: RoutingTrace, layer: int) -> Figure:
    """Heatmap [token x expert] of one layer's routing weights: which experts each token fired."""
    weights = trace.token_expert_weights(layer).numpy()
    n = len(trace.tokens)
    fig, ax = style.figure(min(4.5 + 0.25 * trace.num_experts, 14), min(1.8 + 0.3 * n, 18))
    im = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest")
    style.label(ax, f"Layer {layer}: routing weight of each token (top-{trace.top_k} of {trace.num_experts})",
                "expert", "token")
    ax.set_yticks(range(n), [repr(t)[1:-1] for t in trace.tokens], fontsize=style.TICKS)
    fig.colorbar(im, ax=ax).set_label("weight", fontsize=style.FONT)
    return fig


def _short(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
