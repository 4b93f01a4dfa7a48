"""Small random DiffusionGemma checkpoints, written by transformers itself (the format's ground
truth), with a small BPE tokenizer and chat template. They are untrained: their text is noise.
Tests use them; `python -m dgemma_helpers make-random` writes one for demos."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from ..atomic import atomic_dir
from ..checkpoint import generation_json
from ..config import TINY_VISION_CONFIG, GenerationSettings
from ..tokenizer import SPECIAL_TOKENS, train_tokenizer

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
    # The official text config at full width, cut to one sliding and one full-attention layer: the
    # shape where the head (vocab 262,144) and the experts (128, top-8) cost what they cost in the
    # real model. About 2.3B parameters: 4.6 GB in bfloat16 (see bench/engine_vs_reference.py).
    "official-2layer": dict(vocab_size=262_144, hidden_size=2816, intermediate_size=2112, num_hidden_layers=2,
                            layer_types=["sliding_attention", "full_attention"], num_attention_heads=16,
                            num_key_value_heads=8, head_dim=256, global_head_dim=512,
                            num_global_key_value_heads=2, attention_k_eq_v=True, num_experts=128,
                            top_k_experts=8, moe_intermediate_size=704, sliding_window=1024,
                            max_position_embeddings=262_144, final_logit_softcapping=30.0,
                            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                                             "full_attention": {"rope_type": "proportional",
                                                                "partial_rotary_factor": 0.25,
                                                                "rope_theta": 1_000_000.0}}),
}
_SAMPLE_TEXT = (
    "Block diffusion writes a whole canvas of tokens at once. It starts from noise and, round after round, "
    "keeps the tokens it is sure of and redraws the rest. When the canvas is stable it is committed, and the "
    "next canvas begins. The sky is blue because air scatters short wavelengths of sunlight more than long ones."
)


def make_random_checkpoint(path: str | os.PathLike, preset: str = "test", *, seed: int = 0, canvas_length: int = 16,
                           tokenizer: bool = True, embed_std: float | None = None, shared_layer_scalars: bool = False,
                           vision_config: dict[str, Any] | None = None, max_soft_tokens: int = 70,
                           dtype: torch.dtype = torch.float32, **overrides: Any) -> Path:
    """Write an untrained checkpoint with transformers' `save_pretrained`, atomically.

    `embed_std` widens the tied embedding so that the random model is confident (large logit gaps):
    near-greedy decisions then survive float rounding in comparisons. `shared_layer_scalars` gives the
    encoder's layer scalars the denoiser's values, as trained checkpoints have them (vLLM loads one per
    layer for both passes). `vision_config` (gemma4_vision) gives it a random vision tower in the
    official layout (image token ids, bidirectional attention "vision", a processor_config.json with
    `max_soft_tokens` per image) instead of the placeholder. `dtype`: the weights are built in it.
    """
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion  # seconds to import: on use

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    text = dict(PRESETS[preset], **overrides)
    text.setdefault("eos_token_id", [1, 5])  # <eos>, <end_of_turn>
    image_ids = {}
    if vision_config is not None:
        text.setdefault("use_bidirectional_attention", "vision")
        boi, image, eoi = (len(SPECIAL_TOKENS) + i for i in range(3))  # train_tokenizer(image_tokens=True)
        image_ids = dict(boi_token_id=boi, image_token_id=image, eoi_token_id=eoi)
    config = DiffusionGemmaConfig(text_config=text, vision_config=dict(vision_config or TINY_VISION_CONFIG),
                                  canvas_length=canvas_length, **image_ids)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion._from_config(config, dtype=dtype).eval()
    _randomize(model, seed, embed_std, shared_layer_scalars, vision=vision_config is not None)
    path = Path(path)
    with atomic_dir(path) as tmp:
        # transformers draws a "Writing model shards" bar even for one small file, left frozen at 0% in a
        # notebook: off while saving.
        bars_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model.save_pretrained(tmp)
        finally:
            if bars_on:
                hf_logging.enable_progress_bar()
        # Like the official checkpoint: the published sampler defaults, pad 0 and the EOS list.
        settings = GenerationSettings(eos_token_ids=tuple(text["eos_token_id"]), pad_token_id=0)
        (tmp / "generation_config.json").write_text(json.dumps(generation_json(settings), indent=2) + "\n")
        if tokenizer:
            train_tokenizer([_SAMPLE_TEXT] * 4, vocab_size=min(text["vocab_size"], 400),
                            image_tokens=vision_config is not None).save_pretrained(tmp)
        if vision_config is not None:
            (tmp / "processor_config.json").write_text(json.dumps(processor_json(vision_config, max_soft_tokens),
                                                                  indent=2) + "\n")
        (tmp / "README.md").write_text(
            f"# Untrained random DiffusionGemma ({preset} preset)\n\nRandom weights: its text is noise. Made by "
            "`python -m dgemma_helpers make-random` to exercise the engine without a download.\n")
        (tmp / "dgemma_random.json").write_text(json.dumps({"preset": preset, "seed": seed, "untrained": True}))
    return path


def _randomize(model, seed: int, embed_std: float | None, shared_layer_scalars: bool, vision: bool) -> None:
    """Random norm weights and layer scalars (transformers initialises them to 1), so that a mix-up
    between any two of them shows in a comparison; the options' embeddings and scalars."""
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "vision" not in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        scalars = {name: b for name, b in model.named_buffers() if name.endswith("layer_scalar")}
        for b in scalars.values():
            b.copy_(1 + 0.2 * torch.randn(b.shape, generator=g))
        if shared_layer_scalars:
            for name, b in scalars.items():
                if "encoder" in name:
                    b.copy_(scalars[name.replace("encoder.language_model.", "decoder.")])
        if embed_std is not None:
            model.model.decoder.embed_tokens.weight.normal_(0.0, embed_std, generator=g)
        if vision:
            model.model.encoder.embed_vision.embedding_projection.weight.normal_(0.0, 1.0, generator=g)


def processor_json(vision_config: dict[str, Any], max_soft_tokens: int) -> dict[str, Any]:
    """processor_config.json in the official Gemma 4 layout: the image processor's settings (its
    defaults, with the tower's patch and pooling sizes) and the soft tokens per image."""
    return {
        "processor_class": "Gemma4Processor", "image_seq_length": max_soft_tokens,
        "image_processor": {
            "image_processor_type": "Gemma4ImageProcessor", "do_convert_rgb": True, "do_normalize": False,
            "do_rescale": True, "do_resize": True, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0],
            "rescale_factor": 1 / 255, "resample": 3, "image_seq_length": max_soft_tokens,
            "max_soft_tokens": max_soft_tokens, "patch_size": vision_config.get("patch_size", 16),
            "pooling_kernel_size": vision_config.get("pooling_kernel_size", 3),
        },
    }
