"""`python -m dgemma_helpers bench` (the sweep in this process: tables, and with --out the results
and plots) and `report` (notebook 05 through papermill into a report directory). Both check every
flag before anything is loaded."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from ..model_paths import find_model, model_candidates
from ..plots.benchmark import save_plots
from ..signals import exit_code
from .engines import ENGINES
from .grid import Sweep, flag_list, parse_list
from .harness import run_benchmark
from .notebook import default_report_dir, make_report
from .report import build_report, engines_table, machine_summary, results_table, shown, write_results
from .shapes import SHAPES, shape_checkpoint

_DEFAULTS = Sweep()


def make_sweep(model: str = _DEFAULTS.model, engines: str | Sequence[str] = ",".join(_DEFAULTS.engines),
               max_new_tokens: str | Sequence[int] = _DEFAULTS.max_new_tokens,
               steps: str | Sequence[int] = _DEFAULTS.steps, batch: str | Sequence[int] = _DEFAULTS.batch,
               entropy_bounds: str | Sequence[float] = _DEFAULTS.entropy_bounds, **options: Any) -> Sweep:
    """A checked Sweep from flag-style values ("64,128" or [64, 128])."""
    known = {f.name for f in dataclasses.fields(Sweep)}
    unknown = set(options) - known
    if unknown:
        raise InputError(f"unknown benchmark option(s) {sorted(unknown)}; valid: {sorted(known)}.")
    if isinstance(options.get("vllm_args"), str) or options.get("vllm_args", 0) is None:
        options["vllm_args"] = _json_object(options["vllm_args"] or "{}", "vllm-args")
    names = [e.strip() for e in engines.split(",") if e.strip()] if isinstance(engines, str) else list(engines)
    # Relative model paths as the notebooks find them (here, the parents, the kit's checkout).
    sweep = Sweep(model=str(find_model(model)), engines=names,
                  max_new_tokens=parse_list(max_new_tokens, int, "max-new-tokens"),
                  steps=parse_list(steps, int, "steps"), batch=parse_list(batch, int, "batch"),
                  entropy_bounds=parse_list(entropy_bounds, float, "entropy-bounds"), **options)
    if sweep.ar_model:  # looked up the same way, but the sweep's own check names a missing one
        sweep.ar_model = str(next((c for c in model_candidates(sweep.ar_model) if c.exists()), sweep.ar_model))
    return sweep.validate(list(ENGINES))


def _json_object(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--{flag} {text!r} is not JSON ({e}): give an object, e.g. "
                         f"--{flag} '{{\"tensor_parallel_size\": 2}}'.") from None
    if not isinstance(value, dict):
        raise InputError(f"--{flag} {text!r} is not a JSON object: give one, e.g. --{flag} '{{\"max_num_seqs\": 4}}'.")
    return value


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    d = _DEFAULTS
    p.add_argument("--model", default=d.model, help=f"diffusion checkpoint directory or Hugging Face Hub id (default {d.model})")
    p.add_argument("--shape", choices=sorted(SHAPES),
                   help="a built-in random checkpoint instead of --model, built once and cached: official-2layer is "
                        "the official width cut to two layers (4.5 GB), toy the 2-core CPU toy")
    p.add_argument("--engines", default=",".join(d.engines),
                   help=f"comma-separated, from {', '.join(ENGINES)} (default: all; unavailable ones are skipped)")
    grid = {"max_new_tokens": "output lengths, e.g. 256,1024", "steps": "max denoising steps per canvas, e.g. 16,48",
            "batch": "batch sizes, e.g. 1,4", "entropy_bounds": "entropy bounds, e.g. 0.1,1"}
    for name, what in grid.items():
        p.add_argument("--" + name.replace("_", "-"), default=flag_list(getattr(d, name)),
                       help=f"{what} (default %(default)s)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="timed runs per engine and setting (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed runs first (default %(default)s)")
    p.add_argument("--reference", default=d.reference, help="engine the speed-ups are measured against")
    p.add_argument("--baseline", default=d.baseline, help="autoregressive engine diffusion is compared with")
    p.add_argument("--ar-model", help="an autoregressive checkpoint (e.g. Gemma 4) for the ar-hf engine")
    p.add_argument("--respect-eos", action="store_true", help="stop rows at EOS (default: always write max-new-tokens)")
    p.add_argument("--no-early-stop", action="store_true", help="run every denoising step (adaptive stopping off)")
    p.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=None,
                   help="alternate engines per repeat (default: when all their weights fit in memory)")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--vllm-args", default="{}",
                   help='vLLM engine arguments as JSON for the vllm engines, e.g. \'{"tensor_parallel_size": 2}\'')


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    model = args.model
    if getattr(args, "shape", None):
        if args.model != _DEFAULTS.model:
            raise InputError(f"--shape {args.shape} and --model {args.model} both name the checkpoint: give one.")
        model = str(shape_checkpoint(args.shape))
    return make_sweep(model, args.engines, args.max_new_tokens, args.steps, args.batch, args.entropy_bounds,
                      repeats=args.repeats, warmup=args.warmup, reference=args.reference, baseline=args.baseline,
                      ar_model=args.ar_model, ignore_eos=not args.respect_eos, early_stop=not args.no_early_stop,
                      interleave=args.interleave, device=args.device, dtype=args.dtype, threads=args.threads,
                      seed=args.seed, vllm_args=args.vllm_args)


def run_bench(args: argparse.Namespace) -> None:
    sweep = sweep_from_args(args)
    results = run_benchmark(sweep)
    print(machine_summary(results), engines_table(results), results_table(results), sep="\n\n")
    if args.out:
        json_path, csv_path = write_results(results, args.out)
        save_plots(results, args.out)
        print(f"\nwrote {json_path}, {csv_path} and the plots in {args.out}", file=sys.stderr)


def run_report(args: argparse.Namespace) -> None:
    out = args.out or default_report_dir()
    try:
        sweep = sweep_from_args(args)
        # Built in a temporary directory, moved to `out` only when complete (a stop signal leaves nothing).
        paths = build_report(out, lambda tmp: make_report(sweep, tmp, notebook=args.notebook))
    except KeyboardInterrupt as e:
        print(f"interrupted; nothing was written to {shown(out)}", file=sys.stderr)
        raise SystemExit(exit_code(e)) from None
    print(f"report written to {paths['dir']}:")
    for name, path in paths.items():
        if name != "dir":
            print(f"  {path}")
