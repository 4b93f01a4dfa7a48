"""Long contexts: what the KV cache costs, computed for the official config and measured on a small one.

    python bench/long_context.py                     # CPU: small config at 32K / 128K / 256K tokens
    python bench/long_context.py --device cuda --dtype bfloat16   # the same on a GPU (bench/gpu_session.sh)

Computed: KV bytes per token and the cache at 32K / 128K / 256K for the published config (and what
it would be if the full-attention layers kept keys and values both). Measured: for each length a
fresh process loads a small random checkpoint, encodes a prompt of that length with the kit's
chunked prefill and runs one denoising round; it reports the cache's real size, the peak memory of
that work (CPU: resident set; CUDA: the allocator's peak) against dg.estimate_memory, and the time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import dgemma_helpers as dg
from dgemma_helpers.benchmarks.measure import resident_now, resident_peak
from dgemma_helpers.generation import prefill
from dgemma_helpers.memory import cache_capacity
from dgemma_helpers.train.random_checkpoint import make_random_checkpoint

LENGTHS = (32_768, 131_072, 262_144)


def computed(dtype: torch.dtype) -> list[dict]:
    config = dg.ModelConfig()  # the published text config
    per_token = dg.KVCache.bytes_per_token(config, dtype)
    rows = []
    for n in LENGTHS:
        prompt = n - config.canvas_length  # room for one canvas inside the context
        est = dg.estimate_memory(config, prompt, dtype=dtype)
        both = est.kv_cache + per_token * est.context  # full layers keeping their keys as well
        rows.append(dict(tokens=n, kv_bytes_per_token=per_token, kv_cache=est.kv_cache, kv_cache_keys_and_values=both,
                         working=est.working))
    return rows


def child(checkpoint: str, length: int, device: str, dtype: str) -> dict:
    torch.set_grad_enabled(False)
    model = dg.load_model(checkpoint, device=device, dtype=dtype)
    config, dev = model.config, model.device
    L = config.canvas_length
    prompt = length - L
    ids = torch.randint(3, config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0)).to(dev)
    canvas = torch.randint(0, config.vocab_size, (1, L), generator=torch.Generator().manual_seed(1)).to(dev)
    est = dg.estimate_memory(model, prompt, max_new_tokens=L, probabilities=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        start = resident_now()
        resident_peak(reset=True)
    t0 = time.perf_counter()
    cache = dg.KVCache(config, 1, cache_capacity(config, prompt, L), device=dev, dtype=model.dtype)
    prefill(model, ids, cache)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.logits(model.denoise(canvas, cache))
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
    else:
        peak = resident_peak() - start
    return dict(tokens=length, cache_nbytes=cache.nbytes(), estimated_cache=est.kv_cache, peak=peak,
                estimated_working=est.working, prefill_s=prefill_s, denoise_s=time.perf_counter() - t0,
                kv_bytes_per_token=dg.KVCache.bytes_per_token(config, model.dtype))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=2, metavar=("CHECKPOINT", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.device, args.dtype)))
        return

    print("official config (computed, bfloat16; working memory as on a CUDA GPU):")
    print(f"{'context':>9} {'KV B/token':>11} {'KV cache':>10} {'if K and V':>11} {'working':>9}")
    official = computed(torch.bfloat16)
    for r in official:
        print(f"{r['tokens']:>9,} {r['kv_bytes_per_token']:>11,} {r['kv_cache'] / 2**30:>8.2f} G "
              f"{r['kv_cache_keys_and_values'] / 2**30:>9.2f} G {r['working'] / 2**30:>7.2f} G")
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_random_checkpoint(Path(tmp) / "long", preset="test", max_position_embeddings=max(args.lengths),
                                      canvas_length=256, tokenizer=False)
        print(f"\nsmall config (measured, {args.device}, {args.dtype}; the test preset, 6 layers, window 16):")
        print(f"{'context':>9} {'KV cache':>10} {'estimated':>10} {'peak':>9} {'estimated':>10} {'prefill':>9} "
              f"{'1 round':>8}")
        for n in args.lengths:
            out = subprocess.run([sys.executable, __file__, "--device", args.device, "--dtype", args.dtype,
                                  "--child", str(ckpt), str(n)], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            measured.append(r)
            print(f"{n:>9,} {r['cache_nbytes'] / 2**20:>8.1f} M {r['estimated_cache'] / 2**20:>8.1f} M "
                  f"{r['peak'] / 2**20:>7.0f} M {r['estimated_working'] / 2**20:>8.0f} M {r['prefill_s']:>8.1f}s "
                  f"{r['denoise_s']:>7.2f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(official=official, measured=measured, device=args.device,
                                                   dtype=args.dtype), indent=2))


if __name__ == "__main__":
    main()
