"""Every Triton kernel compiles for the real GPU targets, on this CPU, at the specialisations the
fast path's own round produces for the official config and for models/dgemma-tiny (tools/compile_check.py).
Runs in a subprocess: the check needs the kernels decorated for a GPU, and tests/test_kernels.py
decorates them for the interpreter in this process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed: pip install -e '.[dev]' brings it")

TOOL = Path(__file__).resolve().parents[1] / "tools" / "compile_check.py"
KERNELS = {"_rmsnorm_kernel", "_gate_up_kernel", "_down_kernel", "_logits_kernel", "_soft_kernel"}
TARGETS = {80, 90, 100, 120}


def run_python(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "compile.json"
    proc = run_python(str(TOOL), "--json", str(out))
    print(proc.stdout[-6000:])  # the table, in the test log
    return proc, json.loads(out.read_text()) if out.exists() else None


def test_every_kernel_compiles_for_every_target_without_spills(report):
    proc, data = report
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert data["ok"] and not data["unreached"]
    assert "| _gate_up_kernel | sm_120 |" in proc.stdout and proc.stdout.strip().endswith(
        "PASS: every kernel compiles for every target without a problem")
    seen = {(r["kernel"], r["cc"]) for r in data["results"]}
    assert {(k, cc) for k in KERNELS for cc in TARGETS} <= seen
    for r in data["results"]:
        assert r["ok"] and not r["problems"], r
        if {"bf16", "fp16", "fp8"} & set(r["dtypes"]):
            assert r["spill_stores"] == r["spill_loads"] == 0, r


def test_the_check_covers_models_dtypes_batches_and_fp8_targets(report):
    _, data = report
    scenarios = {s for r in data["results"] for s in r["scenarios"]}
    for model in ("official", "tiny"):
        for dtype in ("bf16", "fp8", "fp16", "fp32"):
            assert {f"{model}/{dtype}/B{b}" for b in range(1, 9)} <= scenarios
    fp8 = [r for r in data["results"] if "fp8" in r["dtypes"]]
    assert {r["cc"] for r in fp8} == {89, 90, 100, 120}  # never sm_80, which has no fp8 conversions
    assert any("fp8e4nv" in r["variant"] for r in fp8 if r["kernel"] == "_gate_up_kernel")
    # batch 5+ of the official config (> 1024 tokens) takes the 64-pair MoE tiles, with 8 warps
    wide = [r for r in data["results"] if r["kernel"] == "_gate_up_kernel" and "'BLOCK_M': 64" in r["variant"]]
    assert wide and all(r["variant"].startswith("w8") for r in wide)
    assert any("official/bf16/B5" in r["scenarios"] for r in wide)


def test_the_check_fails_on_a_plain_global_read_in_a_kernel():
    """The bug the interpreter hides: a kernel that reads a plain Python float. The check must
    report it as a compile error (it was the denoise head's e^-60 floor)."""
    script = textwrap.dedent("""
        import json
        import sys
        sys.path.insert(0, TOOLS)
        import compile_check as aot
        import dgemma_kernels.denoise_head as head
        head.FLOOR = -60.0  # a plain float, as the kernels once read it
        report = aot.run_check(targets=[90], fp8_targets=[], dtypes=["bf16"], batches=[1], workers=1)
        print(json.dumps([(r["kernel"], r["problems"]) for r in report["results"] if r["problems"]]))
        print("OK" if report["ok"] else "FAILED")
    """).replace("TOOLS", repr(str(TOOL.parent)))
    proc = run_python("-c", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "FAILED"
    problems = dict((k, p) for k, p in json.loads(lines[-2]))
    assert set(problems) == {"_logits_kernel", "_soft_kernel"}
    assert all("FLOOR" in p[0] and "compile error" in p[0] for p in problems.values())
