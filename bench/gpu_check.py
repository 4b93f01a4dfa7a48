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

from dgemma_helpers.bench import gpu


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
    # After the interpreter switch: a kernel module is decorated for the interpreter or the GPU on import.
    from dgemma_kernels.denoise_head import denoise_head
    from dgemma_kernels.denoise_head_ref import reference_denoise_head
    from dgemma_kernels.moe import moe
    from dgemma_kernels.moe_ref import reference_moe
    from dgemma_kernels.rmsnorm import rmsnorm
    from dgemma_kernels.rmsnorm_ref import reference_rmsnorm

    dev = "cpu" if args.cpu else "cuda"
    dtype = torch.float32 if args.cpu else torch.bfloat16
    tol = 1e-5 if args.cpu else 2e-2  # norm-wise; bf16 rounding alone gives ~3e-3
    hf = gpu.CPU_HF if args.cpu else gpu.REAL_HF
    H, V, E, K = hf["hidden_size"], hf["vocab_size"], hf["num_experts"], hf["top_k_experts"]
    I = hf["moe_intermediate_size"]
    canvas = 32 if args.cpu else 256
    g = torch.Generator(dev).manual_seed(0)
    results: list[dict] = []

    def check(name: str, err: float, limit: float = tol, **extra) -> None:
        ok = err <= limit
        results.append(dict(check=name, rel_err=err, limit=limit, ok=ok, **extra))
        print(f"{'ok  ' if ok else 'FAIL'} {name:<44} rel err {err:.2e} (limit {limit:.0e})"
              + "".join(f"  {k} {v}" for k, v in extra.items()), flush=True)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(dtype)

    # ---- RMSNorm (+ residual, + scale) ------------------------------------------------------------
    x, res, w, s = randn(canvas, H), randn(canvas, H), 1 + randn(H, scale=0.2), randn(1) + 1
    for kw in ({}, dict(residual=res), dict(residual=res, scale=s)):
        with gpu.poisoned_outputs():
            out = rmsnorm(x, w, 1e-6, **kw)
        check(f"rmsnorm {'+'.join(kw) or 'plain'}", gpu.rel_err(out, reference_rmsnorm(x, w, 1e-6, **kw)))

    # ---- MoE: the denoiser's canvas and an encoder chunk ----------------------------------------
    gate_up, down = randn(E, 2 * I, H, scale=0.02), randn(E, H, I, scale=0.02)
    fp8_ok = args.cpu or torch.cuda.get_device_capability() >= (8, 9)
    for tokens in ([canvas, 4 * canvas] if args.cpu else [canvas, 2048]):
        xs = randn(tokens, H)
        experts = torch.rand(tokens, E, generator=g, device=dev).topk(K, dim=-1).indices
        weights = torch.rand(tokens, K, generator=g, device=dev)
        with gpu.poisoned_outputs():
            out = moe(xs, weights, experts, gate_up, down)
        check(f"moe {tokens} tokens", gpu.rel_err(out, reference_moe(xs, weights, experts, gate_up, down)))
        if fp8_ok:
            from dgemma_helpers.fast.quant import quantize_fp8

            (gq, gs), (dq, ds) = quantize_fp8(gate_up), quantize_fp8(down)
            with gpu.poisoned_outputs():
                out8 = moe(xs, weights, experts, gq, dq, gs, ds)
            ref8 = reference_moe(xs, weights, experts, gq, dq, gs, ds)
            check(f"moe fp8 {tokens} tokens vs dequantised ref", gpu.rel_err(out8, ref8))
            check(f"moe fp8 {tokens} tokens vs unquantised", gpu.rel_err(out8, out), limit=0.1)
    del gate_up, down

    # ---- the fused denoise head -------------------------------------------------------------------
    embed = randn(V, H, scale=0.02)
    scale = torch.tensor(H ** 0.5, dtype=dtype, device=dev)
    hidden = randn(canvas, H, scale=1.0 if args.cpu else 50.0)  # final norm outputs are O(1..100)
    for temperature in (0.8, 0.4):
        t = torch.tensor([temperature], device=dev)
        key = torch.tensor([123456789], device=dev)
        with gpu.poisoned_outputs():
            got = denoise_head(hidden, embed, t, key, 30.0, scale)
        ref = reference_denoise_head(hidden, embed, t, key, 30.0, scale)
        agree = (got.argmax == ref.argmax).float().mean().item()
        sample_agree = (got.sample == ref.sample).float().mean().item()
        # bf16 GEMMs round differently: only near-ties may flip (tolerance 0.1% of positions + 1)
        check(f"head T={temperature} entropy", gpu.rel_err(got.entropy, ref.entropy), argmax_agree=round(agree, 4),
              sample_agree=round(sample_agree, 4))
        check(f"head T={temperature} soft embedding", gpu.rel_err(got.soft, ref.soft))
        check(f"head T={temperature} argmax/sample disagreement", 1 - min(agree, sample_agree),
              limit=0 if args.cpu else 1.0 / canvas + 1e-3)
    del embed

    # ---- the optimised step vs the PyTorch path ---------------------------------------------------
    step_check(args, dev, dtype, hf, canvas, tol, check)

    failed = [r["check"] for r in results if not r["ok"]]
    gpu.write_json(args.json, dict(env=gpu.environment(dev), dtype=str(dtype), results=results))
    print(f"{'PASS' if not failed else 'FAIL'}: {len(results) - len(failed)}/{len(results)} checks"
          + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


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
