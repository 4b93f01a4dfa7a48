"""Small random DiffusionGemma checkpoints, written by transformers itself (the format's ground
truth), with a small BPE tokenizer and chat template. They are untrained: their text is noise.
Tests use them; `python -m dgemma_helpers make-random` writes one for demos."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_dir
from ..checkpoint import generation_json
from ..config import TINY_VISION_CONFIG, GenerationSettings
from ..tokenizer import train_tokenizer

# Shapes of the real model in miniature: sliding + full layers (keys as values), MoE, odd vocab.
PRESETS: dict[str, dict[str, Any]] = {
    "test": dict(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, global_head_dim=32,
                 num_global_key_value_heads=1, num_experts=8, top_k_experts=2, moe_intermediate_size=24,
                 sliding_window=16, max_position_embeddings=4096),
    # The 2-core CPU benchmark's toy config (see bench/engine_vs_reference.py).
    "toy": dict(vocab_size=4096, hidden_size=256, intermediate_size=256, num_hidden_layers=6,
                num_attention_heads=4, num_key_value_heads=2, head_dim=64, global_head_dim=128,
                num_global_key_value_heads=1, num_experts=16, top_k_experts=4, moe_intermediate_size=64,
                sliding_window=1024, max_position_embeddings=131072),
}
_SAMPLE_TEXT = (
    "Block diffusion writes a whole canvas of tokens at once. It starts from noise and, round after round, "
    "keeps the tokens it is sure of and redraws the rest. When the canvas is stable it is committed, and the "
    "next canvas begins. The sky is blue because air scatters short wavelengths of sunlight more than long ones."
)


def make_random_checkpoint(path: str | os.PathLike, preset: str = "test", *, seed: int = 0, canvas_length: int = 16,
                           tokenizer: bool = True, embed_std: float | None = None, shared_layer_scalars: bool = False,
                           **overrides: Any) -> Path:
    """Write an untrained checkpoint with transformers' `save_pretrained`, atomically.

    `embed_std` widens the tied embedding so that the random model is confident (large logit gaps),
    which makes near-greedy sampling decisions robust to float rounding in comparisons.
    `shared_layer_scalars` gives the encoder's layer scalars the denoiser's values, as trained
    checkpoints have them: vLLM loads one per layer for both passes (the kit and transformers keep two).
    """
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    text = dict(PRESETS[preset], **overrides)
    text.setdefault("eos_token_id", [1, 5])  # <eos>, <end_of_turn>
    config = DiffusionGemmaConfig(text_config=text, vision_config=dict(TINY_VISION_CONFIG), canvas_length=canvas_length)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        # Random norm weights and layer scalars (transformers initialises them to 1), so that a
        # mix-up between any two of them shows in a comparison.
        for name, p in model.named_parameters():
            if p.ndim == 1 and "vision" not in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        buffers = dict(model.named_buffers())
        for name, b in buffers.items():
            if name.endswith("layer_scalar"):
                b.copy_(1 + 0.2 * torch.randn(b.shape, generator=g))
        if shared_layer_scalars:
            for name, b in buffers.items():
                if name.endswith("layer_scalar") and "encoder" in name:
                    b.copy_(buffers[name.replace("encoder.language_model.", "decoder.")])
        if embed_std is not None:
            model.model.decoder.embed_tokens.weight.normal_(0.0, embed_std, generator=g)
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        # Like the official checkpoint: the published sampler defaults, pad 0 and the EOS list.
        settings = GenerationSettings(eos_token_ids=tuple(text["eos_token_id"]), pad_token_id=0)
        (tmp / "generation_config.json").write_text(json.dumps(generation_json(settings), indent=2) + "\n")
        if tokenizer:
            vocab = text["vocab_size"]
            train_tokenizer([_SAMPLE_TEXT] * 4, vocab_size=min(vocab, 400)).save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"# Untrained random DiffusionGemma ({preset} preset)\n\nRandom weights: its text is noise. Made by "
            "`python -m dgemma_helpers make-random` to exercise the engine without a download.\n")
        (tmp / "dgemma_random.json").write_text(json.dumps({"preset": preset, "seed": seed, "untrained": True}))
    return path
