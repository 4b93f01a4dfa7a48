"""The command line's vLLM parts: `generate --engine vllm|vllm-server` and `vllm-serve` (README)."""

from __future__ import annotations

import argparse
import sys

from ..errors import EngineError, InputError
from .vllm import VLLMEngine
from .vllm_server import LOOPBACK, SETTINGS_PATH, VLLMServer, VLLMServerClient

ENGINES = ("kit", "vllm", "vllm-server")
# Engine arguments a user may pass for scale and precision, with their types (bool: a bare flag).
ENGINE_FLAGS = {"tensor_parallel_size": int, "quantization": str, "max_num_seqs": int,
                "gpu_memory_utilization": float, "max_model_len": int, "dtype": str, "enable_expert_parallel": bool}


def add_engine_arguments(p: argparse.ArgumentParser, serving: bool = False) -> None:
    """vLLM's engine arguments (--dtype is the kit's own flag on `generate`)."""
    for name, kind in ENGINE_FLAGS.items():
        if name != "dtype" or serving:
            how = dict(action="store_true", default=None) if kind is bool else dict(type=kind)
            p.add_argument("--" + name.replace("_", "-"), **how, help="vLLM engine argument")


def add_generate_arguments(g: argparse.ArgumentParser) -> None:
    g.add_argument("--engine", choices=ENGINES, default="kit",
                   help="kit (default), vllm (vllm.LLM in this process) or vllm-server (a running server, --url)")
    g.add_argument("--url", help="the vLLM server for --engine vllm-server, e.g. http://127.0.0.1:8000")
    g.add_argument("--stream", action="store_true", help="vllm-server: stream (vLLM sends one chunk per canvas)")
    add_engine_arguments(g)


def _engine_kwargs(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ENGINE_FLAGS if getattr(args, k, None) is not None}


def _start_settings(args: argparse.Namespace) -> dict:
    return dict(max_denoising_steps=args.steps, entropy_bound=args.entropy_bound, t_min=args.t_min,
                t_max=args.t_max, stability_threshold=args.stability_threshold,
                confidence_threshold=0.0 if args.no_early_stop else args.confidence_threshold)


def _open_engine(args: argparse.Namespace) -> tuple[VLLMEngine | VLLMServerClient, dict]:
    """The engine (a server's client, or vLLM in this process) and the settings each call gives it."""
    engine_kwargs = _engine_kwargs(args)
    if args.engine == "vllm-server":
        if not args.url:
            raise InputError("--engine vllm-server needs --url (a running server, e.g. one started with "
                             f"`python -m dgemma_helpers vllm-serve --model {args.model}`).")
        fixed = [f for f, v in (("--entropy-bound", args.entropy_bound), ("--t-min", args.t_min),
                                ("--t-max", args.t_max), ("--no-early-stop", args.no_early_stop or None),
                                ("--stability-threshold", args.stability_threshold),
                                ("--confidence-threshold", args.confidence_threshold)) if v is not None]
        if fixed or engine_kwargs:
            raise InputError(f"{', '.join(fixed + sorted(engine_kwargs))}: a server fixes these when it starts; "
                             "give them to `python -m dgemma_helpers vllm-serve` instead.")
        return VLLMServerClient(args.url, args.model), dict(max_denoising_steps=args.steps, stream=args.stream)
    if args.stream:
        raise InputError("--stream needs a server: --engine vllm-server --url URL.")
    return VLLMEngine(args.model, **_start_settings(args), **engine_kwargs), {}


def generate(args: argparse.Namespace) -> None:
    """`generate --engine vllm|vllm-server`: the same prompt flags, the text, then vLLM's figures."""
    # The kit's own flags, which vLLM has no use for.
    if args.device is not None:
        raise InputError("--device is the kit's: vLLM places the model itself (GPUs when it has them; "
                         "--tensor-parallel-size spreads it): leave --device out.")
    if args.seed is not None:
        raise InputError("--seed is not available with vLLM (it rejects per-request seeds): leave it out, or use "
                         "--engine kit, which takes it.")
    for flag, value, default in (("--rng", args.rng, "counter"), ("--path", args.path, "auto")):
        if value != default:
            raise InputError(f"{flag} {value} chooses among the kit's own samplers and steps; vLLM has its own: "
                             f"leave {flag} out, or use --engine kit.")
    engine, per_call = _open_engine(args)
    try:
        prompt = dict(messages=[{"role": "user", "content": args.chat}], thinking=args.thinking) if args.chat else \
            dict(prompt=args.prompt)
        result = engine.generate(**prompt, max_new_tokens=args.max_new_tokens, **per_call)
    finally:
        if isinstance(engine, VLLMEngine):
            engine.close()
    print(result.text if args.chat else args.prompt + result.text)  # a continuation reads from its prompt
    steps = result.mean_steps_per_canvas
    print(f"\ntokens per forward: {result.tokens_per_forward:.2f} ({result.denoising_steps} denoising steps"
          f"{f', {steps:.1f} per canvas' if steps is not None else ''}, {result.timings.total_s:.2f} s); "
          f"path: {result.path}", file=sys.stderr)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)


def add_serve_parser(sub) -> None:
    s = sub.add_parser("vllm-serve", help="start vLLM's OpenAI-compatible server for a checkpoint with the kit's settings")
    s.add_argument("--model", required=True, help="checkpoint directory")
    s.add_argument("--steps", type=int, help="max denoising steps per canvas (also vLLM's temperature schedule)")
    for flag, kind in (("--entropy-bound", float), ("--t-min", float), ("--t-max", float),
                       ("--stability-threshold", int), ("--confidence-threshold", float)):
        s.add_argument(flag, type=kind)
    s.add_argument("--no-early-stop", action="store_true", help="run every denoising step")
    s.add_argument("--host", default=LOOPBACK, help="address to bind (default %(default)s: this machine only)")
    s.add_argument("--port", type=int, help="port (default: a free one)")
    s.add_argument("--python",
                   help="the Python that has vLLM and the kit (default: this one), e.g. .venv-vllm/bin/python")
    add_engine_arguments(s, serving=True)
    s.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> None:
    """Until a stop signal (the CLI turns SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt): then the
    server's whole process group and its files are gone before this returns."""
    server = VLLMServer(args.model, host=args.host, port=args.port, python=args.python, **_start_settings(args),
                        **_engine_kwargs(args))
    print(f"starting vLLM for {server.path} (about a minute on a CPU) ...", file=sys.stderr)
    try:
        server.start()
        print(f"command: {' '.join(server.cmd)}", file=sys.stderr)
        print(f"vLLM serves {server.path} at {server.url} (Ctrl-C or SIGTERM stops it; its settings: "
              f"{server.url}{SETTINGS_PATH}); try:\n  python -m dgemma_helpers generate --engine vllm-server "
              f"--url {server.url} --model {server.path} --prompt 'ROMEO:'", file=sys.stderr, flush=True)
        code = server.process.wait()
        raise EngineError(f"the vLLM server exited by itself with code {code}; its log ended:\n{server.log_tail()}")
    finally:
        server.stop()
