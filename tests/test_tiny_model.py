"""The shipped models/dgemma-tiny: loads in our engine and in transformers, generates real text.
Its quality is judged by bench/tiny_quality.py (numbers in the model card), not asserted here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.train.word_validity import load_vocabulary, word_validity, words

TINY = Path(__file__).resolve().parents[1] / "models" / "dgemma-tiny"


def test_shipped_checkpoint_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in TINY.iterdir()}
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "MODEL_CARD.md",
                 "train_words.txt"):
        assert name in files, f"models/dgemma-tiny lacks {name}: run `make train-tiny`"
    assert sum(files.values()) <= 25 * 2**20


def test_our_engine_generates_text():
    model = dg.load_model(TINY)
    result = dg.generate(model, "ROMEO.\nBut soft, what light", max_new_tokens=64, seed=0)
    assert result.text and result.text.strip()
    assert result.token_ids.shape == (1, 64)


def test_transformers_loads_and_generates_with_the_shipped_checkpoint():
    from transformers import DiffusionGemmaForBlockDiffusion

    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(TINY, dtype=torch.float32).eval()
    tok = dg.load_model(TINY).tokenizer
    ids = torch.tensor([tok.encode("To be, or not to be")])
    torch.manual_seed(0)
    with torch.no_grad():
        out = ref.generate(ids, max_new_tokens=64).sequences[0, ids.shape[1]:]
    assert tok.decode(out, skip_special_tokens=True).strip()


def test_word_validity_counts_words_found():
    vocab = {"to", "be", "or", "not"}
    assert words("To be, or NOT to be -- o'er") == ["to", "be", "or", "not", "to", "be", "o'er"]
    assert word_validity(["To be, or not", "zzz be"], vocab) == pytest.approx(5 / 6)
    assert load_vocabulary(TINY) >= {"the", "and", "king"}
