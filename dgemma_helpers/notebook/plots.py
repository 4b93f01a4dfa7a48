"""Plots for the exploration notebooks (02 and 03): parameters, expert routing, sampler sweeps.

Each function returns a matplotlib Figure built without pyplot (no global state: a notebook shows
the returned figure once, a script calls fig.savefig). matplotlib is a notebook dependency, so
this module is imported on its own: `from dgemma_helpers.notebook import plots`.
"""

from __future__ import annotations

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


def plot_sweep(rows: Sequence[SweepRow]) -> Figure:
    """One panel per swept setting: tokens per forward (bars) and tokens accepted per round (line)."""
    knobs = list(dict.fromkeys(r.knob for r in rows))
    fig = Figure(figsize=(3.6 * len(knobs), 3.2), layout="constrained")
    axes = fig.subplots(1, len(knobs), squeeze=False)[0]
    for ax, knob in zip(axes, knobs):
        group = [r for r in rows if r.knob == knob]
        x = range(len(group))
        ax.bar(x, [r.tokens_per_forward for r in group], color="tab:blue", label="tokens / forward")
        ax.set_xticks(list(x), [r.label for r in group], rotation=20)
        ax.set_title(knob.replace("_", " "))
        ax.set_ylabel("tokens per forward", color="tab:blue")
        twin = ax.twinx()
        twin.plot(list(x), [r.accepted_per_round for r in group], "o-", color="tab:orange")
        twin.set_ylabel("accepted per round", color="tab:orange")
        twin.set_ylim(0, 1.15 * max(r.accepted_per_round for r in group))
    return fig


def _short(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
