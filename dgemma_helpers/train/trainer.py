"""Train a small DiffusionGemma from scratch, and the loop fine-tuning (sft/loop.py) shares: AdamW,
warm-up + cosine, gradient clipping, bf16 autocast on GPU (float32 on CPU), a tqdm bar, and resumable
state (safetensors + JSON: nothing is pickled). The settings of both loops live here, so that the CLI
reads their defaults without importing peft."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..atomic import atomic_dir
from ..checkpoint import save_checkpoint
from ..config import FULL, SLIDING, GenerationSettings, ModelConfig
from ..devices import resolve_device
from ..errors import CheckpointError
from ..model import DiffusionGemma, init_weights
from ..signals import deferred, stop_on_signals
from ..tokenizer import load_tokenizer, train_tokenizer
from .corpus import DEFAULT_CACHE, Corpus, load_corpus
from .data import Batch, TokenData
from .objective import batch_loss, heldout_losses


def tiny_model_config(vocab_size: int = 4096, **overrides) -> ModelConfig:
    """dgemma-tiny: the real model's shape in miniature (see models/dgemma-tiny/MODEL_CARD.md)."""
    shape = dict(vocab_size=vocab_size, hidden_size=256, intermediate_size=512, num_layers=6, num_heads=4,
                 sliding_kv_heads=2, sliding_head_dim=64, sliding_window=256, full_kv_heads=1, full_head_dim=128,
                 layer_types=(SLIDING,) * 5 + (FULL,), num_experts=16, top_k_experts=4, moe_intermediate_size=64,
                 max_position_embeddings=8192, canvas_length=64, pad_token_id=0, bos_token_id=2,
                 eos_token_ids=(1, 5))
    shape.update(overrides)
    return ModelConfig(**shape)


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    clip: float = 1.0
    chat_fraction: float = 0.25
    self_conditioning_p: float = 0.5
    lm_weight: float = 1.0  # the encoder's causal-LM loss beside the diffusion loss
    vocab_size: int = 4096
    eval_every: int = 500
    eval_batches: int = 4
    save_every: int = 250
    seed: int = 0
    model: dict = field(default_factory=dict)  # ModelConfig overrides

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


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
    lm_weight: float = 1.0
    self_conditioning_p: float = 0.5
    max_tokens: int | None = None  # longest example (default: the model's context)
    gradient_checkpointing: bool = True
    eval_every: int = 50
    save_every: int = 50
    seed: int = 0

    lr_at = TrainConfig.lr_at


@dataclass
class TrainResult:
    model: DiffusionGemma
    tokenizer: object
    log: list[dict]
    seconds: float


def evaluate(model: DiffusionGemma, data: TokenData, config: TrainConfig, noise_levels=(0.25, 0.5, 0.75, 1.0)) -> dict:
    """Held-out losses on fixed batches: the diffusion cross-entropy per noise level, and the LM's."""
    g = torch.Generator().manual_seed(1234)
    batches = [data.sample(config.batch_size, g, heldout=True) for _ in range(config.eval_batches)]
    ce, lm = heldout_losses(model, batches, noise_levels, seed=7)
    return {**{f"heldout_diffusion_t{t}": v for t, v in ce.items()}, "heldout_lm": lm}


def train(config: TrainConfig, run_dir: str | Path, *, device: str | None = None, corpus_cache: Path = DEFAULT_CACHE,
          corpus: Corpus | None = None, progress: bool = True, resume: bool = True) -> TrainResult:
    """Train with `config`; state and logs go to `run_dir`, which a later call resumes from.
    `corpus` replaces the Shakespeare corpus (tests use a small synthetic one)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus = corpus or load_corpus(corpus_cache)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    if tokenizer is None:
        tokenizer = train_tokenizer([w.text for w in corpus.train], config.vocab_size, model_max_length=8192)
        tokenizer.save_pretrained(run_dir / "tokenizer")
    model_config = tiny_model_config(vocab_size=len(tokenizer), **config.model)
    data = TokenData(corpus, tokenizer, config.seq_len, model_config.canvas_length, config.chat_fraction)

    model = DiffusionGemma(model_config)
    init_weights(model, generator=torch.Generator().manual_seed(config.seed))
    model.to(resolve_device(device)).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)
    generators = seeded_generators(config.seed, model.device)
    start, seconds, log = load_state(run_dir, model, opt, generators) if resume else (0, 0.0, [])
    (run_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    save = functools.partial(save_state, run_dir, model, opt, generators, log=log)
    seconds = run_steps(config, lambda step: _train_step(model, opt, data, config, step, generators), log,
                        generators, start=start, seconds=seconds, save=save, desc="train", progress=progress,
                        stop_note=f"the state is saved in {run_dir / 'state'} (run again to resume)")
    model.eval()
    return TrainResult(model, tokenizer, log, seconds)


def _train_step(model, opt, data, config: TrainConfig, step: int, generators: list[torch.Generator]) -> dict:
    """One optimizer step and its log row, with the held-out evaluation when it is due."""
    batches, noise = generators
    row = optimizer_step(model, opt, config, step, data.sample(config.batch_size, batches), noise)
    if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
        row.update(evaluate(model, data, config))
        tqdm.write(f"step {step + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("heldout")))
    return row


def export(result: TrainResult, out: str | Path, dtype: torch.dtype = torch.bfloat16, extra_files=None,
           sampler: dict | None = None) -> Path:
    """Save the trained model as a checkpoint directory (bfloat16, like the official one), with
    `sampler` overriding the published sampler defaults in its generation_config.json."""
    model = copy.deepcopy(result.model).to("cpu", dtype)  # the trained model itself stays as it is
    settings = GenerationSettings(eos_token_ids=model.config.eos_token_ids, pad_token_id=model.config.pad_token_id)
    settings = settings.replace(**(sampler or {}))
    return save_checkpoint(model, out, tokenizer=result.tokenizer, generation_settings=settings, extra_files=extra_files)


# ---- the loop both training and fine-tuning run ----------------------------------------------------
def seeded_generators(seed: int, device: torch.device) -> list[torch.Generator]:
    """The batches' generator and the noise's (noise levels, corruption, self-conditioning coins)."""
    return [torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed + 1)]


def optimizer_step(model: DiffusionGemma, opt: torch.optim.Optimizer, config: TrainConfig | FinetuneConfig,
                   step: int, batch: Batch, noise: torch.Generator) -> dict:
    """One AdamW step on `batch` at the schedule's learning rate; returns the log row's figures."""
    lr = config.lr_at(step)
    for group in opt.param_groups:
        group["lr"] = lr
    on_gpu = model.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else contextlib.nullcontext():
        parts = batch_loss(model, batch, generator=noise, self_conditioning_p=config.self_conditioning_p,
                           lm_weight=config.lm_weight)
    opt.zero_grad(set_to_none=True)
    parts.total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], config.clip)
    opt.step()
    return {"step": step + 1, "loss": parts.total.item(), "diffusion": parts.diffusion.item(), "lm": parts.lm.item(),
            "grad_norm": float(grad_norm), "lr": lr}


def run_steps(config: TrainConfig | FinetuneConfig, one_step: Callable[[int], dict], log: list[dict],
              generators: list[torch.Generator], *, start: int, seconds: float,
              save: Callable[[int, float], None] | None, desc: str, progress: bool, stop_note: str) -> float:
    """Steps start..config.steps, each `one_step(step)` adding its row to `log`, with `save(step, seconds)`
    every save_every steps and at the end; returns the run's seconds. A stop signal (Ctrl-C, SIGTERM,
    SIGHUP) waits for the step under way; a KeyboardInterrupt raised inside a step undoes its random
    draws. Either way the state is saved as it stands (atomically), so that a resumed run equals an
    uninterrupted one bit for bit, and the interrupt goes on."""
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not progress, desc=desc)
    t0 = time.perf_counter() - seconds
    done = saved = start
    try:
        with stop_on_signals():
            for step in bar:
                with deferred():
                    before = [g.get_state() for g in generators]
                    try:
                        row = one_step(step)
                    except KeyboardInterrupt:
                        for g, state in zip(generators, before):
                            g.set_state(state)
                        raise
                    done = step + 1
                    log.append(dict(row, seconds=time.perf_counter() - t0))
                    bar.set_postfix(loss=f"{row['loss']:.3f}", diff=f"{row['diffusion']:.3f}", lm=f"{row['lm']:.3f}")
                    if save is not None and (done % config.save_every == 0 or done == config.steps):
                        save(done, time.perf_counter() - t0)
                        saved = done
    except KeyboardInterrupt:
        if save is not None:
            if done != saved:
                save(done, time.perf_counter() - t0)
            bar.write(f"stopped after step {done}; {stop_note}")
        raise
    finally:
        bar.close()
    return time.perf_counter() - t0


# ---- resumable state: tensors in safetensors, the rest in JSON ------------------------------------
def save_state(run_dir: Path, model, opt, generators: list[torch.Generator], step: int, seconds: float,
               log: list[dict]) -> None:
    """Write run_dir/state/ atomically: the weights that train (a fine-tuning run's adapters, not the
    frozen model), the optimizer's state, the generators', the step and the log."""
    tensors = {f"model.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    names = {id(p): n for n, p in model.named_parameters()}
    scalars = {}
    for p, s in opt.state.items():
        for key, value in s.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"opt.{names[id(p)]}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{names[id(p)]}.{key}"] = float(value)
    for i, gen in enumerate(generators):
        tensors[f"generator.{i}"] = gen.get_state()
    with atomic_dir(run_dir / "state") as tmp:
        save_file(tensors, tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps({"step": step, "seconds": seconds, "opt_scalars": scalars}))
        (tmp / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))


def load_state(run_dir: Path, model, opt, generators: list[torch.Generator]) -> tuple[int, float, list[dict]]:
    """Restore what save_state wrote; returns the step, the seconds and the log ((0, 0.0, []) for a new run)."""
    state_dir = run_dir / "state"
    if not (state_dir / "state.json").exists():
        return 0, 0.0, []
    meta = json.loads((state_dir / "state.json").read_text())
    tensors = load_file(state_dir / "state.safetensors")
    saved = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    fix = "resume with the model and settings that wrote it, or use another run directory"
    try:
        unexpected = model.load_state_dict(saved, strict=False).unexpected_keys
    except RuntimeError as e:  # a shape differs
        raise CheckpointError(f"{state_dir} holds the state of another model or settings "
                              f"({str(e).splitlines()[-1].strip()}): {fix}.") from None
    if unexpected:
        raise CheckpointError(f"{state_dir} holds the state of another model ({unexpected[0]!r} is not one of its "
                              f"weights): {fix}.")
    for name, p in model.named_parameters():
        state = {key: tensors[f"opt.{name}.{key}"].to(p.device) for key in ("exp_avg", "exp_avg_sq")
                 if f"opt.{name}.{key}" in tensors}
        if f"{name}.step" in meta["opt_scalars"]:
            state["step"] = torch.tensor(meta["opt_scalars"][f"{name}.step"])
        if state:
            opt.state[p] = state
    for i, gen in enumerate(generators):
        gen.set_state(tensors[f"generator.{i}"])
    log = [json.loads(line) for line in (state_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return meta["step"], meta["seconds"], log
