"""Command line: python -m dgemma_helpers generate | info | memory | make-random | train | finetune | bench |
report | vllm-serve (`--help`: an example of each). Each parser's `func` runs its subcommand; `run` turns
an error into one line and an exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .benchmarks.command import add_sweep_arguments, run_bench, run_report
from .cache import KVCache
from .checkpoint import load_model, read_config, read_generation_settings, weights_bytes
from .config import GenerationSettings, read_json
from .devices import resolve_dtype
from .engines import vllm_cli
from .errors import DGemmaError, InputError
from .finetune_cli import add_finetune_parser
from .generation import StepRecord, generate
from .memory import estimate_memory
from .signals import Stopped, exit_code, stop_on_signals
from .train.random_checkpoint import make_random_checkpoint
from .train.recipe import train_tiny
from .train.trainer import TrainConfig
from .validate import check
from .vision import expected_vision_tensors, is_placeholder

EXAMPLES = """examples:
  python -m dgemma_helpers generate --model models/dgemma-tiny --prompt "ROMEO:" --steps 16
  python -m dgemma_helpers generate --model google/diffusiongemma-26B-A4B-it --chat "Why is the sky blue?" --no-thinking
  python -m dgemma_helpers info --model models/dgemma-tiny
  python -m dgemma_helpers memory --model google/diffusiongemma-26B-A4B-it --prompt-tokens 131072
  python -m dgemma_helpers make-random /tmp/random-ckpt --preset toy
  python -m dgemma_helpers train --out models/my-tiny --steps 2000
  python -m dgemma_helpers finetune --model models/dgemma-tiny --data chats.jsonl --out runs/my-lora
  python -m dgemma_helpers bench --model models/dgemma-tiny --out reports/bench
  python -m dgemma_helpers report --model models/dgemma-tiny
  python -m dgemma_helpers vllm-serve --model models/dgemma-tiny --steps 16 --port 8000

`python -m dgemma_helpers SUBCOMMAND --help` lists a subcommand's options."""
MODEL_HELP = ("checkpoint directory (e.g. models/dgemma-tiny), or a Hugging Face Hub id such as "
              "google/diffusiongemma-26B-A4B-it (hf://ORG/NAME@REVISION pins a revision): read from the local "
              "Hugging Face cache, else downloaded unless HF_HUB_OFFLINE=1")


# ---- generate -----------------------------------------------------------------------------------------
class CanvasBars:
    """An `on_step` callback: one progress bar per canvas, closed at the rounds it ran (a canvas that
    stops early ends at 6/6, not at 6/48)."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.canvas = -1

    def __call__(self, record: StepRecord) -> None:
        if record.canvas_index != self.canvas:
            self.close()
            self.canvas = record.canvas_index
            self.bar = tqdm(total=record.remaining, desc=f"canvas {record.canvas_index + 1}", unit="step",
                            file=sys.stderr, mininterval=0.5)
        self.bar.update(1)
        self.bar.set_postfix(accepted=int(record.accepted[0].sum()), refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.total = self.bar.n
            self.bar.close()
            self.bar = None


def _generate(args: argparse.Namespace) -> None:
    check(not args.image or args.chat, InputError, "--image goes with --chat (the image is part of a chat message), "
          "not --prompt.")
    check(not args.image or args.engine == "kit", InputError, "--image runs on the kit's engine only (--engine kit).")
    if args.engine != "kit":
        return vllm_cli.generate(args)

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    if (model.path / "dgemma_random.json").exists():
        print("note: this checkpoint is UNTRAINED (random weights): its text is noise.", file=sys.stderr)
    bars = CanvasBars()
    kwargs = dict(max_new_tokens=args.max_new_tokens, max_denoising_steps=args.steps, entropy_bound=args.entropy_bound,
                  t_min=args.t_min, t_max=args.t_max, seed=0 if args.seed is None else args.seed, on_step=bars,
                  stability_threshold=args.stability_threshold, rng=args.rng, path=args.path,
                  confidence_threshold=0.0 if args.no_early_stop else args.confidence_threshold)
    try:
        if args.chat:
            content = [{"type": "image", "image": path} for path in args.image] + [{"type": "text", "text": args.chat}]
            content = content if args.image else args.chat
            result = generate(model, messages=[{"role": "user", "content": content}], thinking=args.thinking, **kwargs)
        else:
            result = generate(model, args.prompt, **kwargs)
    finally:
        bars.close()
    # A continuation is printed after its prompt, so that it reads from the start; a chat reply stands alone.
    print(result.text if args.chat else args.prompt + result.text)
    path = result.path + (f" ({result.fallback_reason})" if result.fallback_reason else "")
    print(f"\ntokens per forward: {result.tokens_per_forward:.2f} ({result.num_forwards} denoiser passes, "
          f"steps per canvas {[row[0] for row in result.steps_per_canvas]}, {result.timings.total_s:.2f} s); "
          f"path: {path}", file=sys.stderr)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate text block by block",
                       description="Generate text block by block: a progress bar per canvas on stderr, then the "
                                   "prompt and its continuation (or the chat reply) on stdout.")
    g.add_argument("--model", required=True, help=MODEL_HELP)
    what = g.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="plain text to continue")
    what.add_argument("--chat", help="a user message, sent through the checkpoint's chat template")
    g.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="a local image file shown before the --chat message (repeat for several); needs a checkpoint "
                        "with a trained vision tower")
    g.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                   help="thinking on/off, where the chat template supports it")
    s = g.add_argument_group("sampler settings", "A setting left out takes the checkpoint's generation_config.json "
                             "value where it has one (models/dgemma-tiny has its own: `info` prints them), else the "
                             "published default shown here.")
    p = GenerationSettings()  # the published defaults
    s.add_argument("--max-new-tokens", type=int, help=f"tokens to generate (default {p.max_new_tokens})")
    s.add_argument("--steps", type=int, help=f"max denoising steps per canvas (default {p.max_denoising_steps})")
    s.add_argument("--entropy-bound", type=float, help=f"nats of entropy accepted per round (default {p.entropy_bound})")
    s.add_argument("--t-min", type=float, help=f"temperature of the last step (default {p.t_min})")
    s.add_argument("--t-max", type=float, help=f"temperature of the first step (default {p.t_max})")
    s.add_argument("--stability-threshold", type=int,
                   help=f"rounds the argmax canvas must stay unchanged to stop early (default {p.stability_threshold})")
    s.add_argument("--confidence-threshold", type=float,
                   help=f"mean entropy below which a stable canvas stops early; 0 never stops "
                        f"(default {p.confidence_threshold})")
    s.add_argument("--no-early-stop", action="store_true", help="run every denoising step (confidence threshold 0)")
    k = g.add_argument_group("the kit's engine (--engine kit)")
    k.add_argument("--rng", choices=["counter", "transformers"], default="counter",
                   help="counter: the kit's hash-based sampler; transformers: replays the reference's random draws "
                        "(default: %(default)s)")
    k.add_argument("--path", choices=["auto", "torch", "fast"], default="auto",
                   help="denoising step: fast (fused kernels + CUDA graph), torch, or auto: fast where it runs "
                        "(default: %(default)s)")
    k.add_argument("--seed", type=int, help="the kit's seed (default 0); vLLM takes none")
    k.add_argument("--device", help="cpu, cuda or cuda:N (default: the first GPU, else the CPU)")
    k.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on a GPU, float32 on the CPU)")
    vllm_cli.add_generate_arguments(g.add_argument_group("engine choice, and vLLM's flags (--engine vllm or vllm-server)"))
    g.set_defaults(func=_generate)


# ---- info, memory -------------------------------------------------------------------------------------
def _info(args: argparse.Namespace) -> None:
    path, config = read_config(args.model)
    print(json.dumps(config.to_dict(), indent=2))
    vision = read_json(path / "config.json", "config").get("vision_config")
    tower = ("none (text only)" if not isinstance(vision, dict) else
             "an untrained placeholder (the kit's TINY_VISION_CONFIG, so that transformers loads the file): text only"
             if is_placeholder(vision) else "a trained tower: chat messages may hold images")
    settings = read_generation_settings(path, config)
    shown = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.name != "extra"}
    print(f"vision tower: {tower}\nsampler defaults: {', '.join(f'{k}={v}' for k, v in shown.items())}",
          file=sys.stderr)


def _memory(args: argparse.Namespace) -> None:
    path, config = read_config(args.model)
    dtype = resolve_dtype(args.dtype, torch.device("cuda"))  # the default is a GPU's, where long contexts run
    estimate = estimate_memory(config, args.prompt_tokens, max_new_tokens=args.max_new_tokens,
                               batch_size=args.batch_size, dtype=dtype)
    # A trained vision tower's weights count too (built weightless from vision_config; nothing is read).
    vision_config = read_json(path / "config.json", "config").get("vision_config")
    tower = expected_vision_tensors(vision_config, config.hidden_size) \
        if isinstance(vision_config, dict) and not is_placeholder(vision_config) else None
    estimate = dataclasses.replace(estimate, weights=weights_bytes(config, dtype, tower))
    print(f"{path.name}, {str(dtype).replace('torch.', '')}, prompt of {args.prompt_tokens:,} tokens, "
          f"{args.max_new_tokens} new:\n{estimate.summary()}\nKV cache per further token: "
          f"{KVCache.bytes_per_token(config, dtype) * args.batch_size:,} bytes")


def _add_info_and_memory(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("info", help="print a checkpoint's text config, vision tower and sampler defaults")
    i.add_argument("--model", required=True, help=MODEL_HELP + " (only its config files are fetched)")
    i.set_defaults(func=_info)

    m = sub.add_parser("memory", help="estimate the memory of a generation from a checkpoint's config (nothing loaded)")
    m.add_argument("--model", required=True, help=MODEL_HELP + " (only its config files are fetched)")
    m.add_argument("--prompt-tokens", type=int, required=True, help="tokens in the longest prompt")
    m.add_argument("--max-new-tokens", type=int, default=256, help="(default: %(default)s)")
    m.add_argument("--batch-size", type=int, default=1, help="prompts per call (default: %(default)s)")
    m.add_argument("--dtype", default="bfloat16", help="weights and cache dtype (default: %(default)s)")
    m.set_defaults(func=_memory)


# ---- make-random, train -------------------------------------------------------------------------------
def _make_random(args: argparse.Namespace) -> None:
    path = make_random_checkpoint(args.path, preset=args.preset, seed=args.seed, canvas_length=args.canvas_length)
    print(f"wrote an UNTRAINED random checkpoint to {path}")


def _train(args: argparse.Namespace) -> None:
    overrides = {k: v for k, v in dict(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                                        lr=args.lr, seed=args.seed).items() if v is not None}
    path = train_tiny(args.out, args.run_dir, TrainConfig(**overrides), device=args.device,
                      measure=not args.no_measure)
    print(f"wrote {path} (model card: {path}/MODEL_CARD.md)")


def _add_make_random_and_train(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("make-random", help="write an untrained random checkpoint (for tests and demos)")
    r.add_argument("path", help="checkpoint directory to write")
    r.add_argument("--preset", default="test", choices=["test", "toy"], help="its shape (default: %(default)s)")
    r.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    r.add_argument("--canvas-length", type=int, default=16, help="(default: %(default)s)")
    r.set_defaults(func=_make_random)

    d = TrainConfig()
    t = sub.add_parser("train", help="train a small DiffusionGemma on Shakespeare (the dgemma-tiny recipe)")
    t.add_argument("--out", default="models/dgemma-tiny", help="checkpoint directory to write (default: %(default)s)")
    t.add_argument("--run-dir", default="runs/dgemma-tiny",
                   help="training state and logs, resumed if present (default: %(default)s)")
    t.add_argument("--steps", type=int, help=f"optimiser steps (default {d.steps})")
    t.add_argument("--batch-size", type=int, help=f"sequences per step (default {d.batch_size})")
    t.add_argument("--seq-len", type=int, help=f"tokens per sequence (default {d.seq_len})")
    t.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    t.add_argument("--seed", type=int, help=f"(default {d.seed})")
    t.add_argument("--device", help="cpu, cuda or cuda:N (default: the first GPU, else the CPU)")
    t.add_argument("--no-measure", action="store_true", help="skip the quality measurement for the model card")
    t.set_defaults(func=_train)


# ---- bench, report ------------------------------------------------------------------------------------
def _add_bench_and_report(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmark engines side by side: kit, transformers, autoregressive")
    add_sweep_arguments(b)
    b.add_argument("--out", help="also write results.json, results.csv and the PNG plots into this directory")
    b.set_defaults(func=run_bench)

    rep = sub.add_parser("report", help="the benchmark as a report: notebook 05 through papermill, HTML, plots")
    add_sweep_arguments(rep)
    rep.add_argument("--out", help="report directory (default reports/<timestamp>)")
    rep.add_argument("--notebook", help="notebook to execute (default notebooks/05_throughput_benchmark.ipynb)")
    rep.set_defaults(func=run_report)


# ---- the parser and the error policy -----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Every subcommand's parser; each sets `func`, the function that runs it."""
    parser = argparse.ArgumentParser(prog="python -m dgemma_helpers", epilog=EXAMPLES,
                                     description="Generate with, inspect, train and benchmark DiffusionGemma checkpoints.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    _add_generate(sub)
    _add_info_and_memory(sub)
    _add_make_random_and_train(sub)
    add_finetune_parser(sub)
    _add_bench_and_report(sub)
    vllm_cli.add_serve_parser(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand: an error is one line on stderr (its traceback with --debug)."""
    try:
        with stop_on_signals():  # SIGTERM and SIGHUP end a command as Ctrl-C does: its cleanup runs
            args.func(args)
        return 0
    except (Exception, KeyboardInterrupt) as e:
        if args.debug:
            raise
        if isinstance(e, KeyboardInterrupt):
            print(f"interrupted{f' ({e})' if isinstance(e, Stopped) else ''}", file=sys.stderr)
            return exit_code(e)
        if isinstance(e, DGemmaError):  # the kit's own errors name the problem and the fix: one line says it all
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"error: unexpected {type(e).__name__}: {e} (a bug in the kit: rerun with --debug for the traceback "
              "and report it)", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
