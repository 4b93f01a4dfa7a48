"""dg.finetune: supervised fine-tuning of a trained DiffusionGemma on chat data, with the model's own
diffusion objective (dgemma_helpers/train/objective.py) over the supervised reply.

    model = dg.load_model("models/dgemma-tiny")
    model, history = dg.finetune(model, "chats.jsonl", out="runs/my-adapter")

A run directory (`out`) holds the adapter in peft's format (adapter/), the resumable state (state/:
the adapters, AdamW's moments and the generators, so a resumed run equals an uninterrupted one bit
for bit) and the settings. Ctrl-C saves the last finished step before it stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_model, save_checkpoint
from ..errors import InputError
from ..memory import check_fits, estimate_memory
from ..model import DiffusionGemma
from ..signals import stop_on_signals
from ..train.objective import diffusion_loss
from ..train.trainer import TrainConfig, load_state, save_state
from .data import Example, encode_examples, make_batch, padded_length, read_conversations
from .lora import (
    add_lora,
    checkpoint_layers,
    has_lora,
    load_adapter,
    lora_config,
    merge,
    save_adapter,
    train_everything,
)


@dataclass
class FinetuneConfig:
    steps: int = 200
    batch_size: int = 4
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup: int = 10
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    clip: float = 1.0
    rank: int = 16  # LoRA rank (alpha = 2 x rank unless set)
    alpha: int | None = None
    experts: bool = False  # also adapt the expert weights
    full: bool = False  # full fine-tuning instead of LoRA (small models): every weight but the router's
    lm_weight: float = 1.0  # the encoder's causal-LM loss on the clean sequence
    self_conditioning_p: float = 0.5
    max_tokens: int | None = None  # longest example (default: the model's context)
    gradient_checkpointing: bool = True
    eval_every: int = 50
    save_every: int = 50
    seed: int = 0

    lr_at = TrainConfig.lr_at  # the same warm-up and cosine decay as training from scratch


def finetune(model: DiffusionGemma | str | os.PathLike, data, *, heldout=None, config: FinetuneConfig | None = None,
             out: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
             **settings) -> tuple[DiffusionGemma, list[dict]]:
    """Fine-tune `model` (a loaded model, or a checkpoint path) on `data` (chat-messages JSONL, or a list
    of conversations); `heldout` (same forms) is scored every `eval_every` steps and at the end.
    Keyword `settings` override FinetuneConfig's fields. Returns the model (its adapters trained in
    place; `merge` folds them into the weights) and one history row per step."""
    config = dataclasses.replace(config or FinetuneConfig(), **settings)
    if not isinstance(model, DiffusionGemma):
        model = load_model(model)
    examples = encode_examples(read_conversations(data), model.tokenizer, model.config, config.max_tokens)
    held = [] if heldout is None else encode_examples(read_conversations(heldout), model.tokenizer, model.config,
                                                      config.max_tokens)
    out = None if out is None else _run_directory(out, resume)
    longest = max(padded_length(e, model.config.canvas_length) for e in examples)
    need = estimate_memory(model, longest, batch_size=config.batch_size,
                           training="full" if config.full else ("lora+experts" if config.experts else "lora"),
                           rank=config.rank)
    check_fits(need, model.device, "this fine-tuning run")  # before the adapters and the optimizer exist

    if config.full:
        train_everything(model)
    elif not has_lora(model):
        add_lora(model, lora_config(config.rank, config.alpha, config.experts), seed=config.seed)
    if config.gradient_checkpointing:
        checkpoint_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    dev = model.device
    batches = torch.Generator().manual_seed(config.seed)
    noise = torch.Generator(device=dev).manual_seed(config.seed + 1)
    generators = [batches, noise]
    start, elapsed, history = 0, 0.0, []
    if out is not None and resume and (out / "state" / "state.json").exists():
        start, elapsed, history = load_state(out, model, opt, generators)
    if out is not None:
        (out / "finetune_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    from tqdm.auto import tqdm  # the bar's module picks the notebook or terminal bar at import

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    C, pad = model.config.canvas_length, model.config.pad_token_id
    model.train()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not progress, desc="finetune")
    t0 = time.perf_counter() - elapsed
    finished, before = start, None  # steps whose update is applied; the generators before the current one
    try:
        with stop_on_signals():  # SIGTERM and SIGHUP take Ctrl-C's path (signals.py), wherever this runs
            for step in bar:
                before = [g.get_state() for g in generators]
                for group in opt.param_groups:
                    group["lr"] = config.lr_at(step)
                picked = torch.randint(len(examples), (config.batch_size,), generator=batches).tolist()
                batch = make_batch([examples[i] for i in picked], C, pad, batches)
                with autocast:
                    parts = diffusion_loss(model, batch.tokens.to(dev), batch.block_start.to(dev), generator=noise,
                                           self_conditioning_p=config.self_conditioning_p, lm_weight=config.lm_weight,
                                           lm_mask=batch.lm_mask.to(dev), block_mask=batch.block_mask.to(dev))
                opt.zero_grad(set_to_none=True)
                parts.total.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, config.clip)
                opt.step()
                finished = step + 1
                row = {"step": step + 1, "loss": parts.total.item(), "diffusion": parts.diffusion.item(),
                       "lm": parts.lm.item(), "grad_norm": float(grad_norm), "lr": config.lr_at(step),
                       "tokens": int(batch.tokens.numel()), "seconds": time.perf_counter() - t0}
                history.append(row)
                if held and (finished % config.eval_every == 0 or finished == config.steps):
                    row.update(evaluate(model, held, config.batch_size))
                bar.set_postfix(loss=f"{row['loss']:.3f}", diff=f"{row['diffusion']:.3f}")
                if out is not None and (finished % config.save_every == 0 or finished == config.steps):
                    _save(out, model, opt, generators, finished, time.perf_counter() - t0, history, config)
    except KeyboardInterrupt:
        if out is not None and finished > start:
            if finished == step:  # stopped inside a step before its update: undo its random draws
                for g, state in zip(generators, before):
                    g.set_state(state)
            _save(out, model, opt, generators, finished, time.perf_counter() - t0, history, config)
            bar.write(f"interrupted: saved step {finished} to {out} (continue with resume=True, or --resume)")
        raise
    finally:
        bar.close()
        model.eval()
    return model, history


def evaluate(model: DiffusionGemma, examples: list[Example], batch_size: int = 4) -> dict:
    """Held-out losses (the objective's two terms) with fixed draws: every example's first canvas, the
    same noise levels, corruption and self-conditioning coins at every call."""
    noise = torch.Generator(device=model.device).manual_seed(1234)
    C, pad = model.config.canvas_length, model.config.pad_token_id
    was_training = model.training
    model.eval()
    diffusion = lm = weight = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i: i + batch_size]
            b = make_batch(chunk, C, pad, canvas_index=[0] * len(chunk))
            parts = diffusion_loss(model, b.tokens.to(model.device), b.block_start.to(model.device), generator=noise,
                                   lm_mask=b.lm_mask.to(model.device), block_mask=b.block_mask.to(model.device))
            n = b.supervised_tokens
            diffusion, lm, weight = diffusion + parts.diffusion.item() * n, lm + parts.lm.item() * n, weight + n
    model.train(was_training)
    return {"heldout_diffusion": diffusion / weight, "heldout_lm": lm / weight}


def merge_checkpoint(model: DiffusionGemma, out: str | os.PathLike) -> DiffusionGemma:
    """Fold the adapters into the weights and write a full checkpoint directory (atomically; an existing
    `out` is refused). Returns the merged model."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty: merge writes a new checkpoint directory; choose another "
                         "path or remove it first.")
    merged = merge(model)
    save_checkpoint(merged, out, tokenizer=merged.tokenizer)
    return merged


def load_finetuned(base: str | os.PathLike, adapter: str | os.PathLike, **load_kwargs) -> DiffusionGemma:
    """The base checkpoint with a saved adapter on it (refused when it was trained on another model)."""
    return load_adapter(load_model(base, **load_kwargs), adapter)


def _run_directory(out: str | os.PathLike, resume: bool) -> Path:
    """The run directory, refusing to write into a checkpoint or someone else's files."""
    out = Path(out)
    if (out / "config.json").exists() or (out / "model.safetensors").exists():
        raise InputError(f"{out} holds a model checkpoint: fine-tuning writes its adapter and state into a run "
                         "directory of its own; choose a new --out (the checkpoint is left as it is).")
    if out.exists() and any(out.iterdir()):
        if not (out / "state" / "state.json").exists():
            raise InputError(f"{out} exists and is not a fine-tuning run directory: choose a new or empty --out.")
        if not resume:
            raise InputError(f"{out} holds a fine-tuning run: pass resume=True (--resume) to continue it, or choose "
                             "another --out.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save(out: Path, model, opt, generators, step: int, seconds: float, history: list[dict],
          config: FinetuneConfig) -> None:
    save_state(out, model, opt, generators, step, seconds, history)
    if has_lora(model):
        save_adapter(model, out / "adapter", base=str(model.path) if model.path else None)
    elif step == config.steps:
        save_checkpoint(model, out / "model", tokenizer=model.tokenizer)
