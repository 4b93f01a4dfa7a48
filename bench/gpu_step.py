"""One denoising step of the real model: PyTorch path, optimised path (fused kernels + CUDA graph),
transformers, against the weight-streaming floor, all measured in this one run.

    python bench/gpu_step.py --json gpu_step.json     # GPU, real text config, < 8 minutes on an H100
    python bench/gpu_step.py --tiny                   # CPU smoke test: interpreter, small config

The official text config with random bf16 weights created on the GPU and shared by all
engines, batch 1, 128-token prompt, canvas 256, 16 steps, early stop off. Measured here:
  copy bandwidth      device-to-device copy of 2 GiB (read + write)
  floor               weight bytes / copy bandwidth (each step reads every weight once)
  transformers        experts_implementation="grouped_mm": whole generate() / 16 (end-to-end ms per step)
  ours (torch/fast)   steady-state ms per step (the generate() loop body, after warm-up), and
                      generate() / 16 end to end (for the fast path that includes graph capture)
  kernels             achieved bandwidth of the MoE (one layer) and RMSNorm kernels; the head's
                      TFLOP/s (it is compute bound at 256 positions)
  batch 8             ms per step and peak memory (target: within weights + 15%)
  fp8                 experts quantised in place: ms per step, logit error vs bf16
tokens/s counts 16 tokens per step (a canvas of 256 in 16 steps). The table is printed last.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from dgemma_helpers.benchmarks import gpu

from dgemma_helpers.benchmarks.measure import copy_bandwidth
from dgemma_helpers.devices import synchronize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test (Triton interpreter, small config)")
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--json")
    args = p.parse_args()
    if args.tiny:
        gpu.setup_cpu_interpreter()
    elif not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: use --tiny for the CPU smoke test")
    dev = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    hf = gpu.CPU_HF if args.tiny else gpu.REAL_HF
    canvas, prompt_len = (32, 16) if args.tiny else (256, 128)
    steps = 4 if args.tiny else args.steps
    t_start = time.perf_counter()
    out: dict = dict(env=gpu.environment(dev), config=dict(hf=hf, canvas=canvas, prompt=prompt_len, steps=steps))
    print(out["env"], flush=True)

    bw = copy_bandwidth(torch.device(dev), nbytes=(32 if args.tiny else 2048) * 2**20)
    tf_model, model = build_models(hf, canvas, dev, dtype)
    weight_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    out.update(copy_tb_s=bw / 1e12, weight_gb=weight_bytes / 1e9, floor_ms=1e3 * weight_bytes / bw)
    print(f"copy {bw / 1e12:.3f} TB/s, weights {weight_bytes / 1e9:.2f} GB, floor {out['floor_ms']:.2f} ms", flush=True)
    g = torch.Generator(dev).manual_seed(0)
    prompt = torch.randint(3, hf["vocab_size"], (1, prompt_len), generator=g, device=dev)
    rows: dict[str, dict] = {}

    if not args.skip_transformers:
        def run_tf():
            torch.manual_seed(1)
            with torch.no_grad():
                tf_model.generate(prompt, max_new_tokens=canvas, max_denoising_steps=steps,
                                  confidence_threshold=None, stability_threshold=None)
        rows["transformers grouped_mm"] = dict(e2e_ms=1e3 * gpu.time_it(run_tf, dev, warm=1, reps=3) / steps)
        print(rows, flush=True)
    tf_model = None  # frees transformers' modules; our model keeps the shared weights alive

    import dgemma_helpers as dg

    from dgemma_helpers.fast.step import graph_rounds

    for path in ("torch", "fast"):
        row = dict(ms=step_ms(model, path, 1, prompt, steps))
        row["e2e_ms"] = 1e3 * gpu.time_it(lambda: dg.generate(model, input_ids=prompt, seed=1, path=path,
                                                             max_new_tokens=canvas, max_denoising_steps=steps,
                                                             confidence_threshold=0), dev, warm=1, reps=3) / steps
        if path == "fast":  # one capture in the warm-up call, replays in the timed ones
            row["graph_captures"] = sum(g.captures for g in graph_rounds(model).values())
        rows[f"ours {path}"] = row
        print(path, row, flush=True)

    out["kernels"] = kernel_bandwidth(model, canvas, dev)
    print(out["kernels"], flush=True)

    for path in ("fast", "torch"):
        batch_prompt = prompt.expand(8, -1).contiguous()
        if dev == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            row = dict(ms=step_ms(model, path, 8, batch_prompt, steps))
        except torch.OutOfMemoryError as e:
            row = dict(error=f"out of memory: {e}"[:200])
        if dev == "cuda":
            row["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            row["peak_over_weights"] = row["peak_gb"] * 1e9 / weight_bytes
        rows[f"ours {path} batch 8"] = row
        print(path, "batch 8", row, flush=True)

    out["fp8"] = fp8_run(model, prompt, steps, dev, rows)
    out["rows"] = rows
    out["seconds"] = time.perf_counter() - t_start
    gpu.write_json(args.json, out)
    print_table(out, steps)


def build_models(hf: dict, canvas: int, dev: str, dtype: torch.dtype):
    """transformers' model with random weights on the device, and ours sharing every tensor."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    from dgemma_helpers.checkpoint import hf_to_kit
    from dgemma_helpers.config import TINY_VISION_CONFIG
    from dgemma_helpers.model import DiffusionGemma

    cfg = DiffusionGemmaConfig(text_config=dict(hf), vision_config=dict(TINY_VISION_CONFIG), canvas_length=canvas)
    cfg.text_config._experts_implementation = "grouped_mm"
    cfg._experts_implementation = "grouped_mm"
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            tf_model = DiffusionGemmaForBlockDiffusion(cfg).eval()
    finally:
        torch.set_default_dtype(prev)
    config = gpu.model_config(hf, canvas)
    with torch.device("meta"):
        model = DiffusionGemma(config)
    state = {}
    for name, t in list(tf_model.state_dict().items()):
        kit = hf_to_kit(name)
        if kit is not None:
            state[kit] = t
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"weight mapping failed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.init_buffers()
    return tf_model, model.eval()


def step_ms(model, path: str, batch: int, prompt: torch.Tensor, steps: int) -> float:
    """Steady-state ms per denoising round: generate()'s loop body on one canvas, after warm-up."""
    from dgemma_helpers.generation import make_step, resolve_settings, start_canvas
    from dgemma_helpers.rng import CounterRNG

    cfg, dev = model.config, model.device
    settings = resolve_settings(model, dict(confidence_threshold=0.0, max_denoising_steps=steps))
    with torch.inference_mode():
        rng = CounterRNG(1, batch, dev)
        step = make_step(path, model, settings, rng)  # what generate() runs (the PyTorch step reuses its buffers)
        cache = step.new_cache(batch, step.capacity(prompt.shape[1]))
        model.encode(prompt, cache)
        state = start_canvas(rng, 0, cfg.canvas_length, cfg.vocab_size, None)

        def run(i):
            step(state, 0, i % steps)
            bool(state.done.all())  # generate()'s one host read per round

        for i in range(2):  # warm-up (the fast path captures its graph here)
            run(i)
        synchronize(torch.device(dev))
        t = time.perf_counter()
        for i in range(steps):
            run(i)
        synchronize(torch.device(dev))
        return 1e3 * (time.perf_counter() - t) / steps


def kernel_bandwidth(model, canvas: int, dev: str) -> dict:
    """Each kernel alone at the denoiser's shapes (batch 1): GB/s of the bytes it must move."""
    from dgemma_kernels.denoise_head import denoise_head
    from dgemma_kernels.moe import moe
    from dgemma_kernels.rmsnorm import rmsnorm

    H, dtype = model.config.hidden_size, model.dtype
    g = torch.Generator(dev).manual_seed(3)
    x = torch.randn(canvas, H, generator=g, device=dev).to(dtype)
    layer = model.layers[0]
    res = {}
    with torch.inference_mode():
        weights, experts = layer.router(x)
        ex = layer.experts
        moe_bytes = sum(w.numel() * w.element_size() for w in (ex.gate_up_proj, ex.down_proj))
        sec = gpu.time_it(lambda: moe(x, weights, experts, ex.gate_up_proj, ex.down_proj), dev, warm=2, reps=10)
        res["moe_ms"], res["moe_tb_s"] = 1e3 * sec, moe_bytes / sec / 1e12
        w = layer.post_attention_layernorm.weight
        sec = gpu.time_it(lambda: rmsnorm(x, w, 1e-6, residual=x), dev, warm=2, reps=20)
        res["rmsnorm_us"], res["rmsnorm_tb_s"] = 1e6 * sec, 3 * x.numel() * x.element_size() / sec / 1e12
        E = model.embed_tokens.weight
        t, key = torch.tensor([0.7], device=dev), torch.tensor([1], device=dev)
        sec = gpu.time_it(lambda: denoise_head(x, E, t, key, 30.0, model.embed_scale), dev, warm=2, reps=5)
        res["head_ms"] = 1e3 * sec
        res["head_tb_s"] = E.numel() * E.element_size() / sec / 1e12
        res["head_tflop_s"] = 2 * 2 * canvas * E.numel() / sec / 1e12
    return res


def fp8_run(model, prompt: torch.Tensor, steps: int, dev: str, rows: dict) -> dict:
    """Quantise the experts in place (frees the bf16 experts layer by layer), then time and compare."""
    from dgemma_helpers.cache import KVCache
    from dgemma_helpers.generation import select_path
    from dgemma_helpers.fast.quant import quantize_experts

    if dev == "cuda" and select_path(None, torch.device(dev), "counter", 0, fp8=True)[0] != "fast":
        return dict(skipped="this GPU has no fp8 conversions (compute capability < 8.9)")
    cfg = model.config
    with torch.inference_mode():
        cache = KVCache(cfg, 1, prompt.shape[1] * 2, device=dev, dtype=model.dtype)
        g = torch.Generator(dev).manual_seed(4)
        canvas = torch.randint(0, cfg.vocab_size, (1, cfg.canvas_length), generator=g, device=dev)
        model.encode(prompt, cache)
        before = model.logits(model.denoise(canvas, cache))
        quantize_experts(model)
        after = model.logits(model.denoise(canvas, cache))
        err = gpu.rel_err(after, before)
        del before, after
    row = dict(ms=step_ms(model, "fast", 1, prompt, steps), logit_rel_err=err)
    rows["ours fast fp8"] = row
    print("fp8", row, flush=True)
    return row


def print_table(out: dict, steps: int) -> None:
    floor = out["floor_ms"]
    print(f"\n{out['env']}")
    print(f"copy bandwidth {out['copy_tb_s']:.3f} TB/s; weights {out['weight_gb']:.2f} GB; floor {floor:.2f} ms/step; "
          f"run {out['seconds']:.0f} s")
    head = f"{'engine':<26}{'ms/step':>9}{'x floor':>9}{'e2e ms/step':>13}{'tok/s':>8}{'peak GB':>9}"
    print(head + f"{'peak/weights':>13}")
    for name, r in out["rows"].items():
        ms = r.get("ms", r.get("e2e_ms"))
        if ms is None:
            print(f"{name:<26}{r}")
            continue
        batch = 8 if "batch 8" in name else 1
        peak = f"{r['peak_gb']:9.1f}{r['peak_over_weights']:13.3f}" if "peak_gb" in r else ""
        e2e = f"{r['e2e_ms']:13.1f}" if "e2e_ms" in r else f"{'':13}"
        print(f"{name:<26}{ms:9.2f}{ms / floor:9.2f}{e2e}{16 * batch * 1e3 / ms:8.0f}{peak}")
    k = out["kernels"]
    print(f"kernels: MoE {k['moe_ms']:.3f} ms/layer = {k['moe_tb_s']:.2f} TB/s ({k['moe_tb_s'] / out['copy_tb_s']:.0%} "
          f"of copy); RMSNorm {k['rmsnorm_us']:.1f} us = {k['rmsnorm_tb_s']:.2f} TB/s; head {k['head_ms']:.2f} ms = "
          f"{k['head_tflop_s']:.0f} TFLOP/s ({k['head_tb_s']:.2f} TB/s of embedding reads)")
    if "logit_rel_err" in out.get("fp8", {}):
        f = out["fp8"]
        print(f"fp8 experts: logit rel err vs bf16 {f['logit_rel_err']:.3e}; step {f['ms']:.2f} ms "
              f"({f['ms'] / out['rows']['ours fast']['ms']:.2f}x the bf16 fast step; target <= 0.6)")


if __name__ == "__main__":
    main()
