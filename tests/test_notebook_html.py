"""Notebook 04 as a reader without a kernel sees it: executed (papermill, as `make test` runs it, with
its own output folder), then exported by nbconvert to HTML. Each DenoisingPlayer shows its still image
there (the widget itself needs JavaScript from a CDN), and the GIF is an image, not an object's repr.

Runs the real notebook (about 20 s on 2 cores with models/dgemma-tiny), not a stand-in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

papermill = pytest.importorskip("papermill")
nbconvert = pytest.importorskip("nbconvert")
pytest.importorskip("anywidget")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    from traitlets.config import Config

    tmp = tmp_path_factory.mktemp("nb04")
    executed = tmp / "04.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / "04_denoising_visualization.ipynb"), str(executed),
                               parameters={"output_dir": str(tmp / "outputs")}, cwd=str(NOTEBOOKS),
                               progress_bar=False)
    config = Config()
    config.ClearMetadataPreprocessor.enabled = True  # what the notebook tells readers to export with
    body, _ = nbconvert.HTMLExporter(config=config).from_filename(str(executed))
    return body


def code_cells(html: str) -> list[str]:
    return re.split(r'<div class="jp-Cell jp-CodeCell', html)[1:]


def test_each_player_shows_a_still_image(html):
    players = [c for c in code_cells(html) if re.search(r">(from_model|from_file)<", c)]
    assert len(players) == 2
    for cell in players:
        assert re.search(r'<img[^>]* src="data:image/png;base64,', cell), cell[:2000]


def test_the_gif_is_an_image_and_no_repr_leaks(html):
    assert re.search(r'<img[^>]* src="data:image/gif;base64,', html)
    assert "IPython.core.display" not in html and "object at 0x" not in html
