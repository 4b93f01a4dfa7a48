"""`make report`: notebook 05 through papermill into a report directory, checked file by file.

The end-to-end test runs the very command `make report` runs, on models/dgemma-tiny with a small
sweep.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from dgemma_helpers import benchmarks as bench
from dgemma_helpers.model_paths import REPO_ROOT
from test_signals import as_from_a_terminal

NOTEBOOK = REPO_ROOT / "notebooks" / "05_throughput_benchmark.ipynb"
TINY = REPO_ROOT / "models" / "dgemma-tiny"
PLOTS = ["ms_per_step.png", "quality_tradeoff.png", "speedup_vs_ar.png", "tokens_per_s.png"]
METRICS = ["tokens_per_s", "tokens_per_s_min", "tokens_per_s_max", "ms_per_step", "tokens_per_forward",
           "first_canvas_ms", "peak_mem_mb", "quality", "speedup_vs_baseline"]


def parameters() -> dict:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in cell.metadata.get("tags", []), "the first code cell must be papermill's parameters cell"
    values: dict = {}
    exec(cell.source, {}, values)
    return values


def test_notebook_is_committed_clean_with_parameters_first():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "commit the notebook without outputs"
    # Its defaults are the CLI's (Sweep's): `make report` and a plain papermill run measure the same thing.
    p, d = parameters(), bench.Sweep()
    assert p["model_path"] == d.model and p["engines"].split(",") == d.engines
    for name in ("max_new_tokens", "steps", "batch"):
        assert [int(v) for v in p[name].split(",")] == getattr(d, name)
    assert [float(v) for v in p["entropy_bounds"].split(",")] == d.entropy_bounds
    for name in ("repeats", "warmup", "reference", "baseline", "ar_model", "ignore_eos", "early_stop", "interleave",
                 "device", "dtype", "threads", "seed"):
        assert p[name] == getattr(d, name), name
    assert set(p) == set(bench.notebook.notebook_parameters(d, "out"))  # every parameter is passed


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run the report command (what `make report` runs) once; return its directory."""
    tmp = tmp_path_factory.mktemp("report")
    model, lengths = TINY, "64,128"
    out = tmp / "reports" / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "dgemma_helpers", "report", "--model", str(model), "--out", str(out),
           "--max-new-tokens", lengths, "--steps", "2,4", "--entropy-bounds", "0.1,1", "--repeats", "2",
           "--threads", "1"]  # one thread: robust when other jobs share the cores
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_report_files_exist_and_parse(report):
    names = {p.name for p in report.iterdir()}
    assert {"05_throughput_benchmark.ipynb", "report.html", "results.json", "results.csv", *PLOTS} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert [p.name for p in report.parent.iterdir()] == [report.name]  # its temporary directory is gone
    for png in PLOTS:
        assert (report / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    executed = nbformat.read(report / "05_throughput_benchmark.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "Diffusion vs autoregressive" in html and "data:image/png;base64" in html
    assert "bench.make_sweep(" not in html  # rendered without its code
    # Built in a temporary directory, it names the directory it now lives in.
    assert str(report.resolve()) in (report / "05_throughput_benchmark.ipynb").read_text() and ".run." not in html


def test_report_holds_the_expected_engines_and_metrics(report):
    results = json.loads((report / "results.json").read_text())
    status = {e["name"]: e for e in results["engines"]}
    assert [status[n]["status"] for n in ("kit", "transformers", "ar")] == ["ok"] * 3
    assert status["ar-hf"]["status"] == "skipped" and status["ar-hf"]["reason"]
    assert status["kit-cuda"]["status"] == "skipped" and status["kit-cuda"]["reason"]
    for name in ("vllm", "vllm-server"):  # the kit's venv has no vLLM: listed, with the fix
        assert status[name]["status"] == "skipped" and "make setup-vllm" in status[name]["reason"]
    ok = [r for r in results["rows"] if r["status"] == "ok"]
    assert {r["engine"] for r in ok} == {"kit", "transformers", "ar"}
    assert len([r for r in ok if r["engine"] == "kit"]) == 2 * 2 * 2  # lengths x steps x entropy bounds
    for r in ok:
        for metric in METRICS:
            assert isinstance(r[metric], (int, float)) and r[metric] >= 0, (r["engine"], metric)
        if r["kind"] == "diffusion":
            assert r["speedup_vs_reference"] > 0 and r["steps_per_canvas"] >= 1
    assert results["quality_metric"] == "word_validity"  # the tiny model ships its training vocabulary
    for key in ("cpu", "cpu_cores", "torch", "transformers", "dtype", "device"):
        assert results["machine"][key]
    with open(report / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench.ROW_FIELDS and len(rows) == len(results["rows"])
    assert {r["engine"] for r in rows} == {"kit", "kit-cuda", "transformers", "ar", "ar-hf", "vllm", "vllm-server"}


def test_make_report_runs_that_command():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # --no-print-directory: under `make test` the nested make would add "Leaving directory" lines.
    done = subprocess.run(["make", "--no-print-directory", "-n", "report", "MODEL=some/model",
                           "ARGS=--out some/dir --batch 1,4"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].endswith(
        "python -m dgemma_helpers report --model some/model --out some/dir --batch 1,4")


# ---- all or nothing: Ctrl-C, a failed notebook, a directory that is not a report ---------------------------
def report_command(model, out, *extra):
    return [sys.executable, "-m", "dgemma_helpers", "report", "--model", str(model), "--out", str(out), *extra]


def kernels_started_by(pid: int) -> list[int]:
    """Live processes whose environment names `pid` as their Jupyter parent (a kernel it started)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if f"JPY_PARENT_PID={pid}".encode() in f.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_with_one_line_and_leaves_nothing(tmp_path, checkpoint, sig):
    reports = tmp_path / "reports"
    out = reports / "run"
    # Far more repeats than can finish: the notebook is surely still running when Ctrl-C comes.
    cmd = report_command(checkpoint("confident"), out, "--engines", "kit", "--repeats", "100000", "--threads", "1")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    try:
        # Wait until the notebook is executing in its temporary directory (papermill saves the executed
        # notebook after each cell), then press Ctrl-C (or send what `timeout` and CI runners send).
        while proc.poll() is None:
            executed = [p for p in reports.glob(".run.*/" + NOTEBOOK.name) if '"execution_count": 1' in _read(p)]
            if executed:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, stdout + stderr
    line = f"interrupted; nothing was written to {out}"
    assert stderr.splitlines()[-1] == line and stderr.count("interrupted;") == 1, stderr
    assert "Traceback" not in stderr and "Kernel died" not in stderr, stderr
    assert list(reports.iterdir()) == []  # no report, no temporary directory
    if os.path.isdir("/proc"):  # and the notebook's kernel went with it
        for _ in range(50):
            if not kernels_started_by(proc.pid):
                break
            time.sleep(0.2)
        assert kernels_started_by(proc.pid) == []


def _read(path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:  # renamed into place or removed between the glob and the read
        return ""


def test_a_failed_notebook_is_kept_plainly_named_as_incomplete(tmp_path, checkpoint):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("out_dir = None", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print('writing to', out_dir)\nraise RuntimeError('the benchmark broke')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = tmp_path / "broken.ipynb"
    nbformat.write(nb, notebook)
    out = tmp_path / "reports" / "run"
    done = subprocess.run(report_command(checkpoint("confident"), out, "--engines", "kit", "--notebook", str(notebook)),
                          cwd=REPO_ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    failed = out.with_name("run.failed")
    assert not out.exists() and sorted(p.name for p in out.parent.iterdir()) == ["run.failed"]
    assert "RuntimeError: the benchmark broke" in done.stderr and f"kept in {failed}" in done.stderr
    assert str(failed / NOTEBOOK.name) in done.stderr  # the error's paths are where the files are now
    executed = (failed / NOTEBOOK.name).read_text(encoding="utf-8")
    assert f"writing to {failed.resolve()}" in executed and ".run." not in executed


def test_an_out_directory_that_is_not_a_report_is_never_replaced(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    done = subprocess.run(report_command(TINY, tmp_path, "--engines", "kit"), cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "is not an earlier report" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and keep.read_text() == "mine"
