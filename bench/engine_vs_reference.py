"""Our engine against transformers' reference on the same checkpoint and settings.

    python bench/engine_vs_reference.py                 # the 2-core CPU toy config (issue target: >= 2x)
    python bench/engine_vs_reference.py --model PATH    # any checkpoint directory

Both engines generate one 256-token canvas after a 128-token prompt with 16 denoising steps and
adaptive stopping off, so both run exactly 16 denoiser passes. Each engine runs `--repeats` times,
interleaved (ours, reference, ours, ...) so that machine noise hits both alike; medians are
reported with min and max. The reference uses its best CPU setting, experts_implementation=
"grouped_mm". Two figures per engine:
  ms/step       time spent in denoising steps / 16 (the prompt's encoding excluded): for the
                reference, its `_denoising_step` calls; for the kit, its whole denoising loop;
  e2e ms/step   whole generate() time / 16 (REFERENCE.md's definition; includes the prefill);
  tok/s         256 tokens / whole generate() time.
The speed-up (reference ms/step over ours, measured in this run) is printed last.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dgemma_helpers as dg  # noqa: E402
from dgemma_helpers.devices import synchronize  # noqa: E402
from dgemma_helpers.random_checkpoint import make_random_checkpoint  # noqa: E402


def timed(fn, device) -> float:
    synchronize(device)
    t = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (default: a random toy checkpoint made here)")
    p.add_argument("--confident", action="store_true",
                   help="toy checkpoint with wide embeddings: peaked distributions, as a trained model has")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    from transformers import DiffusionGemmaForBlockDiffusion

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_random_checkpoint(Path(tmp) / "toy", preset="toy", canvas_length=256,
                                                    embed_std=1.0 if args.confident else None)
        ours = dg.load_model(path, device=args.device, dtype=args.dtype)
        ref = DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=ours.dtype,
                                                              experts_implementation="grouped_mm")
        ref = ref.to(ours.device).eval()
        device, cfg = ours.device, ours.config
        prompt = torch.randint(3, cfg.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
        new = cfg.canvas_length

        step_time = {"kit": 0.0, "transformers": 0.0}

        def run_ours():
            r = dg.generate(ours, input_ids=prompt, seed=1, max_new_tokens=new, max_denoising_steps=args.steps,
                            confidence_threshold=0)
            assert r.steps_per_canvas == [[args.steps]]
            step_time["kit"] += r.timings.denoise_s

        reference_step = ref._denoising_step

        def timed_reference_step(*a, **k):
            synchronize(device)
            t = time.perf_counter()
            out = reference_step(*a, **k)
            synchronize(device)
            step_time["transformers"] += time.perf_counter() - t
            return out

        ref._denoising_step = timed_reference_step

        def run_ref():
            torch.manual_seed(1)
            with torch.no_grad():
                ref.generate(prompt.to(device), max_new_tokens=new, max_denoising_steps=args.steps,
                             confidence_threshold=None, stability_threshold=None)

        engines = {"kit": run_ours, "transformers": run_ref}
        for fn in engines.values():  # warm-up
            fn()
        total: dict[str, list[float]] = {name: [] for name in engines}
        steps: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, fn in engines.items():
                step_time[name] = 0.0
                total[name].append(timed(fn, device))
                steps[name].append(step_time[name])

    rows = {}
    for name in engines:
        per_step = [1000 * t / args.steps for t in steps[name]]
        med_total = statistics.median(total[name])
        rows[name] = dict(ms_per_step=statistics.median(per_step), min_ms=min(per_step), max_ms=max(per_step),
                          e2e_ms_per_step=1000 * med_total / args.steps, tokens_per_s=new / med_total)
    ratio = rows["transformers"]["ms_per_step"] / rows["kit"]["ms_per_step"]
    info = dict(device=str(device), cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                torch=torch.__version__, dtype=str(ours.dtype), config=f"hidden {cfg.hidden_size}, {cfg.num_layers} "
                f"layers, {cfg.num_experts} experts top-{cfg.top_k_experts}, vocab {cfg.vocab_size}, canvas {new}",
                prompt=args.prompt_len, steps=args.steps, repeats=args.repeats)
    import transformers

    info["transformers"] = transformers.__version__
    print(json.dumps(info))
    e2e = rows["transformers"]["e2e_ms_per_step"] / rows["kit"]["e2e_ms_per_step"]
    print(f"{'engine':<14}{'ms/step':>10}{'min':>9}{'max':>9}{'e2e ms/step':>13}{'tok/s':>9}")
    for name, r in rows.items():
        print(f"{name:<14}{r['ms_per_step']:>10.1f}{r['min_ms']:>9.1f}{r['max_ms']:>9.1f}"
              f"{r['e2e_ms_per_step']:>13.1f}{r['tokens_per_s']:>9.0f}")
    print(f"end-to-end speed-up (generate time, prefill included): {e2e:.2f}x")
    print(f"speed-up of the kit over transformers (ms per denoising step, same run): {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(info=info, results=rows, speedup=ratio, speedup_e2e=e2e), indent=2))


if __name__ == "__main__":
    main()
