"""What one denoising step of the fast path costs at the official shape, from FLOPs and bytes.

    python bench/step_cost.py            # the markdown tables of BENCHMARKS.md

Computed, not measured: the official text config (30 layers, hidden 2,816, 128 experts top-8,
vocab 262,144), bf16 weights, a 128-token prompt, canvas 256, at batch 1, 4 and 8, on an H200 and
an RTX Pro 6000. Per step the fast path reads every weight once (at 256 tokens x top-8 every one
of the 128 experts is hit), the KV cache, and, in the fused head (kernels/denoise_head.py):
  logits kernel   the embedding once (the programs that share a vocabulary tile run together)
  soft kernel     the chunk of the embedding again, unless it is still in L2, and the chunk's
                  probabilities p [N, chunk] once per 64 hidden columns (44 sweeps), unless p
                  stays in L2. With the old 16K-token chunks the embedding chunk (92 MB) never
                  stays, and p (8 MB per batch row) stops staying at batch 4 on an H200; with
                  chunks sized to half the L2 (kernels/denoise_head.py tiles_per_chunk) both stay.
The floor is max(FLOPs / peak, bytes / bandwidth). Device figures: H200 4.10 TB/s (our measured
device-to-device copy) and 989 TFLOP/s bf16 dense, L2 50 MB; RTX Pro 6000 Blackwell 1.79 TB/s and
about 500 TFLOP/s bf16 dense (NVIDIA's 4,000 FP4 AI TOPS are sparse FP4: an eighth of that), L2
128 MB.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dgemma_helpers.config import ModelConfig  # noqa: E402
from dgemma_kernels.denoise_head import tiles_per_chunk  # noqa: E402

ITEM = 2  # bf16
PROMPT = 128
OLD_CHUNK = 16_384
BLOCK = 64


@dataclass(frozen=True)
class Device:
    name: str
    bandwidth: float  # bytes/s
    flops: float  # bf16 dense FLOP/s
    l2: int  # bytes


DEVICES = [Device("H200", 4.10e12, 989e12, 50 * 2**20), Device("RTX Pro 6000", 1.79e12, 500e12, 128 * 2**20)]


def layer_costs(c: ModelConfig, tokens: int, keys: int) -> tuple[float, float]:
    """FLOPs and weight bytes of the 30 layers and the self-conditioning block for `tokens` positions
    attending over `keys` slots each."""
    H, flops, weights = c.hidden_size, 0.0, 0.0
    for layer in range(c.num_layers):
        q, kv = c.num_heads * c.head_dim(layer), c.kv_heads(layer) * c.head_dim(layer)
        proj = H * (q + kv + (kv if c.is_sliding(layer) else 0) + q)  # q, k, (v), o
        scores = 2 * c.num_heads * c.head_dim(layer) * keys  # QK and PV per query
        dense = 3 * H * c.intermediate_size
        router = H * c.num_experts
        expert = 3 * H * c.moe_intermediate_size
        flops += 2 * tokens * (proj + dense + router + c.top_k_experts * expert) + 2 * tokens * scores
        weights += (proj + dense + router + c.num_experts * expert) * ITEM
    selfcond = 3 * H * c.intermediate_size
    return flops + 2 * tokens * selfcond, weights + selfcond * ITEM


def kv_bytes(c: ModelConfig, batch: int, keys: int) -> float:
    """The cache read per step: sliding layers' keys and values, full layers' values (their keys are
    rebuilt from them)."""
    per_slot = sum((2 if c.is_sliding(i) else 1) * c.kv_heads(i) * c.head_dim(i) for i in range(c.num_layers))
    return batch * keys * per_slot * ITEM


def head_bytes(c: ModelConfig, N: int, chunk: int, l2: int) -> tuple[float, int]:
    """Bytes the fused head reads per step with `chunk`-token chunks, and its full passes over the
    embedding."""
    V, H = c.vocab_size, c.hidden_size
    embed = V * H * ITEM
    passes = 1 if (chunk * H + N * chunk + N * H) * ITEM <= l2 // 2 else 2  # the E chunk still in L2?
    p_reads = 1 if N * chunk * ITEM <= l2 // 2 else H // BLOCK  # the soft kernel's column programs each sweep p
    p_bytes = N * V * ITEM * (1 + p_reads)  # written by the logits kernel, read by the soft kernel
    return passes * embed + p_bytes, passes


def rows(c: ModelConfig = ModelConfig()) -> list[dict]:
    out = []
    for device in DEVICES:
        for batch in (1, 4, 8):
            N, keys = batch * c.canvas_length, PROMPT + c.canvas_length
            layer_flops, weights = layer_costs(c, N, keys)
            head_flops = 2 * 2 * N * c.vocab_size * c.hidden_size
            flops = layer_flops + head_flops
            base = weights + kv_bytes(c, batch, keys)
            new_chunk = tiles_per_chunk(N, c.hidden_size, ITEM, BLOCK, device.l2) * BLOCK
            old_head, old_passes = head_bytes(c, N, OLD_CHUNK, device.l2)
            new_head, new_passes = head_bytes(c, N, new_chunk, device.l2)
            floor = lambda b: 1e3 * max(flops / device.flops, b / device.bandwidth)  # noqa: E731
            out.append(dict(device=device.name, batch=batch, tflop=flops / 1e12, head_tflop=head_flops / 1e12,
                            weights_gb=base / 1e9, old_head_gb=old_head / 1e9, old_passes=old_passes,
                            new_head_gb=new_head / 1e9, new_passes=new_passes, new_chunk=new_chunk,
                            compute_ms=1e3 * flops / device.flops, old_floor_ms=floor(base + old_head),
                            new_floor_ms=floor(base + new_head)))
    return out


def table(rs: list[dict]) -> str:
    lines = ["| device | batch | TFLOP per step (head) | weights + KV read, GB | head reads, 16K chunks: GB (embedding passes) "
             "| head reads, L2-sized chunks | compute time, ms | floor, 16K chunks, ms | floor, L2-sized chunks, ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rs:
        lines.append(f"| {r['device']} | {r['batch']} | {r['tflop']:.2f} ({r['head_tflop']:.2f}) | {r['weights_gb']:.1f} | "
                     f"{r['old_head_gb']:.1f} ({r['old_passes']}) | {r['new_head_gb']:.1f} ({r['new_passes']}; "
                     f"{r['new_chunk']:,}-token chunks) | {r['compute_ms']:.1f} | {r['old_floor_ms']:.1f} | "
                     f"{r['new_floor_ms']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(rows()))
