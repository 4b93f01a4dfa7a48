"""`python -m dgemma_helpers finetune --model PATH --data FILE.jsonl --out DIR [--resume] [--merge DIR]`.

peft (the dev/train extras) is imported when the command runs, not when the CLI starts: the other
commands work without it."""

from __future__ import annotations

import argparse

from .checkpoint import load_model
from .errors import MissingToolError
from .train.trainer import FinetuneConfig

NUMBERS = ("steps", "batch_size", "lr", "warmup", "rank", "lm_weight", "max_tokens", "eval_every", "save_every", "seed")


def add_finetune_parser(sub) -> None:
    f = sub.add_parser("finetune", help="fine-tune a checkpoint on chat-messages JSONL (LoRA through peft)")
    f.add_argument("--model", required=True, help="checkpoint directory to fine-tune")
    f.add_argument("--data", required=True, help='chat-messages JSONL: one {"messages": [...]} per line')
    f.add_argument("--heldout", help="held-out JSONL of the same form, scored during the run")
    f.add_argument("--out", required=True, help="run directory: adapter/ (peft's format), state/ (for --resume)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out from its last save")
    f.add_argument("--merge", metavar="DIR", help="at the end, also write base + adapter as a full checkpoint")
    defaults = FinetuneConfig()
    for name in NUMBERS:
        default = getattr(defaults, name)
        shown = "the model's context" if default is None else default
        f.add_argument("--" + name.replace("_", "-"), type=float if isinstance(default, float) else int,
                       help=f"(default: {shown})")
    f.add_argument("--experts", action="store_true", help="also adapt the expert weights (peft target_parameters)")
    f.add_argument("--full", action="store_true", help="train every weight but the router's instead of LoRA")
    f.add_argument("--no-gradient-checkpointing", action="store_true", help="keep every activation (faster, more memory)")
    f.add_argument("--device", help="cpu, cuda or cuda:N (default: the first GPU, else the CPU)")
    f.add_argument("--dtype", help="frozen weights' dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    f.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> None:
    try:
        from .sft.loop import finetune, merge_checkpoint  # peft: only this command needs it
    except ImportError as e:
        raise MissingToolError(f"fine-tuning needs peft ({e}): pip install 'dgemma-helpers[dev]' (or pip install peft).") from e

    settings = {k: v for k, v in vars(args).items() if k in NUMBERS and v is not None}
    config = FinetuneConfig(**settings, experts=args.experts, full=args.full,
                            gradient_checkpointing=not args.no_gradient_checkpointing)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    model, history = finetune(model, args.data, heldout=args.heldout, out=args.out, resume=args.resume, config=config)
    last = history[-1] if history else {}
    scores = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith("heldout"))
    print(f"fine-tuned {last.get('step', 0)} steps: loss {last.get('loss', float('nan')):.3f}"
          + (f", {scores}" if scores else "") + f"; run directory {args.out}")
    if args.merge:
        merge_checkpoint(model, args.merge)
        print(f"wrote the merged checkpoint {args.merge}")
