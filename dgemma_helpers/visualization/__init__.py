"""Watching the denoising rounds: the trace of a generation, the DenoisingPlayer widget that animates
it (static/player.js + player.css), its self-contained HTML export, and the trace's plots and GIF/MP4.

    trace.py        DenoisingTrace: every round of one batch row; save/load (versioned gzip JSON)
    trace_file.py   the trace file format: typed, bounded reading and writing
    player.py       DenoisingPlayer (anywidget): live while generating, or replaying a trace
    player_html.py  one offline HTML file that plays a trace

The trace's plots and its GIF/MP4 animation are in dgemma_helpers/plots/denoising.py.
"""

from .trace import DenoisingTrace


def __getattr__(name: str):
    # The player needs anywidget/ipywidgets (the dev extra): imported on first
    # use, so that the trace works without them.
    import importlib

    if name == "DenoisingPlayer":
        return importlib.import_module(".player", __name__).DenoisingPlayer
    if name == "player":
        return importlib.import_module(".player", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DenoisingTrace"]
