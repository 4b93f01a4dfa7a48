"""Ahead-of-time compile check: every Triton kernel of the kit compiled for the real GPU targets on
a machine without a GPU or a driver, with the ptxas inside the triton wheel.

    python tools/compile_check.py                       # the table; exit status 1 on any problem
    python tools/compile_check.py --targets 90,120 --json compile.json --details

A developer's tool, not part of the runtime package (tests/test_compile.py runs it).

What gets compiled is what a GPU launch would compile. The fast path's own round
(dgemma_helpers.fast.step.fast_round with the Triton kernels) runs on weightless models (meta tensors) of the official
config and of models/dgemma-tiny, in each dtype and at batch sizes 1 to 8, under a stand-in Triton
driver that reports the target. Triton's `jit_cache_hook` stops every launch right after
specialisation (signature, constexprs, pointer alignment, warps, stages: what the launchers chose
for that target) and records it. Each distinct specialisation is then compiled to a cubin for its
target, and ptxas's -v log gives registers, spills and shared memory.

Problems (exit status 1): a compile error; a register spill in bf16, fp16 or fp8 (in fp32 the
dot products run on FMA units, not tensor cores, and spills are reported only); shared memory
above the target's per-block limit; registers x threads above an SM's 64K registers; a
@triton.jit function in kernels/ that no launch reaches.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
from collections.abc import Sequence

# Kernels are decorated for the interpreter or for a GPU when their module is imported, as
# TRITON_INTERPRET says then: this check needs the GPU kind, so the variable goes first.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="dgemma_aot_"))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, without its warning

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.driver import DriverBase  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import dgemma_kernels.denoise_head  # noqa: E402
import dgemma_kernels.moe  # noqa: E402
import dgemma_kernels.rmsnorm  # noqa: E402
import dgemma_kernels.tl_math  # noqa: E402
from dgemma_helpers.atomic import atomic_write  # noqa: E402
from dgemma_helpers.cache import KVCache  # noqa: E402
from dgemma_helpers.checkpoint import read_config  # noqa: E402
from dgemma_helpers.config import GenerationSettings, ModelConfig  # noqa: E402
from dgemma_helpers.fast.quant import quantize_experts  # noqa: E402
from dgemma_helpers.fast.step import StaticRound, fast_round  # noqa: E402
from dgemma_helpers.model import DiffusionGemma  # noqa: E402
from dgemma_helpers.model_paths import find_model  # noqa: E402

kernels = dgemma_kernels
KERNEL_MODULES = (kernels.rmsnorm, kernels.moe, kernels.denoise_head, kernels.tl_math)
if not isinstance(kernels.rmsnorm._rmsnorm_kernel, JITFunction):
    raise ImportError("the kernels were imported for the Triton interpreter (TRITON_INTERPRET=1) before this check: "
                      "run it in a process of its own, `python tools/compile_check.py`.")
TARGETS = (80, 90, 100, 120)  # A100; H100/H200; B200; RTX Pro 6000 / RTX 50xx
FP8_TARGETS = (89, 90, 100, 120)  # fp8 conversions exist from Ada (sm_89) on; the kit never runs fp8 below
DTYPES = ("bf16", "fp8", "fp16", "fp32")  # fp8: bf16 activations, e4m3 expert weights (quantize_experts)
BATCHES = tuple(range(1, 9))
STRICT_DTYPES = {"bf16", "fp16", "fp8"}  # a spill in one of these is a failure
# Shared memory a block may use (opt-in maximum) per target, and registers per SM.
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}
REGISTERS_PER_SM = 65536
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class StandInDriver(DriverBase):
    """What Triton asks of a driver while it specialises a launch, answered for a chosen target."""

    def __init__(self, target: GPUTarget) -> None:
        self.target = target

    @classmethod
    def is_active(cls) -> bool:
        return False

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device=None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("meta")

    def get_device_interface(self):
        return torch.cuda

    def get_benchmarker(self):
        raise NotImplementedError("the compile check never runs a kernel")

    def map_python_to_cpp_type(self, ty):
        raise NotImplementedError("the compile check never runs a kernel")


@dataclasses.dataclass
class Launch:
    """One distinct specialisation a launcher produced for one target, and the scenarios that hit it."""

    cc: int
    fn: JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    scenarios: list[str]

    @property
    def kernel(self) -> str:
        return self.fn.fn.__name__

    def describe(self) -> str:
        names = {self.fn.arg_names[k[0]]: v for k, v in self.constexprs.items()}
        pointers = ",".join(t[1:] for t in self.signature.values() if t.startswith("*"))
        return f"w{self.options['num_warps']}s{self.options['num_stages']} {names} ptrs[{pointers}]"


def model_configs() -> dict[str, ModelConfig]:
    """The official text config and the tiny model's, cut to one period of the layer pattern (5
    sliding + 1 full attention): every layer of a kind launches the same kernels."""
    tiny = read_config(find_model())[1]
    return {name: dataclasses.replace(c, num_layers=6, layer_types=c.layer_types[:6])
            for name, c in (("official", ModelConfig()), ("tiny", tiny))}


def weightless_model(config: ModelConfig, dtype: str) -> DiffusionGemma:
    with torch.device("meta"):
        model = DiffusionGemma(config).to(TORCH_DTYPES[dtype])
    return quantize_experts(model) if dtype == "fp8" else model


def capture(targets: Sequence[int], dtypes: Sequence[str] = DTYPES, batches: Sequence[int] = BATCHES) -> list[Launch]:
    """Run the fast round for every (target, model, dtype, batch) and record each distinct launch."""
    launches: dict[tuple, Launch] = {}
    scenario = [""]
    cc_now = [0]

    def hook(*, key, fn, compile, **_) -> bool:
        jf = fn.jit_function
        rec = launches.setdefault((cc_now[0], jf.fn.__module__, jf.fn.__name__, str(key)), Launch(
            cc=cc_now[0], fn=jf, signature=compile["signature"], constexprs=compile["constants"],
            attrs=compile["configs"][0], scenarios=[],
            options={k: compile[k] for k in ("num_warps", "num_ctas", "num_stages", "enable_fp_fusion",
                                             "launch_cooperative_grid")}))
        rec.scenarios.append(scenario[0])
        return True  # recorded: neither compile nor launch

    previous_hook, previous_driver = knobs.runtime.jit_cache_hook, driver._active  # None: none chosen yet
    knobs.runtime.jit_cache_hook = hook
    settings = GenerationSettings()
    try:
        for name, config in model_configs().items():
            for dtype in dtypes:
                model = weightless_model(config, dtype)
                for cc in [t for t in targets if dtype != "fp8" or t >= 89]:
                    driver.set_active(StandInDriver(GPUTarget("cuda", cc, 32)))
                    cc_now[0] = cc
                    for batch in batches:
                        scenario[0] = f"{name}/{dtype}/B{batch}"
                        cache = KVCache(config, batch, config.canvas_length, device="meta", dtype=model.dtype)
                        buffers = StaticRound(model, settings.stability_threshold, cache)
                        fast_round(model, buffers, "triton")
    finally:
        knobs.runtime.jit_cache_hook = previous_hook
        driver._active = previous_driver
    return list(launches.values())


_PTXAS = {k: re.compile(r) for k, r in dict(regs=r"Used (\d+) registers", spill_stores=r"(\d+) bytes spill stores",
                                            spill_loads=r"(\d+) bytes spill loads",
                                            static_smem=r"(\d+) bytes smem").items()}
_LAUNCHES: list[Launch] = []  # what forked compile workers read


def compile_launch(index: int) -> dict:
    launch = _LAUNCHES[index]
    dtypes = sorted({s.split("/")[1] for s in launch.scenarios})
    out = dict(kernel=launch.kernel, cc=launch.cc, variant=launch.describe(), dtypes=dtypes,
               scenarios=launch.scenarios)
    src = triton.compiler.ASTSource(fn=launch.fn, signature=launch.signature, constexprs=launch.constexprs,
                                    attrs=launch.attrs)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):  # knobs.nvidia.dump_ptxas_log prints ptxas -v here
            compiled = triton.compile(src, target=GPUTarget("cuda", launch.cc, 32), options=dict(launch.options))
    except Exception as e:  # noqa: BLE001 - a compile error is this check's finding, reported per launch
        return dict(out, ok=False, problems=[f"compile error: {type(e).__name__}: {str(e).strip()[-600:]}"])
    for k, rx in _PTXAS.items():
        out[k] = max(map(int, rx.findall(log.getvalue())), default=0)
    warps = compiled.metadata.num_warps
    out.update(ok=True, num_warps=warps, shared=compiled.metadata.shared + out["static_smem"])
    spills = out["spill_stores"] or out["spill_loads"]
    problems = []
    if spills and STRICT_DTYPES.intersection(dtypes):
        problems.append(f"spills {out['spill_stores']}/{out['spill_loads']} bytes")
    if out["shared"] > SMEM_LIMIT[launch.cc]:
        problems.append(f"shared memory {out['shared']} > {SMEM_LIMIT[launch.cc]}")
    if out["regs"] * warps * 32 > REGISTERS_PER_SM:
        problems.append(f"{out['regs']} registers x {warps * 32} threads > {REGISTERS_PER_SM}")
    out["problems"] = problems
    return out


def unreached(launches: Sequence[Launch]) -> list[str]:
    """@triton.jit functions of kernels/ that no launch reaches, directly or as a device function."""
    defined = {v.fn.__name__: v for m in KERNEL_MODULES for v in vars(m).values()
               if isinstance(v, JITFunction) and v.fn.__module__ == m.__name__}
    reached, todo = set(), [lnc.fn for lnc in launches]
    while todo:
        fn = todo.pop()
        if fn.fn.__name__ in reached:
            continue
        reached.add(fn.fn.__name__)
        todo += [defined[n] for n in fn.fn.__code__.co_names if n in defined]
    return sorted(set(defined) - reached)


def run_check(targets: Sequence[int] = TARGETS, fp8_targets: Sequence[int] = FP8_TARGETS,
              dtypes: Sequence[str] = DTYPES, batches: Sequence[int] = BATCHES, workers: int | None = None) -> dict:
    """Capture and compile everything; returns {"results": [...], "unreached": [...], "ok": bool}."""
    global _LAUNCHES
    all_targets = sorted(set(targets) | {t for t in fp8_targets if "fp8" in dtypes})
    launches = [lnc for lnc in capture(all_targets, dtypes, batches)
                if lnc.cc in targets or all(s.split("/")[1] == "fp8" for s in lnc.scenarios)]
    knobs.compilation.always_compile = True  # so that ptxas runs, and logs, every time
    knobs.nvidia.dump_ptxas_log = True
    _LAUNCHES = launches
    workers = workers or min(len(launches), os.cpu_count() or 1)
    if workers > 1:  # forked: the workers see the captured launches as they are
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(compile_launch, range(len(launches)), chunksize=1)
    else:
        results = [compile_launch(i) for i in range(len(launches))]
    missing = unreached(launches)
    ok = not missing and all(r["ok"] and not r["problems"] for r in results)
    return dict(triton=triton.__version__, targets=all_targets, results=results, unreached=missing, ok=ok)


def summary_table(report: dict) -> str:
    """One row per kernel and target: specialisations, worst registers / spills / shared memory."""
    rows = {}
    for r in report["results"]:
        row = rows.setdefault((r["kernel"], r["cc"]), dict(n=0, regs=0, spill=0, shared=0, problems=[]))
        row["n"] += 1
        row["problems"] += [f"{p} [{r['variant']}; {r['scenarios'][0]}...]" for p in r["problems"]]
        if r["ok"]:
            row["regs"] = max(row["regs"], r["regs"])
            row["shared"] = max(row["shared"], r["shared"])
            if STRICT_DTYPES.intersection(r["dtypes"]):
                row["spill"] = max(row["spill"], r["spill_stores"] + r["spill_loads"])
    fp32_spill: dict[tuple, int] = {}
    for r in report["results"]:
        if r["ok"] and r["dtypes"] == ["fp32"]:
            key = (r["kernel"], r["cc"])
            fp32_spill[key] = max(fp32_spill.get(key, 0), r["spill_stores"] + r["spill_loads"])
    lines = [f"Triton {report['triton']} ahead-of-time compile check: {len(report['results'])} compiles",
             "| kernel | target | specialisations | max registers | spills bf16/fp16/fp8 (bytes) | fp32 spills "
             "(bytes, reported only) | max shared memory (bytes) / limit | result |",
             "|---|---|---|---|---|---|---|---|"]
    for (kernel, cc), row in sorted(rows.items()):
        result = "ok" if not row["problems"] else "FAIL: " + "; ".join(row["problems"][:2])
        lines.append(f"| {kernel} | sm_{cc} | {row['n']} | {row['regs']} | {row['spill']} | "
                     f"{fp32_spill.get((kernel, cc), '-')} | {row['shared']} / {SMEM_LIMIT[cc]} | {result} |")
    for name in report["unreached"]:
        lines.append(f"| {name} | - | 0 | - | - | - | - | FAIL: no launch reaches it |")
    lines.append("PASS: every kernel compiles for every target without a problem" if report["ok"] else
                 "FAIL: see the rows above")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tools/compile_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities (default: %(default)s)")
    p.add_argument("--fp8-targets", default=",".join(map(str, FP8_TARGETS)), help="default: %(default)s")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="default: %(default)s")
    p.add_argument("--batches", default="1-8", help="batch sizes, e.g. 1,4 or 1-8 (default: %(default)s)")
    p.add_argument("--json", help="write every compile's numbers here")
    p.add_argument("--details", action="store_true", help="one line per specialisation and target")
    a = p.parse_args(argv)
    lo, _, hi = a.batches.partition("-")
    batches = range(int(lo), int(hi) + 1) if hi else [int(b) for b in a.batches.split(",")]
    report = run_check([int(t) for t in a.targets.split(",")], [int(t) for t in a.fp8_targets.split(",")],
                       a.dtypes.split(","), list(batches))
    if a.details:
        for r in sorted(report["results"], key=lambda r: (r["kernel"], r["cc"])):
            numbers = (f"regs {r['regs']:>3} spill {r['spill_stores']}/{r['spill_loads']} shared {r['shared']:>6}"
                       if r["ok"] else "did not compile")
            print(f"{r['kernel']:<16} sm_{r['cc']:<4} {numbers} {r['variant']} {','.join(r['dtypes'])}"
                  + ("  <-- " + "; ".join(r["problems"]) if r["problems"] else ""))
    print(summary_table(report))
    if a.json:
        atomic_write(a.json, json.dumps(report, indent=1, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
