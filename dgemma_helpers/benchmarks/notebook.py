"""A shareable report: notebook 05 executed through papermill into reports/<timestamp>/ (the executed
notebook, report.html without code cells, results.json/.csv, the plots). The sweep is checked before
a kernel starts and reaches the notebook as papermill parameters named as the CLI flags."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path

from ..atomic import atomic_write
from ..errors import DGemmaError
from ..model_paths import REPO_ROOT
from .engines import ENGINES
from .grid import Sweep, flag_list

NOTEBOOK = "05_throughput_benchmark.ipynb"


def default_report_dir(root: str | os.PathLike | None = None) -> Path:
    """reports/<UTC timestamp> under the kit's checkout (or `root`)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root or REPO_ROOT) / "reports" / stamp


def notebook_parameters(sweep: Sweep, out_dir: str | os.PathLike) -> dict:
    """The notebook's papermill parameters for `sweep`: the Sweep's fields (lists as "a,b", like the flags)."""
    params = {k: v for k, v in dataclasses.asdict(sweep).items() if k not in ("model", "prompts")}
    params.update({k: flag_list(params[k]) for k in ("engines", "max_new_tokens", "steps", "batch", "entropy_bounds")})
    return dict(params, model_path=str(Path(sweep.model).resolve()), out_dir=str(Path(out_dir).resolve()),
                ar_model=str(Path(sweep.ar_model).resolve()) if sweep.ar_model else None,
                vllm_args=json.dumps(sweep.vllm_args))


def make_report(sweep: Sweep, out_dir: str | os.PathLike | None = None,
                notebook: str | os.PathLike | None = None) -> dict[str, Path]:
    """Execute the benchmark notebook into `out_dir` and render it; returns the files written."""
    try:
        import nbformat
        import papermill
        from nbconvert import HTMLExporter
    except ImportError as e:
        raise DGemmaError(f"the report needs papermill and nbconvert ({e}); install the dev extras: "
                          "pip install -e '.[dev]' (or run `make report`, which does).") from None

    sweep.validate(list(ENGINES))
    source = Path(notebook) if notebook else REPO_ROOT / "notebooks" / NOTEBOOK
    if not source.exists():
        raise DGemmaError(f"notebook {source} not found: run from the kit's checkout or pass --notebook PATH.")
    out = Path(out_dir) if out_dir else default_report_dir()
    out.mkdir(parents=True, exist_ok=True)
    executed = out / NOTEBOOK
    error = None
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=notebook_parameters(sweep, out),
                                   kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=False)
    except papermill.PapermillExecutionError as e:
        error = e  # the executed notebook shows where it stopped; render it all the same
    html, _ = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(
        nbformat.read(executed, as_version=4))
    paths = {"dir": out, "notebook": executed, "html": atomic_write(out / "report.html", html)}
    if error is not None:
        raise DGemmaError(f"the benchmark notebook failed ({error.ename}: {error.evalue}); see {executed} and "
                          f"{paths['html']}.")
    paths.update({name: out / name for name in ("results.json", "results.csv")})
    paths.update({png.name: png for png in sorted(out.glob("*.png"))})
    return paths
