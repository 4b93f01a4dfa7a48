"""The sampler sweep's plot (notebook 03): what each setting does to tokens per forward and acceptance."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from ..notebook.sweep import SweepRow


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
