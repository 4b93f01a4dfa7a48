"""Watching the denoising rounds: DenoisingTrace (trace.py; its file format, trace_file.py), the
DenoisingPlayer widget (player.py, static/player.js + player.css) and its offline HTML page
(player_html.py). The trace's plots and GIF/MP4 are in dgemma_helpers/plots/denoising.py.
"""

from .trace import DenoisingTrace


def __getattr__(name: str):
    # The player needs anywidget/ipywidgets (the dev extra): imported on first
    # use, so that the trace works without them.
    import importlib

    if name in ("DenoisingPlayer", "player"):
        player = importlib.import_module(".player", __name__)
        return player if name == "player" else player.DenoisingPlayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DenoisingTrace"]
