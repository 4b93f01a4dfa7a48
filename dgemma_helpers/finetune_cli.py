"""`python -m dgemma_helpers finetune --model PATH --data FILE.jsonl --out DIR [--resume] [--merge DIR]`.

peft (the dev/train extras) is imported when the command runs, not when the CLI starts: the other
commands work without it."""

from __future__ import annotations

import argparse
import dataclasses

from .errors import MissingToolError

# FinetuneConfig's numbers, with its defaults (named here: reading them would import peft at start-up).
NUMBERS = (("steps", int, 200), ("batch_size", int, 4), ("lr", float, 2e-4), ("warmup", int, 10), ("rank", int, 16),
           ("lm_weight", float, 1.0), ("max_tokens", int, "the model's context"), ("eval_every", int, 50),
           ("save_every", int, 50), ("seed", int, 0))


def add_finetune_parser(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a checkpoint on chat-messages JSONL (LoRA through peft)")
    f.add_argument("--model", required=True, help="checkpoint directory to fine-tune")
    f.add_argument("--data", required=True, help='chat-messages JSONL: one {"messages": [...]} per line')
    f.add_argument("--heldout", help="held-out JSONL of the same form, scored during the run")
    f.add_argument("--out", required=True, help="run directory: adapter/ (peft's format), state/ (for --resume)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last save")
    f.add_argument("--merge", metavar="DIR", help="at the end, also write base + adapter as a full checkpoint")
    for name, kind, default in NUMBERS:
        f.add_argument("--" + name.replace("_", "-"), type=kind, help=f"(default: {default})")
    f.add_argument("--experts", action="store_true", help="also adapt the expert weights (peft target_parameters)")
    f.add_argument("--full", action="store_true", help="train every weight but the router's instead of LoRA")
    f.add_argument("--no-gradient-checkpointing", action="store_true", help="keep every activation (faster, more memory)")
    f.add_argument("--device", help="cpu, cuda or cuda:N (default: the first GPU, else the CPU)")
    f.add_argument("--dtype", help="frozen weights' dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    f.set_defaults(func=run_finetune)


def _config():
    try:
        from .sft.loop import FinetuneConfig
    except ImportError as e:
        raise MissingToolError(f"fine-tuning needs peft ({e}): pip install 'dgemma-helpers[dev]' (or pip install peft).") from e
    return FinetuneConfig


def run_finetune(args: argparse.Namespace) -> None:
    from .checkpoint import load_model
    from .sft.loop import finetune, merge_checkpoint

    config = _config()
    names = {f.name for f in dataclasses.fields(config)}
    settings = {k: v for k, v in vars(args).items() if k in names and v is not None and k not in ("experts", "full")}
    settings.update(experts=args.experts, full=args.full, gradient_checkpointing=not args.no_gradient_checkpointing)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    model, history = finetune(model, args.data, heldout=args.heldout, out=args.out, resume=args.resume,
                              config=config(**settings))
    last = history[-1] if history else {}
    scores = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("heldout"))
    print(f"fine-tuned {last.get('step', 0)} steps: loss {last.get('loss', float('nan')):.3f}"
          + (f", {scores}" if scores else "") + f"; run directory {args.out}")
    if args.merge:
        merge_checkpoint(model, args.merge)
        print(f"wrote the merged checkpoint {args.merge}")
