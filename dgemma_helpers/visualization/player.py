"""DenoisingPlayer: a notebook widget (anywidget) that animates every denoising round.

    player = DenoisingPlayer.from_model(model, prompt=prompt)   # live; or DenoisingPlayer.from_file(path)
    display(player)
    result = dg.generate(model, prompt, on_step=player.update, record_topk=5)
    player.finish(result)

The animation runs in the front end (static/player.js), so generation never waits for it. Sending the
whole trace every round would cost O(rounds^2): each new round goes as a message, and the `_data`
snapshot is refreshed only when the trace has doubled; a view that missed messages asks for the rest.
Where no JavaScript runs (nbconvert, GitHub) the output shows a PNG of each canvas's last round instead.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

try:
    import anywidget
    import traitlets
    from IPython.display import DisplayHandle, display
except ImportError as e:  # pragma: no cover - exercised only where the extra is missing
    raise ImportError("DenoisingPlayer needs anywidget and ipywidgets: `pip install anywidget ipywidgets` "
                      "(or `pip install -e '.[dev]'` in the kit's checkout).") from e

from ..errors import InputError
from ..plots.denoising import final_rounds_png
from .player_html import STATIC
from .trace import DenoisingTrace


class DenoisingPlayer(anywidget.AnyWidget):
    """Plays a DenoisingTrace: the live canvas as a grid of tokens coloured by state and shaded by
    entropy, committed canvases above it, play/pause, step, round slider, speed and canvas selector;
    hover or click a token for its text, id, entropy, round accepted and top alternatives."""

    _esm = STATIC / "player.js"
    _css = STATIC / "player.css"
    _data = traitlets.Dict().tag(sync=True)
    speed = traitlets.Float(4.0).tag(sync=True)  # rounds per second of the animation
    autoplay = traitlets.Bool(False).tag(sync=True)  # start playing when shown (live mode)

    def __init__(self, trace: DenoisingTrace | None = None, *, speed: float = 4.0, autoplay: bool | None = None,
                 **kwargs: Any) -> None:
        if trace is not None and not isinstance(trace, DenoisingTrace):
            raise InputError(f"DenoisingPlayer plays a DenoisingTrace (got {type(trace).__name__}): use "
                             "DenoisingPlayer.from_file(path) for a saved trace, or from_model(model) for live mode.")
        trace = trace if trace is not None else DenoisingTrace()
        live = not trace.complete and len(trace) == 0
        super().__init__(speed=float(speed), autoplay=live if autoplay is None else bool(autoplay), **kwargs)
        self.trace = trace
        self._outputs: list[DisplayHandle] = []  # where this player was displayed: finish() updates them
        self.on_msg(self._on_front_end_message)
        self._snapshot()

    @classmethod
    def from_model(cls, model: Any, *, prompt: str | None = None, row: int = 0, **kwargs: Any) -> DenoisingPlayer:
        """An empty live player for `model`: pass `on_step=player.update` to generate."""
        return cls(DenoisingTrace.from_model(model, prompt=prompt, row=row), **kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> DenoisingPlayer:
        """Replay a trace saved with DenoisingTrace.save."""
        return cls(DenoisingTrace.load(path), **kwargs)

    def update(self, record: Any) -> None:
        """on_step callback: record one round and send it to the views (never waits for them)."""
        if self.trace.complete or (len(self.trace) and record.canvas_index == 0 and record.step == 1):
            raise InputError("this player already holds a generation: show each run in a new player "
                             "(DenoisingPlayer.from_model(model, prompt=...)), or call "
                             "player.load(DenoisingTrace.from_model(model, prompt=...)) before generating again.")
        if not self.trace.record(record):
            return
        n = len(self.trace)
        if n >= 2 * self._synced:
            self._snapshot()
        else:
            self.send(self.trace.rounds_message(n - 1))

    def finish(self, result: Any = None) -> DenoisingPlayer:
        """The generation is over: mark the trace complete (checked against `result` when given)."""
        self.trace.finish(result)
        self._snapshot()
        for output in self._outputs:  # the still image of the finished generation, in place of "waiting"
            data, metadata = self._repr_mimebundle_()
            output.update(data, metadata=metadata, raw=True)
        return self

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The widget view, and beside it a PNG of the final rounds (what nbconvert and GitHub show)."""
        data, metadata = super()._repr_mimebundle_(**kwargs)  # anywidget: (data, metadata)
        data = dict(data)
        if len(self.trace):
            data["image/png"] = base64.b64encode(final_rounds_png(self.trace)).decode("ascii")
        else:
            data["text/plain"] = "DenoisingPlayer: waiting for the first denoising round."
        return data, metadata

    def _ipython_display_(self) -> None:
        # Displayed with an id, so that finish() can replace the empty live player's still image.
        data, metadata = self._repr_mimebundle_()
        self._outputs.append(display(data, metadata=metadata, raw=True, display_id=True))

    def load(self, trace: DenoisingTrace) -> None:
        """Show another trace in this player."""
        self.trace = trace
        self._snapshot()

    def save_html(self, path: str | os.PathLike) -> Path:
        """Write one self-contained HTML file (inline JS, CSS and data; no network) that plays the trace."""
        return self.trace.save_html(path, speed=self.speed)

    def _snapshot(self) -> None:
        self._data = self.trace.to_payload()
        self._synced = len(self.trace)  # rounds in the last `_data` snapshot

    def _on_front_end_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "sync":
            have = content.get("have")
            if isinstance(have, int) and 0 <= have < len(self.trace):
                self.send(self.trace.rounds_message(have))
