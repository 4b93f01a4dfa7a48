"""Every plot function of the kit, drawn from real objects (a generation of models/dgemma-tiny, its
routing, a sampler sweep, a small benchmark run), has a title, labelled axes, fonts of at least 10 pt,
and a legend that covers no data: checked on the drawn figure with matplotlib's bounding boxes."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib", reason="the plots need the dev extra: pip install -e '.[dev]'")

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

import dgemma_helpers as dg
from dgemma_helpers import benchmarks as bench
from dgemma_helpers import notebook, plots
from dgemma_helpers.visualization.trace import DenoisingTrace

TINY = dg.find_model("models/dgemma-tiny")


@pytest.fixture(scope="module")
def tiny():
    return dg.load_model(TINY, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def trace(tiny):
    trace = DenoisingTrace.from_model(tiny, prompt="ROMEO:\n")
    result = dg.generate(tiny, "ROMEO:\n", max_new_tokens=128, max_denoising_steps=8, entropy_bound=20.0, seed=0,
                         on_step=trace.record)
    return trace.finish(result)


@pytest.fixture(scope="module")
def results():
    sweep = bench.make_sweep(str(TINY), "kit,ar", "16,32", "2,4", "1", "0.1,1", repeats=1, warmup=0)
    return bench.run_benchmark(sweep, progress=lambda msg: None)


def figures(tiny, trace, results):
    routing = notebook.expert_routing(tiny, "ROMEO:\nWhat light")
    sweep_rows = notebook.sampler_sweep(tiny, "ROMEO:\n", grid={"max_denoising_steps": [2, 4]}, max_new_tokens=32)
    yield "accepted_per_round", plots.accepted_per_round(trace)
    yield "entropy_heatmap", plots.entropy_heatmap(trace)
    yield "lock_in_order", plots.lock_in_order(trace)
    yield "tokens_per_forward", plots.tokens_per_forward(trace)
    yield "overview", plots.overview(trace)
    yield "plot_parameters", plots.plot_parameters(notebook.parameter_counts(tiny))
    yield "plot_routing", plots.plot_routing(routing)
    yield "plot_token_routing", plots.plot_token_routing(routing, 0)
    yield "plot_sweep", plots.plot_sweep(sweep_rows)
    for name, plot in bench.PLOTS.items():
        yield name, plot(results)


def data_boxes(ax: Axes, renderer) -> list:
    """Display-space boxes of what an axes draws as data: bars, lines, markers, images."""
    boxes = []
    for artist in ax.get_children():
        if not artist.get_visible() or artist is ax.patch:
            continue
        if ((isinstance(artist, Rectangle) and artist.get_width() and artist.get_height())
                or (isinstance(artist, Line2D) and len(artist.get_xdata()))
                or isinstance(artist, (Collection, AxesImage))):
            boxes.append(artist.get_window_extent(renderer))
    return [b for b in boxes if b.width > 0 or b.height > 0]


def _number(text: str) -> bool:
    try:
        float(text.replace("\u2212", "-"))
        return True
    except ValueError:
        return False


def problems(fig) -> list[str]:
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    if not any(ax.get_title() for ax in axes) and not (fig._suptitle and fig._suptitle.get_text()):
        found.append("no title")
    for ax in axes:
        if not (len(ax.get_xticks()) or len(ax.get_yticks())):
            continue  # a panel that says in words that it has no data
        if not ax.get_xlabel():
            found.append(f"axes {ax.get_title()!r} has no x label")
        if not ax.get_ylabel() and not any(t.get_text() and not _number(t.get_text()) for t in ax.get_yticklabels()):
            found.append(f"axes {ax.get_title()!r} has no y label (nor named rows)")
        for text in [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]:
            if text.get_text() and text.get_fontsize() < 10:
                found.append(f"{text.get_text()[:30]!r} is {text.get_fontsize():.0f} pt")
        legends = [ax.get_legend()] if ax.get_legend() else []
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for other in axes:
                if any(box.overlaps(d) for d in data_boxes(other, renderer)):
                    found.append(f"the legend of {ax.get_title()!r} covers data of {other.get_title()!r}")
    return found


def test_every_plot_is_titled_labelled_readable_and_its_legend_clear(tiny, trace, results):
    bad = {}
    for name, fig in figures(tiny, trace, results):
        found = problems(fig)
        if found:
            bad[name] = found
    assert bad == {}


def test_the_checker_sees_a_legend_over_the_data(trace):
    fig = plots.tokens_per_forward(trace)
    ax = fig.axes[0]
    ax.legend(loc="center")  # over the bars
    assert any("covers data" in p for p in problems(fig))
    ax.set_title("")
    assert "no title" in problems(fig)


def test_distinct_ngrams_catches_repetition():
    from dgemma_helpers.train.word_validity import distinct_ngrams

    line = "[Enter a Messenger.]\n"
    assert distinct_ngrams([line * 5]) < 0.35 < distinct_ngrams(["O Romeo, Romeo, wherefore art thou Romeo?"]) == 1.0
