"""The DenoisingPlayer's kernel side (live updates, resync), the self-contained HTML export and its
escaping, and the trace plots and animations. The browser itself is tests/test_browser.py."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import numpy as np
import pytest

import dgemma_helpers as dg
from dgemma_helpers.visualization.player_html import STATIC, player_html
from dgemma_helpers.visualization.trace import DenoisingTrace

pytest.importorskip("anywidget", reason="the widget needs the dev extra: pip install -e '.[dev]'")
pytest.importorskip("matplotlib", reason="the plots need the dev extra: pip install -e '.[dev]'")

from dgemma_helpers import plots
from dgemma_helpers.visualization.player import DenoisingPlayer

MARKUP = "<img src=x onerror=alert(1)>"
CLOSER = "</script><script>alert(2)</script>"


@pytest.fixture(scope="module")
def model(checkpoint, ours):
    return ours(checkpoint("confident"))


def live_run(model, player: DenoisingPlayer, **kwargs):
    settings = dict(max_new_tokens=48, max_denoising_steps=6, seed=5, record_topk=2)
    settings.update(kwargs)
    return dg.generate(model, "The sky is", on_step=player.update, **settings)


def hostile_trace(model) -> DenoisingTrace:
    """A recorded trace whose token texts include markup and a script closer."""
    trace = DenoisingTrace.from_model(model, prompt="The sky is")
    dg.generate(model, "The sky is", max_new_tokens=16, max_denoising_steps=3, seed=0, on_step=trace.record)
    trace.token_text(trace.used_ids())
    first = trace.rounds[0]
    trace.vocab[int(first.canvas_ids[0])] = MARKUP
    trace.vocab[int(first.canvas_ids[1])] = CLOSER
    trace.prompt = "say " + MARKUP
    return trace.finish()


# ---- the kernel side of the widget ------------------------------------------------------------------------
def test_live_updates_send_every_round_once_with_geometric_snapshots(model, monkeypatch):
    player = DenoisingPlayer.from_model(model, prompt="The sky is")
    assert player.autoplay and player._data["rounds"] == []  # live players start playing, empty
    sent, snapshots = [], []
    monkeypatch.setattr(player, "send", lambda msg: sent.append(msg))
    player.observe(lambda change: snapshots.append(len(change["new"]["rounds"])), names="_data")
    result = live_run(model, player)
    n = len(player.trace)
    assert n == result.num_forwards and n >= 8
    # Snapshots at 1, 2, 4, 8, ... rounds; every other round went out as a message, in order.
    assert snapshots == [2**k for k in range(len(snapshots))] and snapshots[-1] * 2 > n
    assert [m["start"] for m in sent] == [i for i in range(n) if i + 1 not in snapshots]
    # A view that follows snapshot + messages ends up with every round, exactly as the trace has them.
    have = []
    for i in range(n):
        have.append(player.trace.round_payload(i) if i + 1 in snapshots else sent[[m["start"] for m in sent].index(i)]
                    ["rounds"][0])
    assert have == player.trace.to_payload()["rounds"]
    # Each message carries the text of its ids.
    for m in sent:
        ids = set(m["rounds"][0]["ids"]) | set(m["rounds"][0]["am"])
        assert {str(i) for i in ids} <= set(m["vocab"])
    player.finish(result)
    assert player._data["meta"]["complete"] and len(player._data["rounds"]) == n
    with pytest.raises(dg.InputError, match="already holds a generation"):
        live_run(model, player)  # a second run needs a new player (or player.load(new trace))
    player.load(DenoisingTrace.from_model(model))
    assert player._data["rounds"] == [] and live_run(model, player).num_forwards == len(player.trace)


def test_a_view_that_missed_rounds_gets_them_on_request(model, monkeypatch):
    player = DenoisingPlayer.from_model(model)
    live_run(model, player)
    sent = []
    monkeypatch.setattr(player, "send", lambda msg: sent.append(msg))
    player._on_front_end_message(player, {"type": "sync", "have": 3}, [])
    assert sent[0]["start"] == 3 and len(sent[0]["rounds"]) == len(player.trace) - 3
    assert sent[0]["trace_id"] == player.trace.trace_id
    player._on_front_end_message(player, {"type": "sync", "have": len(player.trace)}, [])  # up to date: nothing
    player._on_front_end_message(player, {"type": "nonsense"}, [])
    assert len(sent) == 1


def test_replay_from_a_file_and_refusals(model, tmp_path):
    player = DenoisingPlayer.from_model(model)
    result = live_run(model, player)
    player.finish(result)
    path = player.trace.save(tmp_path / "t.json.gz")
    replay = DenoisingPlayer.from_file(path)
    assert not replay.autoplay and len(replay._data["rounds"]) == len(player.trace)
    assert replay._data["meta"]["complete"]
    with pytest.raises(dg.InputError, match="plays a DenoisingTrace"):
        DenoisingPlayer(str(path))
    with pytest.raises(dg.TraceError):
        DenoisingPlayer.from_file(tmp_path / "missing.json.gz")
    other = DenoisingTrace.load(path)
    replay.load(other)
    assert replay._data["trace_id"] == other.trace_id
    assert dg.DenoisingPlayer is DenoisingPlayer  # exported lazily by the package


def test_the_widget_loads_the_package_files():
    player = DenoisingPlayer()
    assert player._esm == (STATIC / "player.js").read_text() and player._css == (STATIC / "player.css").read_text()


def test_player_js_never_parses_text_as_markup():
    js = (STATIC / "player.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in js, sink
    assert "export default function player()" in js and "export function render" not in js


# ---- HTML export --------------------------------------------------------------------------------------------
def test_exported_html_is_self_contained_and_escapes_token_text(model, tmp_path):
    trace = hostile_trace(model)
    path = trace.save_html(tmp_path / "player.html")
    page = path.read_text()
    # Exactly our two script elements: the JSON data and the module; token text opened no other element.
    assert len(re.findall(r"<script\b", page)) == 2 and "<img" not in page and "alert(2)</script>" not in page
    data = re.search(r'<script type="application/json" id="dgemma-trace">(.*?)</script>', page, re.DOTALL).group(1)
    assert "<" not in data and ">" not in data and "&" not in data
    payload = json.loads(data)  # the payload is data: JSON that reads back to exactly what was embedded
    expected = trace.to_payload()
    assert payload == expected
    assert MARKUP in payload["vocab"].values() and CLOSER in payload["vocab"].values()
    assert payload["meta"]["prompt"] == "say " + MARKUP
    # The only code is the module, allowed by its hash; nothing can be fetched (no CDN, no network).
    script = re.search(r'<script type="module">(.*?)</script>', page, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"default-src 'none'; script-src 'sha256-{digest}'" in page
    assert (STATIC / "player.js").read_text() in script
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page) and "@import" not in page
    assert "<title>DiffusionGemma denoising trace</title>" in page or "<title>" in page


def test_html_title_is_escaped(model):
    trace = hostile_trace(model)
    trace.title = MARKUP
    page = player_html(trace.to_payload())
    assert "<title>&lt;img src=x onerror=alert(1)&gt;</title>" in page


def test_player_save_html_writes_atomically(model, tmp_path):
    player = DenoisingPlayer(hostile_trace(model))
    path = player.save_html(tmp_path / "out" / "p.html")
    assert path.read_text().startswith("<!doctype html>")
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.html"]


# ---- plots and animations -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_trace(model):
    trace = DenoisingTrace.from_model(model, prompt="The sky is")
    result = dg.generate(model, "The sky is", max_new_tokens=40, max_denoising_steps=5, seed=2, on_step=trace.record)
    return trace.finish(result)


@pytest.mark.parametrize("plot", [plots.accepted_per_round, plots.entropy_heatmap, plots.lock_in_order,
                                  plots.tokens_per_forward, plots.overview])
def test_plots_return_figures(finished_trace, plot):
    from matplotlib.figure import Figure

    fig = plot(finished_trace)
    assert isinstance(fig, Figure) and fig.axes
    fig.canvas.draw()  # renders without error


def test_plot_contents_follow_the_trace(finished_trace):
    fig = plots.accepted_per_round(finished_trace)
    heights = [p.get_height() for p in fig.axes[0].patches]
    accepted, new = finished_trace.accepted_counts()
    assert heights == (accepted - new).tolist() + new.tolist()
    fig = plots.tokens_per_forward(finished_trace)
    assert [p.get_height() for p in fig.axes[0].patches] == pytest.approx(finished_trace.tokens_per_forward())
    fig = plots.entropy_heatmap(finished_trace)
    assert np.array_equal(fig.axes[0].images[0].get_array(), finished_trace.stack("entropy").T)


def test_plots_refuse_an_empty_trace():
    with pytest.raises(dg.InputError, match="no rounds yet"):
        plots.entropy_heatmap(DenoisingTrace(4))


def test_save_gif_one_frame_per_round(finished_trace, tmp_path):
    from PIL import Image

    path = finished_trace.save_gif(tmp_path / "a.gif", fps=5, canvases=[1])
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == sum(rd.canvas_index == 1 for rd in finished_trace.rounds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif"]
    with pytest.raises(dg.InputError, match="no recorded rounds belong to canvases"):
        finished_trace.save_gif(tmp_path / "b.gif", canvases=[7])


def test_save_mp4_without_ffmpeg_says_how_to_install_it(finished_trace, tmp_path, monkeypatch):
    from matplotlib import animation

    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(dg.MissingToolError, match="apt-get install ffmpeg"):
        finished_trace.save_mp4(tmp_path / "a.mp4")
    assert not (tmp_path / "a.mp4").exists()


def test_save_mp4_with_ffmpeg(finished_trace, tmp_path):
    from matplotlib import animation

    if not animation.writers.is_available("ffmpeg"):
        pytest.skip("ffmpeg is not installed here (apt-get install ffmpeg)")
    path = finished_trace.save_mp4(tmp_path / "a.mp4", canvases=[0])
    assert path.read_bytes()[4:8] == b"ftyp"
