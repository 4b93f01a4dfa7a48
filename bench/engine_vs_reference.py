"""Our engine against transformers' reference on the same checkpoint and settings: a thin entry
point over the benchmark harness (dgemma_helpers.benchmarks), which times both the same way.

    python bench/engine_vs_reference.py                                     # the toy shape (2-core CPU)
    python bench/engine_vs_reference.py --shape official-2layer --dtype bfloat16   # the official width
    python bench/engine_vs_reference.py --model PATH                        # any checkpoint directory

Shapes are random checkpoints built once by transformers and cached (dgemma_helpers/benchmarks/shapes.py):
`toy` (hidden 256, 16 experts, vocab 4,096) and `official-2layer` (the official width, one sliding
and one full-attention layer; 4.5 GB on disk, about 15 GB of memory with both engines loaded).
One 256-token canvas (the checkpoint's canvas) per run with `--steps` denoising steps (16 on the toy,
4 at the official width) and adaptive stopping off, so both engines run exactly that many denoiser
passes; `--repeats` runs each after a warm-up, the two engines interleaved where both fit in memory
at once (at the official width in float32 they run one after the other). The reference uses its best CPU setting
(experts_implementation="grouped_mm"). Printed: ms per denoising step (the reference's
`_denoising_step` calls; the kit's denoising loop), tokens/s of the whole generate(), and the
speed-up of the kit over the reference, measured in this run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dgemma_helpers import benchmarks as bench
from dgemma_helpers.benchmarks.shapes import SHAPES, shape_checkpoint
from dgemma_helpers.checkpoint import read_config
from dgemma_helpers.train.random_checkpoint import make_random_checkpoint

# (steps, repeats) per shape: a step at the official width takes seconds on a 2-core CPU.
DEFAULTS = {"toy": (16, 5), "official-2layer": (4, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--shape", choices=sorted(SHAPES), default="toy",
                       help="a built-in random checkpoint, built once and cached (default: %(default)s)")
    where.add_argument("--model", help="a checkpoint directory instead")
    p.add_argument("--confident", action="store_true",
                   help="toy checkpoint with wide embeddings: peaked distributions, as a trained model has")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--steps", type=int, help="denoising steps per run (default: 16 on the toy, 4 otherwise)")
    p.add_argument("--repeats", type=int, help="timed runs per engine (default: 5 on the toy, 3 otherwise)")
    p.add_argument("--out", help="also write results.json and results.csv into this directory")
    args = p.parse_args()

    steps, repeats = DEFAULTS.get(args.shape if not args.model else "", (4, 3))
    steps, repeats = args.steps or steps, args.repeats or repeats
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            path = args.model
        elif args.confident:
            path = make_random_checkpoint(Path(tmp) / "toy", preset="toy", canvas_length=256, embed_std=1.0)
        else:
            path = shape_checkpoint(args.shape)
        canvas = read_config(path)[1].canvas_length
        sweep = bench.make_sweep(str(path), engines="kit,transformers", max_new_tokens=str(canvas),
                                 steps=str(steps), batch="1", entropy_bounds="0.1", repeats=repeats,
                                 warmup=1, reference="transformers", ignore_eos=True, early_stop=False,
                                 interleave=None, device=args.device, dtype=args.dtype)
        results = bench.run_benchmark(sweep)
    print(bench.machine_summary(results))
    print(bench.results_table(results))
    kit = next(r for r in results["rows"] if r["engine"] == "kit" and r["status"] == "ok")
    print(f"speed-up of the kit over transformers (ms per denoising step, same run): "
          f"{kit['step_speedup_vs_reference']:.2f}x; end to end (tokens/s): {kit['speedup_vs_reference']:.2f}x")
    if args.out:
        bench.write_results(results, args.out)


if __name__ == "__main__":
    main()
