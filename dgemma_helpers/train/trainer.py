"""Train a small DiffusionGemma from scratch: AdamW, warm-up + cosine, gradient clipping, bf16
autocast on GPU (float32 on CPU), periodic held-out evaluation, a tqdm bar, and resumable state
(safetensors + JSON: nothing is pickled). The result is saved as a DiffusionGemmaForBlockDiffusion
checkpoint that transformers loads too."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_dir
from ..checkpoint import save_checkpoint
from ..config import FULL, SLIDING, GenerationSettings, ModelConfig
from ..devices import resolve_device
from ..errors import CheckpointError
from ..model import DiffusionGemma, init_weights
from ..signals import deferred, stop_on_signals
from ..tokenizer import train_tokenizer
from .corpus import DEFAULT_CACHE, Corpus, load_corpus
from .data import TokenData
from .objective import diffusion_loss


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
class TrainResult:
    model: DiffusionGemma
    tokenizer: object
    log: list[dict]
    seconds: float


def evaluate(model: DiffusionGemma, data: TokenData, config: TrainConfig, noise_levels=(0.25, 0.5, 0.75, 1.0)) -> dict:
    """Held-out losses on fixed batches: the diffusion cross-entropy per noise level, and the LM's."""
    g = torch.Generator().manual_seed(1234)
    batches = [data.sample(config.batch_size, g, heldout=True) for _ in range(config.eval_batches)]
    was_training = model.training
    model.eval()
    out = {}
    with torch.no_grad():
        for t in noise_levels:
            losses, lms = [], []
            for b in batches:
                tt = torch.full((len(b.tokens),), t)
                parts = diffusion_loss(model, b.tokens.to(model.device), b.block_start.to(model.device),
                                       generator=torch.Generator().manual_seed(7), t=tt.to(model.device),
                                       lm_mask=b.lm_mask.to(model.device))
                losses.append(parts.diffusion.item())
                lms.append(parts.lm.item())
            out[f"heldout_diffusion_t{t}"] = sum(losses) / len(losses)
            out["heldout_lm"] = sum(lms) / len(lms)
    model.train(was_training)
    return out


def train(config: TrainConfig, run_dir: str | Path, *, device: str | None = None, corpus_cache: Path = DEFAULT_CACHE,
          corpus: Corpus | None = None, progress: bool = True, resume: bool = True) -> TrainResult:
    """Train with `config`; state and logs go to `run_dir`, which a later call resumes from.
    `corpus` replaces the Shakespeare corpus (tests use a small synthetic one)."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    corpus = corpus or load_corpus(corpus_cache)
    tok_dir = run_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    else:
        tokenizer = train_tokenizer([w.text for w in corpus.train], config.vocab_size, model_max_length=8192)
        tokenizer.save_pretrained(tok_dir)
    model_config = tiny_model_config(vocab_size=len(tokenizer), **config.model)
    data = TokenData(corpus, tokenizer, config.seq_len, model_config.canvas_length, config.chat_fraction)

    model = DiffusionGemma(model_config)
    init_weights(model, generator=torch.Generator().manual_seed(config.seed))
    model.to(dev).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=config.betas)
    g = torch.Generator().manual_seed(config.seed)  # batches
    noise = torch.Generator(device=dev).manual_seed(config.seed + 1)  # noise levels, corruption, SC coin flips
    log: list[dict] = []
    start, elapsed = 0, 0.0
    if resume and (run_dir / "state" / "state.json").exists():
        start, elapsed, log = load_state(run_dir, model, opt, [g, noise])
    (run_dir / "train_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2))

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, disable=not progress, desc="train")
    t0 = time.perf_counter() - elapsed
    # A stop signal (Ctrl-C, SIGTERM, SIGHUP) waits for the step under way to finish; then the state is
    # saved as it stands (atomically: the previous one stays whole until the new one is) and the
    # signal goes on. A later call resumes from that step.
    done_steps = saved_steps = start
    try:
        with stop_on_signals():
            for step in bar:
                with deferred():
                    _train_step(model, opt, data, config, step, g, noise, dev, autocast, bar, log, t0)
                    done_steps = step + 1
                    if done_steps % config.save_every == 0 or done_steps == config.steps:
                        save_state(run_dir, model, opt, [g, noise], done_steps, time.perf_counter() - t0, log)
                        saved_steps = done_steps
    except KeyboardInterrupt:
        if done_steps != saved_steps:
            save_state(run_dir, model, opt, [g, noise], done_steps, time.perf_counter() - t0, log)
        bar.write(f"stopped after step {done_steps}; the state is saved in {run_dir / 'state'} (run again to resume)")
        raise
    model.eval()
    return TrainResult(model, tokenizer, log, time.perf_counter() - t0)


def _train_step(model, opt, data, config: TrainConfig, step: int, g, noise, dev, autocast, bar, log: list[dict],
                t0: float) -> None:
    """One optimizer step, its log row (appended to `log`) and, when due, the held-out evaluation."""
    for group in opt.param_groups:
        group["lr"] = config.lr_at(step)
    batch = data.sample(config.batch_size, g)
    with autocast:
        parts = diffusion_loss(model, batch.tokens.to(dev), batch.block_start.to(dev), generator=noise,
                               self_conditioning_p=config.self_conditioning_p, lm_mask=batch.lm_mask.to(dev))
    opt.zero_grad(set_to_none=True)
    parts.total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
    opt.step()
    row = {"step": step + 1, "loss": parts.total.item(), "diffusion": parts.diffusion.item(), "lm": parts.lm.item(),
           "grad_norm": float(grad_norm), "lr": config.lr_at(step), "seconds": time.perf_counter() - t0}
    bar.set_postfix(loss=f"{row['loss']:.3f}", diff=f"{row['diffusion']:.3f}", lm=f"{row['lm']:.3f}")
    if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
        row.update(evaluate(model, data, config))
        bar.write(f"step {step + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("heldout")))
    log.append(row)


def export(result: TrainResult, out: str | Path, dtype: torch.dtype = torch.bfloat16, extra_files=None,
           sampler: dict | None = None) -> Path:
    """Save the trained model as a checkpoint directory (bfloat16, like the official one), with
    `sampler` overriding the published sampler defaults in its generation_config.json."""
    model = copy.deepcopy(result.model).to("cpu", dtype)  # the trained model itself stays as it is
    settings = GenerationSettings(eos_token_ids=model.config.eos_token_ids, pad_token_id=model.config.pad_token_id)
    settings = settings.replace(**(sampler or {}))
    return save_checkpoint(model, out, tokenizer=result.tokenizer, generation_settings=settings, extra_files=extra_files)


# ---- resumable state: tensors in safetensors, the rest in JSON ------------------------------------
def save_state(run_dir: Path, model, opt, generators: list[torch.Generator], step: int, seconds: float,
                log: list[dict]) -> None:
    """Write run_dir/state/ atomically (an interrupted save leaves the previous state as it was): the
    weights that train (a fine-tuning run's adapters, not the frozen model), the optimizer's state,
    the generators', the step and the log."""
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
    state_dir = run_dir / "state"
    meta = json.loads((state_dir / "state.json").read_text())
    tensors = load_file(state_dir / "state.safetensors")
    saved = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
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

