"""dg.finetune, in training's loop (train/trainer.py). A run directory (`out`) holds the adapter in peft's
format (adapter/), the resumable state (state/: the adapters, AdamW's moments and the generators) and the
settings."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from ..checkpoint import load_model, save_checkpoint
from ..errors import InputError
from ..memory import check_fits, estimate_memory
from ..model import DiffusionGemma
from ..train.objective import batch_loss
from ..train.trainer import FinetuneConfig, load_state, optimizer_step, run_steps, save_state, seeded_generators
from .data import Example, encode_examples, make_batch, padded_length, read_conversations
from .lora import add_lora, checkpoint_layers, has_lora, load_adapter, lora_config, merge, save_adapter


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
    _prepare(model, examples, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, betas=config.betas,
                            weight_decay=config.weight_decay)
    generators = seeded_generators(config.seed, model.device)
    start, seconds, history = load_state(out, model, opt, generators) if out and resume else (0, 0.0, [])
    if out is not None:
        (out / "finetune_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    def one_step(step: int) -> dict:
        batches, noise = generators
        picked = torch.randint(len(examples), (config.batch_size,), generator=batches).tolist()
        batch = make_batch([examples[i] for i in picked], model.config.canvas_length, model.config.pad_token_id,
                           batches)
        row = optimizer_step(model, opt, config, step, batch, noise)
        row["tokens"] = int(batch.tokens.numel())
        if held and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            row.update(evaluate(model, held, config.batch_size))
        return row

    def save(step: int, seconds: float) -> None:
        save_state(out, model, opt, generators, step, seconds, history)
        if has_lora(model):
            save_adapter(model, out / "adapter", base=str(model.path) if model.path else None)
        elif step == config.steps:
            save_checkpoint(model, out / "model", tokenizer=model.tokenizer)

    model.train()
    try:
        run_steps(config, one_step, history, generators, start=start, seconds=seconds, save=save if out else None,
                  desc="finetune", progress=progress,
                  stop_note=f"the state is saved in {out}/state (continue with resume=True, or --resume)")
    finally:
        model.eval()
    return model, history


def _prepare(model: DiffusionGemma, examples: list[Example], config: FinetuneConfig) -> None:
    """Refuse a run the device cannot hold (before the adapters and the optimizer exist), then add the
    adapters (or unfreeze every weight but the router's) and gradient checkpointing."""
    longest = max(padded_length(e, model.config.canvas_length) for e in examples)
    need = estimate_memory(model, longest, batch_size=config.batch_size,
                           training="full" if config.full else ("lora+experts" if config.experts else "lora"),
                           rank=config.rank)
    check_fits(need, model.device, "this fine-tuning run")
    if config.full:  # every weight trains but the router's (frozen, as in the model's own recipe)
        for name, p in model.named_parameters():
            p.requires_grad_(".router." not in name)
    elif not has_lora(model):
        add_lora(model, lora_config(config.rank, config.alpha, config.experts), seed=config.seed)
    if config.gradient_checkpointing:
        checkpoint_layers(model)


def evaluate(model: DiffusionGemma, examples: list[Example], batch_size: int = 4) -> dict:
    """Held-out losses (the objective's two terms) with fixed draws: every example's first canvas, the
    same noise levels, corruption and self-conditioning coins at every call."""
    noise = torch.Generator(device=model.device).manual_seed(1234)
    was_training = model.training
    model.eval()
    diffusion = lm = weight = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i: i + batch_size]
            b = make_batch(chunk, model.config.canvas_length, model.config.pad_token_id, canvas_index=[0] * len(chunk))
            parts = batch_loss(model, b, generator=noise)
            n = int(b.block_mask.sum())
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

