"""The DenoisingPlayer in a real browser.

JupyterLab (127.0.0.1, a free port, a one-time token) serves a copy of notebook 04 with injected
parameters; headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) runs all its cells
from the Run menu, then the test checks that the players render their grids, that play advances the
round counter, that the slider moves it back, that token text stays text, and that no JavaScript
error is logged. Then it opens the HTML file the notebook exported, straight from disk, and checks
that it plays. Screenshots go to the test's output folder (pytest's tmp_path, or $DGEMMA_TEST_OUTPUT).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dgemma_helpers.checkpoint import read_config

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "04_denoising_visualization.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# The model notebook 04 runs on here. None: an untrained random checkpoint made for the test, whose
# tokenizer gets one token spelled as HTML markup, so the escaping check sees a hostile token in a real
# run (models/dgemma-tiny would split it into harmless pieces). nbval runs the notebook on dgemma-tiny.
MODEL: Path | None = None
# A token text that would run code if it were ever parsed as HTML.
MARKUP = "<img src=x onerror=alert(1)>"
RUN_TIMEOUT_MS = 300_000

# Skipped only where the browser or its driver is missing; everything else is the dev extra's and must work.
playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed: pip install -e '.[dev]'")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at "
                                "/usr/bin/chromium: apt-get install -y chromium (.ci/run does this)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_for_notebook(tmp_path: Path) -> Path:
    """The checkpoint the notebook runs on; a random one gets a single token spelled as an HTML tag, so the
    prompt shows that token in the players and the exported page."""
    if MODEL is not None:
        return MODEL
    from transformers import AutoTokenizer

    from dgemma_helpers.train.random_checkpoint import make_random_checkpoint

    path = make_random_checkpoint(tmp_path / "model", preset="test", canvas_length=32)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.add_tokens([MARKUP])
    tokenizer.save_pretrained(path)
    return path


def notebook_with_parameters(dest: Path, **params) -> Path:
    """A copy of notebook 04 with an `injected-parameters` cell after its `parameters` cell (papermill's way)."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    path = dest / NOTEBOOK.name
    nbformat.write(nb, path)
    return path


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on 127.0.0.1 with a one-time token, its own config/data/runtime dirs; killed in teardown."""
    root = tmp_path / "lab"
    root.mkdir()
    port, token = free_port(), secrets.token_hex(16)
    # Start the notebook's kernel without asking, attach every cell to the page (no windowing, so both
    # players are in the DOM), and never fetch news.
    settings = tmp_path / "jsettings" / "@jupyterlab"
    for name, values in (("notebook-extension/tracker", {"autoStartDefaultKernel": True, "windowingMode": "none"}),
                         ("apputils-extension/notification", {"fetchNews": "false"})):
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    env = dict(os.environ, HF_HUB_OFFLINE="1", JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
               JUPYTER_DATA_DIR=str(tmp_path / "jdata"), JUPYTER_RUNTIME_DIR=str(tmp_path / "jrun"),
               IPYTHONDIR=str(tmp_path / "ipython"), MPLCONFIGDIR=str(tmp_path / "mpl"))
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 - open for the server's lifetime, closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False", "--LabApp.extension_manager=readonly",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--LabApp.user_settings_dir={tmp_path / 'jsettings'}", f"--LabApp.workspaces_dir={tmp_path / 'jworkspaces'}"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token, root
    finally:
        # The server and the kernels it started share one process group, ours alone.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


class BrowserLog:
    """Every JavaScript error and dialog a page produces."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def attach(self, page) -> None:
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))


def wait_for_settled_kernel(base: str, token: str, timeout: float = 120) -> None:
    """Wait until the server has one notebook session whose kernel stays the same and idle: JupyterLab may
    replace the first kernel it starts while the page loads, and cells sent to that one are lost."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=5) as r:
            sessions = json.load(r)
        kernels = [(s["kernel"]["id"], s["kernel"]["execution_state"]) for s in sessions if s.get("kernel")]
        seen = (seen + [kernels])[-4:]
        if len(seen) == 4 and len(kernels) == 1 and kernels[0][1] == "idle" and all(k == kernels for k in seen):
            return
        time.sleep(0.5)
    pytest.fail(f"the notebook's kernel did not settle: {seen}")


def run_all_cells(page) -> None:
    """Run > Run All Cells, from the menu, as a person would."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator("li.lm-Menu-item[data-command='runmenu:run-all']").click()


def counter_index(player) -> int:
    return int(player.locator(".dg-counter").get_attribute("data-index"))


def check_player_plays(page, player) -> None:
    """Play advances the round counter; pause stops it; the slider moves it back. At 1 round/s, so that a
    slow machine pauses well before a short trace reaches its end."""
    player.locator(".dg-speed").select_option("1")
    player.locator(".dg-slider").press("Home")
    assert counter_index(player) == 0
    player.locator(".dg-play").click()
    page.wait_for_function("el => Number(el.dataset.index) >= 1", arg=player.locator(".dg-counter").element_handle(),
                           timeout=20_000)
    player.locator(".dg-play").click()  # pause
    paused_at = counter_index(player)
    assert paused_at >= 1 and "play" in player.locator(".dg-play").inner_text()
    page.wait_for_timeout(1500)
    assert counter_index(player) == paused_at  # pause really stops
    player.locator(".dg-slider").press("ArrowLeft")
    assert counter_index(player) == paused_at - 1
    player.locator(".dg-slider").press("End")
    player.locator(".dg-slider").press("Home")
    assert counter_index(player) == 0
    player.locator(".dg-fwd").click()
    assert counter_index(player) == 1


def check_token_text_is_text(player) -> None:
    chips = player.locator(".dg-prompt .dg-chip").all_text_contents()
    assert MARKUP in "".join(chips), chips
    assert player.locator("img").count() == 0


def test_notebook_04_player_in_jupyterlab_and_exported_html(lab, tmp_path):
    base, token, root = lab
    out = Path(os.environ.get("DGEMMA_TEST_OUTPUT", tmp_path / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    exports = tmp_path / "exports"
    model = model_for_notebook(tmp_path)
    L = read_config(model)[1].canvas_length
    # Two canvases: at least two rounds each (the adaptive stop needs an unchanged argmax), so >= 4 rounds.
    notebook_with_parameters(root, model_path=str(model), prompt=f"Say {MARKUP} and the sky is",
                             max_new_tokens=2 * L, max_denoising_steps=8, output_dir=str(exports))
    log = BrowserLog()
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            log.attach(page)
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
            wait_for_settled_kernel(base, token)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            run_all_cells(page)
            # The last cell prints "Exported ..."; a cell that fails stops the run with a traceback instead.
            done = page.locator(".jp-OutputArea-output", has_text="Exported ")
            failed = page.locator(".jp-OutputArea-output", has_text="Traceback")
            done.or_(failed).first.wait_for(timeout=RUN_TIMEOUT_MS)
            assert failed.count() == 0, failed.all_text_contents()

            players = page.locator(".dg-player")
            players.nth(1).locator(".dg-grid .dg-tok").first.wait_for(timeout=60_000)
            assert players.count() == 2  # live and replay
            live, replay = players.nth(0), players.nth(1)
            assert replay.locator(".dg-grid .dg-tok").count() == L
            # The live player received every round while the kernel generated.
            rounds = int(replay.locator(".dg-slider").get_attribute("max")) + 1
            assert rounds >= 4 and int(live.locator(".dg-slider").get_attribute("max")) + 1 == rounds
            replay.scroll_into_view_if_needed()
            check_player_plays(page, replay)
            replay.locator(".dg-tok").nth(3).hover()
            assert "entropy" in replay.locator(".dg-details").inner_text()
            check_token_text_is_text(replay)
            check_token_text_is_text(live)
            replay.screenshot(path=str(out / "jupyterlab_player.png"))
            page.screenshot(path=str(out / "jupyterlab.png"))

            html = exports / "denoising.html"
            assert html.is_file(), sorted(p.name for p in exports.iterdir())
            page2 = browser.new_page(viewport={"width": 1200, "height": 800})
            log.attach(page2)
            page2.goto(html.as_uri())
            player = page2.locator(".dg-player")
            player.locator(".dg-grid .dg-tok").first.wait_for(timeout=20_000)
            assert player.locator(".dg-grid .dg-tok").count() == L
            check_player_plays(page2, player)
            check_token_text_is_text(player)
            player.locator(".dg-tok").nth(0).click()
            assert "top alternatives" in player.locator(".dg-details").inner_text().lower()
            page2.screenshot(path=str(out / "exported_html.png"), full_page=True)
        except Exception:
            shutil.copy(tmp_path / "jupyterlab.log", out / "jupyterlab.log")
            for i, p in enumerate(browser.contexts[0].pages if browser.contexts else []):
                p.screenshot(path=str(out / f"failure_{i}.png"))
                (out / f"failure_{i}.html").write_text(p.content())
            raise
        finally:
            browser.close()
    assert not log.dialogs, f"a page opened a dialog (token text ran as code?): {log.dialogs}"
    assert not log.errors, "JavaScript errors:\n" + "\n".join(log.errors)
    print(f"screenshots in {out}")
