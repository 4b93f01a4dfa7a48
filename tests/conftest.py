"""Shared fixtures: small random checkpoints written by transformers, and the reference model."""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Triton decides at import time whether its own library functions (tl.sum, ...) run under the
# interpreter: set before any test module imports triton (transformers imports it too), so that the
# kernels run interpreted on a CPU whichever test file is collected first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Nothing is downloaded in tests: huggingface_hub (and transformers through it) reads this at import
# and refuses every request to the Hub. tests/test_hub.py fakes the one download it exercises.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from dgemma_helpers.train.random_checkpoint import make_random_checkpoint  # noqa: E402

# Checkpoint shapes the reference tests run on. All have sliding and full layers (full layers with
# keys as values) and a MoE block.
SHAPES = {
    # Confident random model (wide embeddings => large logit gaps): near-greedy decisions are robust.
    "confident": dict(preset="test", embed_std=1.0),
    # Small window (the sliding ring wraps), two full layers, odd vocabulary, more experts.
    "ring": dict(preset="test", vocab_size=997, sliding_window=8, num_hidden_layers=7, num_experts=12,
                 top_k_experts=3, layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                               "sliding_attention", "sliding_attention", "sliding_attention",
                                               "full_attention"], embed_std=1.0, seed=3),
    # Plain transformers initialisation: an uncertain model, many low-confidence decisions.
    "plain": dict(preset="test", seed=7),
}


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / name, **SHAPES[name])
        return made[name]

    return get


@pytest.fixture(scope="session")
def reference():
    """transformers' DiffusionGemmaForBlockDiffusion for a checkpoint path (cached)."""
    from transformers import DiffusionGemmaForBlockDiffusion

    loaded = {}

    def get(path: Path):
        if path not in loaded:
            loaded[path] = DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32).eval()
        return loaded[path]

    return get


@pytest.fixture(scope="session")
def ours():
    import dgemma_helpers as dg

    loaded = {}

    def get(path: Path):
        if path not in loaded:
            loaded[path] = dg.load_model(path, device="cpu", dtype="float32")
        return loaded[path]

    return get


def left_padded(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask
