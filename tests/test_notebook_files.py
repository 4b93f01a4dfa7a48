"""The notebooks as files: committed without outputs, a papermill parameters cell first, and the
kit's tiny model as the default. (`make test` also runs every one of them under nbval.)"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CLEAR = "clear them with `.venv/bin/jupyter nbconvert --clear-output --inplace notebooks/*.ipynb`"


def test_the_tutorial_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"01_setup.ipynb", "02_model_load.ipynb", "03_block_generation.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_parametrised(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    for i, cell in enumerate(code):
        assert not cell.get("outputs"), f"{path.name}: code cell {i} has outputs; {CLEAR}"
        assert cell.get("execution_count") is None, f"{path.name}: code cell {i} has an execution count; {CLEAR}"
    params = code[0]
    assert "parameters" in params["metadata"].get("tags", []), \
        f"{path.name}: the first code cell must be tagged 'parameters' (papermill injects values after it)"
    tree = ast.parse("".join(params["source"]))
    assert all(isinstance(s, ast.Assign) for s in tree.body), \
        f"{path.name}: the parameters cell must hold plain assignments only"


@pytest.mark.parametrize("name", ["01_setup.ipynb", "02_model_load.ipynb", "03_block_generation.ipynb"])
def test_default_model_is_the_tiny_one(name):
    nb = json.loads((NOTEBOOKS[0].parent / name).read_text(encoding="utf-8"))
    params = next(c for c in nb["cells"] if c["cell_type"] == "code")
    values = {t.id: ast.literal_eval(s.value) for s in ast.parse("".join(params["source"])).body
              for t in s.targets if isinstance(t, ast.Name)}
    assert values["model_path"] == "models/dgemma-tiny"
    assert values["device"] is None and values["dtype"] is None
    if name == "02_model_load.ipynb":  # its official-model cell downloads about 50 GB: off unless asked for
        assert values["load_official"] is False
