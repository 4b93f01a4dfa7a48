"""Where a denoising step's time goes, part by part, in the kit and in transformers' reference.

    python bench/profile_step.py --shape official-2layer --dtype bfloat16     # the official width
    python bench/profile_step.py --shape toy                                  # the 2-core CPU toy
    python bench/profile_step.py --model PATH --engines kit

Each engine generates one canvas (`--steps` rounds, adaptive stopping off) after a warm-up canvas;
wall-clock timers around the model's parts (forward hooks, and wrappers of the head and the
step) add up what each part took, per denoising step. The parts:
  embedding      canvas embeddings and the self-conditioning block
  attention      each layer's self-attention (projections, norms, RoPE, rebuilt keys, SDPA)
  dense MLP      each layer's dense GELU MLP
  router         each layer's router
  experts        each layer's mixture of experts
  norms, rest    what else the layers do (their norms and residual adds), and the final norm
  head           logits, softcap, temperature, entropy, argmax, self-conditioning probabilities
  soft GEMM      probabilities @ embedding for the next round's self-conditioning
  sampler        what is left of the step: sampling, acceptance, renoising, the stop rule
Timers on a CPU need no synchronisation; on a GPU the figures are not meaningful (use
bench/gpu_step.py there).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dgemma_helpers as dg  # noqa: E402
from dgemma_helpers import generation  # noqa: E402
from dgemma_helpers.benchmarks.shapes import SHAPES, shape_checkpoint  # noqa: E402

PARTS = ["embedding", "attention", "dense MLP", "router", "experts", "norms, rest", "head", "soft GEMM", "sampler"]


class PartTimer:
    """Wall-clock seconds per part. `time(name)` nests: an inner part's time is taken out of the
    outer one's, so the parts add up to the total."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self._stack: list[list] = []

    @contextmanager
    def time(self, name: str, root: bool = False):
        if not (root or self._stack):  # outside a step (the prompt's encoding): not counted
            yield
            return
        frame = [name, time.perf_counter(), 0.0]  # name, start, time of inner parts
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            spent = time.perf_counter() - frame[1]
            self.seconds[name] += spent - frame[2]
            if self._stack:
                self._stack[-1][2] += spent

    def module(self, stack: ExitStack, module: torch.nn.Module, name: str) -> None:
        """Time every forward of `module` as `name`."""
        def pre(*_):
            cm = self.time(name)
            cm.__enter__()
            module._profile_cm = cm

        def post(*_):
            module._profile_cm.__exit__(None, None, None)

        stack.callback(module.register_forward_pre_hook(pre).remove)
        stack.callback(module.register_forward_hook(post).remove)

    def function(self, stack: ExitStack, owner, attr: str, name: str, root: bool = False) -> None:
        """Time every call of owner.attr (a module-level function or a method) as `name`; `root`: a
        step, inside which the other parts count."""
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            with self.time(name, root):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)
        stack.callback(setattr, owner, attr, original)


def profile_kit(path: str, dtype: str, steps: int, prompt: list[int]) -> tuple[dict[str, float], int]:
    model = dg.load_model(path, dtype=dtype)
    L = model.config.canvas_length
    timer = PartTimer()
    run = lambda: dg.generate(model, input_ids=[prompt], max_new_tokens=L, max_denoising_steps=steps,  # noqa: E731
                              confidence_threshold=0.0, eos_token_ids=(), seed=0, path="torch")
    run()  # warm-up
    with ExitStack() as stack:
        # what the parts below leave of a step (the class before issue 19's refactor: a function)
        owner, name = (generation.TorchStep, "__call__") if hasattr(generation, "TorchStep") else (generation, "denoise_step")
        timer.function(stack, owner, name, "sampler", root=True)
        for fn in ("denoise_head", "materialized_head", "tiled_head"):  # whichever this version has
            if hasattr(generation, fn):
                timer.function(stack, generation, fn, "head")
        timer.function(stack, model, "soft_embedding", "soft GEMM")
        timer.function(stack, model, "denoise", "norms, rest")
        timer.function(stack, model, "embed", "embedding")
        timer.module(stack, model.self_conditioning, "embedding")
        for layer in model.layers:
            for part, name in (("self_attn", "attention"), ("mlp", "dense MLP"), ("router", "router"),
                               ("experts", "experts")):
                timer.module(stack, getattr(layer, part), name)
        t0 = time.perf_counter()
        result = run()
        total = time.perf_counter() - t0
    return _per_step(timer.seconds, result.num_forwards), total


def profile_transformers(path: str, dtype: str, steps: int, prompt: list[int]) -> dict[str, float]:
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    model = DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=getattr(torch, dtype),
                                                            experts_implementation="grouped_mm").eval()
    decoder = model.model.decoder
    L = model.config.canvas_length
    ids = torch.tensor([prompt])
    timer = PartTimer()
    forwards = [0]

    def run():
        torch.manual_seed(0)
        with torch.no_grad():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=L, max_denoising_steps=steps,
                           sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1), eos_token_id=[],
                           confidence_threshold=None, stability_threshold=None)

    run()
    with ExitStack() as stack:
        step = model._denoising_step

        def counted(*args, **kwargs):
            forwards[0] += 1
            with timer.time("sampler", root=True):
                return step(*args, **kwargs)

        model._denoising_step = counted
        stack.callback(setattr, model, "_denoising_step", step)
        # The decoder's forward: the soft embedding is computed inline there, before its layers.
        decoder_forward = decoder.forward

        def timed_decoder(*args, **kwargs):
            with timer.time("soft GEMM"):
                return decoder_forward(*args, **kwargs)

        decoder.forward = timed_decoder
        stack.callback(setattr, decoder, "forward", decoder_forward)
        timer.module(stack, decoder.embed_tokens, "embedding")
        timer.module(stack, decoder.self_conditioning, "embedding")
        timer.module(stack, decoder.norm, "norms, rest")
        for layer in decoder.layers:
            timer.module(stack, layer, "norms, rest")
            for part, name in (("self_attn", "attention"), ("mlp", "dense MLP"), ("router", "router"),
                               ("experts", "experts")):
                timer.module(stack, getattr(layer, part), name)
        timer.module(stack, model.lm_head, "head")
        model_forward = model.forward

        def timed_forward(*args, **kwargs):  # the decoder call inside is timed on its own
            with timer.time("head"):
                return model_forward(*args, **kwargs)

        model.forward = timed_forward
        stack.callback(setattr, model, "forward", model_forward)
        run()
    return _per_step(timer.seconds, forwards[0])


def experts_alone(path: str, dtype: str, reps: int = 12) -> tuple[float, float]:
    """Layer 0's experts alone, the kit's and transformers' (grouped_mm) on the same weights, input
    and routing, timed alternately: median ms per call of each. Parts timed inside a whole step vary
    with what ran before them; this is the like-for-like comparison."""
    from transformers import DiffusionGemmaForBlockDiffusion

    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=getattr(torch, dtype),
                                                          experts_implementation="grouped_mm").eval()
    theirs = ref.model.decoder.layers[0].experts
    ours = dg.load_model(path, dtype=dtype).layers[0].experts
    g = torch.Generator().manual_seed(0)
    H, E = ours.gate_up_proj.shape[2], ours.gate_up_proj.shape[0]
    x = torch.randn(256, H, generator=g).to(getattr(torch, dtype))
    weights, chosen = torch.softmax(torch.randn(256, E, generator=g), -1).topk(ref.config.text_config.top_k_experts, -1)
    times: dict[str, list[float]] = {"kit": [], "transformers": []}
    with torch.inference_mode():
        for i in range(reps + 2):
            for name, run in (("kit", lambda: ours(x, weights, chosen)),
                              ("transformers", lambda: theirs(x, chosen, weights.to(x.dtype)))):
                t0 = time.perf_counter()
                run()
                if i >= 2:  # the first two: warm-up (the kit packs its copies here)
                    times[name].append(1000 * (time.perf_counter() - t0))
    return tuple(sorted(t)[len(t) // 2] for t in times.values())


def _per_step(seconds: dict[str, float], steps: int) -> dict[str, float]:
    return {part: 1000 * seconds.get(part, 0.0) / max(steps, 1) for part in PARTS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--shape", choices=sorted(SHAPES), default="toy",
                       help="a built-in random checkpoint (built once and cached; default: %(default)s)")
    where.add_argument("--model", help="a checkpoint directory instead")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--engines", default="kit,transformers")
    args = p.parse_args()
    path = str(args.model or shape_checkpoint(args.shape))
    engines = args.engines.split(",")
    prompt = list(range(3, 131))  # 128 prompt tokens
    columns = {}
    if "kit" in engines:
        columns["kit"], _ = profile_kit(path, args.dtype, args.steps, prompt)
    if "transformers" in engines:
        columns["transformers"] = profile_transformers(path, args.dtype, args.steps, prompt)
    print(f"ms per denoising step, by part: {args.model or args.shape}, {args.dtype}, {args.steps} steps, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| part | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for part in PARTS:
        print(f"| {part} | " + " | ".join(f"{c[part]:,.0f}" for c in columns.values()) + " |")
    print("| **total** | " + " | ".join(f"**{sum(c.values()):,.0f}**" for c in columns.values()) + " |")
    if len(columns) == 2:
        kit, ref = experts_alone(path, args.dtype)
        print(f"one layer's experts alone, interleaved: kit {kit:,.1f} ms, transformers (grouped_mm) {ref:,.1f} ms "
              f"({ref / kit:.2f}x)")


if __name__ == "__main__":
    main()
