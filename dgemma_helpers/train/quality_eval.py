"""Measure a trained small model on held-out text (the judge behind bench/tiny_quality.py): held-out
denoising cross-entropy against a unigram baseline; word validity of generated text for the model, an
untrained one of its shape and transformers' `generate` on the same checkpoint, with the words per
token beside it (validity alone rewards a sampler that collapses into newlines, commas and "the");
tokens per forward and steps per canvas."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..generation import generate
from ..model import DiffusionGemma, init_weights
from .corpus import DEFAULT_CACHE, Corpus, load_corpus, speeches
from .data import TokenData
from .objective import heldout_losses
from .word_validity import load_vocabulary, word_validity, words

NOISE_LEVELS = (0.1, 0.25, 0.5, 0.75, 1.0)


@dataclass
class QualityReport:
    heldout_ce: dict[float, float]  # noise level -> mean cross-entropy over the block (nats/token)
    unigram_ce: float
    lm_ce: float
    validity: float
    validity_other_seeds: float  # the same prompts with seeds + 100: how much of `validity` is luck
    words_per_token: float  # words in the generated text per generated token
    heldout_words_per_token: float  # the same in held-out text: what a sampler that writes prose reaches
    validity_untrained: float
    validity_transformers: float | None
    tokens_per_forward: float
    mean_steps_per_canvas: float
    max_denoising_steps: int
    samples: list[tuple[str, str]] = field(default_factory=list)  # (prompt, continuation)
    seconds: float = 0.0

    def table(self) -> str:
        rows = ["| measure | value |", "|---|---:|"]
        rows += [f"| held-out denoising cross-entropy, noise t={t} (nats/token) | {ce:.3f} |"
                 for t, ce in self.heldout_ce.items()]
        rows += [
            f"| unigram baseline cross-entropy (nats/token) | {self.unigram_ce:.3f} |",
            f"| held-out encoder causal-LM cross-entropy (nats/token) | {self.lm_ce:.3f} |",
            f"| word validity, this model (our engine) | {100 * self.validity:.1f}% |",
            f"| the same with other seeds (+100) | {100 * self.validity_other_seeds:.1f}% |",
            f"| words per generated token, this model (held-out text: {self.heldout_words_per_token:.2f}) | "
            f"{self.words_per_token:.2f} |",
            f"| word validity, untrained model of the same shape | {100 * self.validity_untrained:.1f}% |",
        ]
        if self.validity_transformers is not None:
            rows.append(f"| word validity, this checkpoint through transformers' generate | "
                        f"{100 * self.validity_transformers:.1f}% |")
        rows += [f"| tokens per forward (default adaptive stopping) | {self.tokens_per_forward:.2f} |",
                 f"| mean denoising steps per canvas (max {self.max_denoising_steps}) | "
                 f"{self.mean_steps_per_canvas:.1f} |"]
        return "\n".join(rows)


def heldout_prompts(n: int, corpus: Corpus, words_per_prompt: int = 24, offset: int = 0) -> list[str]:
    """Openings from the held-out plays: a speech's first words, evenly spread through the works.
    `offset` shifts the choice: the sampler sweep tunes on other speeches than the evaluation uses."""
    pool = [s for w in corpus.heldout for s in speeches(w.text) if len(s.split()) >= words_per_prompt]
    step = max(1, len(pool) // n)
    return [" ".join(s.split()[:words_per_prompt]) for s in pool[offset % step::step][:n]]


@dataclass
class Continuations:
    texts: list[str]
    tokens: int  # generated tokens, up to each row's first EOS
    tokens_per_forward: float  # mean over prompts
    steps_per_canvas: float  # mean over canvases

    def words_per_token(self) -> float:
        return sum(len(words(t)) for t in self.texts) / max(1, self.tokens)


def continuations(model: DiffusionGemma, prompts: list[str], *, max_new_tokens: int, seed: int,
                  **settings) -> Continuations:
    """One generation per prompt (seed + i), with `settings` over the checkpoint's defaults."""
    pad = model.generation_settings.pad_token_id
    outs, tpf, steps, tokens = [], [], [], 0
    for i, p in enumerate(prompts):
        r = generate(model, p, max_new_tokens=max_new_tokens, seed=seed + i, **settings)
        outs.append(r.text or "")
        tokens += int((r.token_ids != pad).sum())
        tpf.append(r.tokens_per_forward)
        steps += [s[0] for s in r.steps_per_canvas]
    return Continuations(outs, tokens, sum(tpf) / len(tpf), sum(steps) / len(steps))


def sampler_table(model_dir: str | Path, grid: list[dict], *, prompts: int = 16, max_new_tokens: int = 128,
                  seed: int = 0, cache: Path = DEFAULT_CACHE, corpus: Corpus | None = None) -> list[dict]:
    """Word validity, words per token, tokens per forward and steps per canvas for each sampler setting
    in `grid`, on held-out prompts other than measure_quality's (how the tiny model's defaults were chosen)."""
    model = load_model(model_dir, device="cpu", dtype="float32")
    vocabulary = load_vocabulary(model_dir)
    texts = heldout_prompts(prompts, corpus or load_corpus(cache), offset=1)
    rows = []
    for settings in grid:
        c = continuations(model, texts, max_new_tokens=max_new_tokens, seed=seed, **settings)
        rows.append(dict(settings, validity=word_validity(c.texts, vocabulary), words_per_token=c.words_per_token(),
                         tokens_per_forward=c.tokens_per_forward, steps_per_canvas=c.steps_per_canvas))
    return rows


def measure_quality(model_dir: str | Path, *, prompts: int = 16, max_new_tokens: int = 128, seed: int = 0,
                    with_transformers: bool = True, cache: Path = DEFAULT_CACHE,
                    corpus: Corpus | None = None) -> QualityReport:
    """The quality table of a trained model directory (see the module docstring); `corpus` replaces the
    Shakespeare corpus (tests use a small synthetic one)."""
    t0 = time.perf_counter()
    model = load_model(model_dir, device="cpu", dtype="float32")
    vocabulary = load_vocabulary(model_dir)
    corpus = corpus or load_corpus(cache)
    texts = heldout_prompts(prompts, corpus)

    data = TokenData(corpus, model.tokenizer, seq_len=256, canvas=model.config.canvas_length, chat_fraction=0.0)
    g = torch.Generator().manual_seed(seed)
    ce, lm = heldout_losses(model, [data.sample(8, g, heldout=True) for _ in range(6)], NOISE_LEVELS, seed=1)
    counts = torch.bincount(data.train.long(), minlength=model.config.vocab_size).double() + 1  # add-one
    unigram = -(counts / counts.sum()).log()[data.heldout.long()].mean().item()

    trained = continuations(model, texts, max_new_tokens=max_new_tokens, seed=seed)
    reseeded = continuations(model, texts, max_new_tokens=max_new_tokens, seed=seed + 100)
    untrained = DiffusionGemma(model.config)
    init_weights(untrained, generator=torch.Generator().manual_seed(seed))
    untrained.eval().requires_grad_(False)
    untrained.tokenizer, untrained.generation_settings = model.tokenizer, model.generation_settings
    outs_untrained = continuations(untrained, texts, max_new_tokens=max_new_tokens, seed=seed).texts

    hf = _transformers_continuations(model_dir, model, texts, max_new_tokens, seed) if with_transformers else None
    return QualityReport(
        heldout_ce=ce, unigram_ce=unigram, lm_ce=lm, validity=word_validity(trained.texts, vocabulary),
        validity_other_seeds=word_validity(reseeded.texts, vocabulary), words_per_token=trained.words_per_token(),
        heldout_words_per_token=sum(len(words(w.text)) for w in corpus.heldout) / len(data.heldout),
        validity_untrained=word_validity(outs_untrained, vocabulary),
        validity_transformers=None if hf is None else word_validity(hf, vocabulary),
        tokens_per_forward=trained.tokens_per_forward, mean_steps_per_canvas=trained.steps_per_canvas,
        max_denoising_steps=model.generation_settings.max_denoising_steps,
        samples=list(zip(texts[:3], trained.texts[:3])), seconds=time.perf_counter() - t0)


def _transformers_continuations(model_dir, model: DiffusionGemma, texts: list[str], max_new_tokens: int,
                                seed: int) -> list[str]:
    from transformers import DiffusionGemmaForBlockDiffusion

    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = model.tokenizer
    eos = set(model.generation_settings.eos_token_ids)
    outs = []
    for i, p in enumerate(texts):
        ids = torch.tensor([tok.encode(p)])
        torch.manual_seed(seed + i)
        with torch.no_grad():
            new = ref.generate(ids, max_new_tokens=max_new_tokens).sequences[0, ids.shape[1]:].tolist()
        cut = next((j for j, t in enumerate(new) if t in eos), len(new))
        outs.append(tok.decode(new[:cut], skip_special_tokens=True))
    return outs


