"""Plots of the model's anatomy (notebook 02): parameters per part of the network, expert routing."""

from __future__ import annotations

from matplotlib.figure import Figure

from ..notebook.introspection import ParameterCounts, RoutingTrace


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


def _short(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
