"""The toy's denoising step part by part, each part timed alone against its arithmetic, and the
alternatives tried for it (BENCHMARKS.md, "The toy's gap, measured again").

    python bench/toy_parts.py            # the markdown table

Each figure is the minimum over many calls in one process (this VM's speed drifts; the minimum is
what the part costs when nothing else is in its way). The toy: hidden 256, 6 layers, 16 experts
top-4, vocab 4,096, a 128-token prompt and a 256-token canvas, float32. A GEMM of this VM's size
ceiling (1024^3) gives the rate every row is read against.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dgemma_helpers as dg  # noqa: E402
from dgemma_helpers.benchmarks.shapes import shape_checkpoint  # noqa: E402
from dgemma_helpers.cache import KVCache  # noqa: E402
from dgemma_helpers.generation import prefill  # noqa: E402
from dgemma_helpers.head import HeadBuffers, denoise_head  # noqa: E402
from dgemma_helpers.packed_experts import PackedExperts  # noqa: E402


def fastest_ms(fn, calls: int = 60) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def sdpa_as_bmm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA's result (scale 1, grouped heads) as two batched GEMMs and a softmax."""
    B, H, n, D = q.shape
    kv = k.shape[1]
    scores = torch.bmm(q.reshape(B * kv, H // kv * n, D), k.reshape(B * kv, -1, D).transpose(1, 2))
    return torch.bmm(torch.softmax(scores, dim=-1), v.reshape(B * kv, -1, D)).view(B, H, n, D)


@torch.inference_mode()
def main() -> None:
    torch.manual_seed(0)
    model = dg.load_model(str(shape_checkpoint("toy")), dtype="float32")
    cache = KVCache(model.config, 1, 384, device=model.device, dtype=model.dtype)
    prefill(model, torch.arange(10, 138)[None], cache)
    canvas, soft = torch.randint(0, model.config.vocab_size, (1, 256)), torch.randn(1, 256, 256) * 0.1
    hidden = model.denoise(canvas, cache, soft)
    buffers = HeadBuffers()
    E = model.embed_tokens.weight
    x, big = torch.randn(256, 256), torch.randn(1024, 1024)
    q_w, k_w, v_w = torch.randn(256, 256), torch.randn(128, 256), torch.randn(128, 256)
    qkv_w, gate_w, up_w = torch.cat([q_w, k_w, v_w]), torch.randn(256, 256), torch.randn(256, 256)
    gate_up_w = torch.cat([gate_w, up_w])
    q, k, v = torch.randn(1, 4, 256, 64), torch.randn(1, 2, 384, 64), torch.randn(1, 2, 384, 64)
    layer = model.layers[0]
    weights, chosen = layer.router(x)
    with torch.inference_mode(False):  # the loaded weights are inference tensors, which have no version
        exact = PackedExperts(layer.experts.gate_up_proj.clone(), layer.experts.down_proj.clone())
    probs = torch.softmax(torch.randn(256, E.shape[0]), dim=-1)
    mm = lambda m, k_, n: 2 * m * k_ * n  # noqa: E731
    rows = [  # what, FLOPs, the call
        ("a 1024 x 1024 x 1024 GEMM (this VM's ceiling)", mm(1024, 1024, 1024), lambda: big @ big),
        ("a [256 x 256] x [256 x 256] projection (`F.linear`)", mm(256, 256, 256), lambda: F.linear(x, q_w)),
        ("the logits GEMM [256 x 256] x [256 x 4,096]", mm(256, 256, 4096), lambda: F.linear(x, E)),
        ("the soft GEMM [256 x 4,096] x [4,096 x 256]", mm(256, 4096, 256), lambda: probs @ E),
        ("q, k, v: three `F.linear` calls", mm(256, 256, 512),
         lambda: (F.linear(x, q_w), F.linear(x, k_w), F.linear(x, v_w))),
        ("q, k, v: one [256 -> 512] call", mm(256, 256, 512), lambda: F.linear(x, qkv_w)),
        ("gate, up: two calls", mm(256, 256, 512), lambda: (F.linear(x, gate_w), F.linear(x, up_w))),
        ("gate, up: one call", mm(256, 256, 512), lambda: F.linear(x, gate_up_w)),
        ("SDPA, sliding layer (4 heads x 64, 384 keys)", 2 * mm(4 * 256, 64, 384),
         lambda: F.scaled_dot_product_attention(q, k, v, scale=1.0, enable_gqa=True)),
        ("the same as two bmm and a softmax", 2 * mm(4 * 256, 64, 384), lambda: sdpa_as_bmm(q, k, v)),
        ("one layer's experts, padded bmm (the kit's)", None, lambda: layer.experts(x, weights, chosen)),
        ("one layer's experts, exact-size prepacked GEMMs per expert (packed_experts.py)", None,
         lambda: exact(x, weights, chosen)),
        ("the kit's denoiser pass (`model.denoise`, 6 layers)", None, lambda: model.denoise(canvas, cache, soft)),
        ("the kit's head (`denoise_head`)", None, lambda: denoise_head(model, hidden, 1.0, buffers=buffers)),
    ]
    print(f"toy parts, float32, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| what | FLOPs | time alone, ms | GFLOP/s |\n|---|---:|---:|---:|")
    for what, flops, fn in rows:
        ms = fastest_ms(fn, 10 if flops and flops > 10**9 else 60)
        rate = f"{flops / ms / 1e6:.0f}" if flops else ""
        print(f"| {what} | {f'{flops / 1e6:,.0f} M' if flops else ''} | {ms:.2f} | {rate} |")


if __name__ == "__main__":
    main()
