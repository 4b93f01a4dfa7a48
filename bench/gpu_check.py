"""Correctness of every Triton kernel and of the optimised (CUDA-graph) step, on the GPU.

    python bench/gpu_check.py                 # GPU: real shapes, bf16 (~1 minute on an H100)
    python bench/gpu_check.py --cpu           # the same checks under TRITON_INTERPRET=1, fp32, small shapes

Each kernel runs on fresh random inputs with its outputs (and scratch buffers) poisoned beforehand
(NaN / -1), against its PyTorch reference in kernels/*_ref.py; the relative error must be within
the dtype's tolerance. Then the optimised step: the fused-kernel denoiser pass, captured in a CUDA
graph through the static cache view, against model.denoise's logits, and one whole graph-replayed
round against generation.TorchStep. Prints one line per check and PASS/FAIL last; --json writes
the numbers. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import sys

import torch

from dgemma_helpers.benchmarks import gpu


class Checks:
    """What every check shares (device, dtype, tolerance, shapes, a seeded generator) and the results."""

    def __init__(self, cpu: bool) -> None:
        self.cpu, self.dev = cpu, "cpu" if cpu else "cuda"
        self.dtype = torch.float32 if cpu else torch.bfloat16
        self.tol = 1e-5 if cpu else 2e-2  # norm-wise; bf16 rounding alone gives ~3e-3
        self.hf = gpu.CPU_HF if cpu else gpu.REAL_HF
        self.canvas = 32 if cpu else 256
        self.g = torch.Generator(self.dev).manual_seed(0)
        self.results: list[dict] = []

    def check(self, name: str, err: float, limit: float | None = None, **extra) -> None:
        limit = self.tol if limit is None else limit
        ok = err <= limit
        self.results.append(dict(check=name, rel_err=err, limit=limit, ok=ok, **extra))
        print(f"{'ok  ' if ok else 'FAIL'} {name:<44} rel err {err:.2e} (limit {limit:.0e})"
              + "".join(f"  {k} {v}" for k, v in extra.items()), flush=True)

    def randn(self, *shape, scale=1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.g, device=self.dev) * scale).to(self.dtype)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="interpreter, fp32, small shapes")
    p.add_argument("--layers", type=int, default=4, help="layers of the real config for the step check")
    p.add_argument("--json")
    args = p.parse_args()
    if args.cpu:
        gpu.setup_cpu_interpreter()
    elif not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu for the interpreter check")
        return 2
    c = Checks(args.cpu)
    check_rmsnorm(c)
    check_moe(c)
    check_head(c)
    step_check(args, c.dev, c.dtype, c.hf, c.canvas, c.tol, c.check)  # the optimised step vs the PyTorch path
    failed = [r["check"] for r in c.results if not r["ok"]]
    gpu.write_json(args.json, dict(env=gpu.environment(c.dev), dtype=str(c.dtype), results=c.results))
    print(f"{'PASS' if not failed else 'FAIL'}: {len(c.results) - len(failed)}/{len(c.results)} checks"
          + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


# The kernel modules are imported in the checks, after main() chose the interpreter or the GPU: a
# kernel module is decorated for one or the other when it is imported.
def check_rmsnorm(c: Checks) -> None:
    """RMSNorm plain, + residual, + residual and scale."""
    from dgemma_kernels.rmsnorm import rmsnorm
    from dgemma_kernels.rmsnorm_ref import reference_rmsnorm

    H = c.hf["hidden_size"]
    x, res, w, s = c.randn(c.canvas, H), c.randn(c.canvas, H), 1 + c.randn(H, scale=0.2), c.randn(1) + 1
    for kw in ({}, dict(residual=res), dict(residual=res, scale=s)):
        with gpu.poisoned_outputs():
            out = rmsnorm(x, w, 1e-6, **kw)
        c.check(f"rmsnorm {'+'.join(kw) or 'plain'}", gpu.rel_err(out, reference_rmsnorm(x, w, 1e-6, **kw)))


def check_moe(c: Checks) -> None:
    """The MoE kernels on the denoiser's canvas and an encoder chunk, bf16 and fp8."""
    from dgemma_helpers.fast.quant import quantize_fp8
    from dgemma_kernels.moe import moe
    from dgemma_kernels.moe_ref import reference_moe

    H, E, K, I = (c.hf[k] for k in ("hidden_size", "num_experts", "top_k_experts", "moe_intermediate_size"))
    gate_up, down = c.randn(E, 2 * I, H, scale=0.02), c.randn(E, H, I, scale=0.02)
    fp8_ok = c.cpu or torch.cuda.get_device_capability() >= (8, 9)
    for tokens in ([c.canvas, 4 * c.canvas] if c.cpu else [c.canvas, 2048]):
        xs = c.randn(tokens, H)
        experts = torch.rand(tokens, E, generator=c.g, device=c.dev).topk(K, dim=-1).indices
        weights = torch.rand(tokens, K, generator=c.g, device=c.dev)
        with gpu.poisoned_outputs():
            out = moe(xs, weights, experts, gate_up, down)
        c.check(f"moe {tokens} tokens", gpu.rel_err(out, reference_moe(xs, weights, experts, gate_up, down)))
        if fp8_ok:
            (gq, gs), (dq, ds) = quantize_fp8(gate_up), quantize_fp8(down)
            with gpu.poisoned_outputs():
                out8 = moe(xs, weights, experts, gq, dq, gs, ds)
            ref8 = reference_moe(xs, weights, experts, gq, dq, gs, ds)
            c.check(f"moe fp8 {tokens} tokens vs dequantised ref", gpu.rel_err(out8, ref8))
            c.check(f"moe fp8 {tokens} tokens vs unquantised", gpu.rel_err(out8, out), limit=0.1)


def check_head(c: Checks) -> None:
    """The fused denoise head against its reference at two temperatures."""
    from dgemma_kernels.denoise_head import denoise_head
    from dgemma_kernels.denoise_head_ref import reference_denoise_head

    H, V = c.hf["hidden_size"], c.hf["vocab_size"]
    embed = c.randn(V, H, scale=0.02)
    scale = torch.tensor(H ** 0.5, dtype=c.dtype, device=c.dev)
    hidden = c.randn(c.canvas, H, scale=1.0 if c.cpu else 50.0)  # final norm outputs are O(1..100)
    for temperature in (0.8, 0.4):
        t = torch.tensor([temperature], device=c.dev)
        key = torch.tensor([123456789], device=c.dev)
        with gpu.poisoned_outputs():
            got = denoise_head(hidden, embed, t, key, 30.0, scale)
        ref = reference_denoise_head(hidden, embed, t, key, 30.0, scale)
        agree = (got.argmax == ref.argmax).float().mean().item()
        sample_agree = (got.sample == ref.sample).float().mean().item()
        # bf16 GEMMs round differently: only near-ties may flip (tolerance 0.1% of positions + 1)
        c.check(f"head T={temperature} entropy", gpu.rel_err(got.entropy, ref.entropy), argmax_agree=round(agree, 4),
                sample_agree=round(sample_agree, 4))
        c.check(f"head T={temperature} soft embedding", gpu.rel_err(got.soft, ref.soft))
        c.check(f"head T={temperature} argmax/sample disagreement", 1 - min(agree, sample_agree),
                limit=0 if c.cpu else 1.0 / c.canvas + 1e-3)


def step_check(args, dev: str, dtype: torch.dtype, hf: dict, canvas: int, tol: float, check) -> None:
    import dgemma_helpers as dg
    import dgemma_kernels
    from dgemma_helpers.fast import FastStep, StaticRound
    from dgemma_helpers.generation import CanvasState, TorchStep
    from dgemma_helpers.rng import CounterRNG

    config = gpu.model_config(hf, canvas, layers=None if args.cpu else args.layers)
    model = gpu.random_model(config, dev, dtype)
    settings = dg.generation.resolve_settings(model, dict(confidence_threshold=0.0))
    B, P = 2, 24 if args.cpu else 128
    g = torch.Generator(dev).manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (B, P), generator=g, device=dev)
    cache = dg.KVCache(config, B, P + canvas, device=dev, dtype=dtype)
    with torch.inference_mode():
        model.encode(ids, cache)
        noise = torch.randint(0, config.vocab_size, (B, canvas), generator=g, device=dev)
        soft = model.soft_embedding(model.logits(model.denoise(noise, cache)) / 0.7)
        ref_logits = model.logits(model.denoise(noise, cache, soft))

        def fresh_state():
            return CanvasState(canvas=noise, argmax=noise, soft=soft, done=torch.zeros(B, dtype=torch.bool, device=dev))

        # model.denoise itself over the static cache, the fused kernels on: a CUDA graph of it on a
        # GPU (what the fast round captures), eager on a CPU.
        buffers = StaticRound(model, settings.stability_threshold, cache)
        buffers.load(fresh_state())

        def fused_denoise():
            with dgemma_kernels.fused():
                return model.denoise(buffers.canvas, buffers.cache, buffers.soft)

        if dev == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fused_denoise()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                hidden = fused_denoise()
            hidden.fill_(float("nan"))  # poisoned: the replay must write every element
            graph.replay()
        else:
            hidden = fused_denoise()
        check("step: fused denoiser logits vs model.denoise", gpu.rel_err(model.logits(hidden), ref_logits),
              limit=tol if args.cpu else 3e-2)

        # one whole round, graph-replayed, against the PyTorch step on the same state
        rng = CounterRNG(5, B, dev)
        torch_state, fast_state = fresh_state(), fresh_state()
        for step, state in ((TorchStep(model, settings, rng), torch_state), (FastStep(model, settings, rng), fast_state)):
            step.cache = cache
            step(state, 0, 3)
        agree = (fast_state.argmax == torch_state.argmax).float().mean().item()
        check("step: round argmax disagreement", 1 - agree, limit=0 if args.cpu else 0.01)
        check("step: round soft embedding", gpu.rel_err(fast_state.soft, torch_state.head.soft_input(model)),
              limit=tol if args.cpu else 3e-2)


if __name__ == "__main__":
    sys.exit(main())
