"""A shareable report: notebook 05 executed through papermill, then rendered as HTML without code.

    reports/<timestamp>/
        05_throughput_benchmark.ipynb   the executed notebook (explanations, tables, plots)
        report.html                     the same, without code cells (nbconvert --no-input)
        results.json, results.csv       every measurement (written by the notebook, atomically)
        *.png                           the plots

The sweep is validated here, before a kernel starts; the notebook receives it as papermill
parameters (the names of the CLI flags), so `papermill -p max_new_tokens 64,128 ...` works too.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from ..atomic import atomic_write
from ..errors import DGemmaError
from ..model_paths import REPO_ROOT
from .engines import ENGINES
from .grid import Sweep

NOTEBOOK = "05_throughput_benchmark.ipynb"


def default_report_dir(root: str | os.PathLike | None = None) -> Path:
    """reports/<UTC timestamp> under the kit's checkout (or `root`)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root or REPO_ROOT) / "reports" / stamp


def notebook_parameters(sweep: Sweep, out_dir: str | os.PathLike) -> dict:
    """The notebook's papermill parameters for `sweep` (lists as "a,b" strings, like the CLI flags)."""
    csv = lambda values: ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)  # noqa: E731
    return dict(model_path=str(Path(sweep.model).resolve()), engines=",".join(sweep.engines),
                max_new_tokens=csv(sweep.max_new_tokens), steps=csv(sweep.steps), batch=csv(sweep.batch),
                entropy_bounds=csv(sweep.entropy_bounds), repeats=sweep.repeats, warmup=sweep.warmup,
                reference=sweep.reference, baseline=sweep.baseline,
                ar_model=str(Path(sweep.ar_model).resolve()) if sweep.ar_model else None,
                ignore_eos=sweep.ignore_eos, early_stop=sweep.early_stop, interleave=sweep.interleave,
                device=sweep.device, dtype=sweep.dtype, threads=sweep.threads, seed=sweep.seed,
                vllm_args=json.dumps(sweep.vllm_args), out_dir=str(Path(out_dir).resolve()))


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
    for name in ("results.json", "results.csv"):
        paths[name] = out / name
    for png in sorted(out.glob("*.png")):
        paths[png.name] = png
    return paths
