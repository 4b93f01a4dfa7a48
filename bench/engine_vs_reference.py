"""Our engine against transformers' reference on the same checkpoint and settings: a thin entry
point over the benchmark harness (dgemma_helpers.bench), which times both the same way.

    python bench/engine_vs_reference.py                 # a random toy checkpoint made here (2-core CPU)
    python bench/engine_vs_reference.py --model PATH    # any checkpoint directory

One 256-token canvas (the checkpoint's canvas) per run with 16 denoising steps and adaptive stopping
off, so both engines run exactly 16 denoiser passes; `--repeats` runs each, interleaved, after a
warm-up. The reference uses its best CPU setting (experts_implementation="grouped_mm"). Printed: ms
per denoising step (the reference's `_denoising_step` calls; the kit's denoising loop), tokens/s of
the whole generate(), and the speed-up of the kit over the reference, measured in this run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dgemma_helpers import bench
from dgemma_helpers.checkpoint import read_config
from dgemma_helpers.train.random_checkpoint import make_random_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (default: a random toy checkpoint made here)")
    p.add_argument("--confident", action="store_true",
                   help="toy checkpoint with wide embeddings: peaked distributions, as a trained model has")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="also write results.json and results.csv into this directory")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_random_checkpoint(Path(tmp) / "toy", preset="toy", canvas_length=256,
                                                    embed_std=1.0 if args.confident else None)
        canvas = read_config(path)[1].canvas_length
        sweep = bench.make_sweep(str(path), engines="kit,transformers", max_new_tokens=str(canvas),
                                 steps=str(args.steps), batch="1", entropy_bounds="0.1", repeats=args.repeats,
                                 warmup=1, reference="transformers", ignore_eos=True, early_stop=False,
                                 interleave=True, device=args.device, dtype=args.dtype)
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
