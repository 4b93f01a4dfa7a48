"""The CPU's fast pieces give the reference's answers: the head chosen by memory, its reused buffers,
the prepacked experts, and the built-in benchmark shapes. No timing is asserted anywhere."""

from __future__ import annotations

import json
import os

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers import memory, packed_experts
from dgemma_helpers.benchmarks import shapes
from dgemma_helpers.config import ModelConfig
from dgemma_helpers.errors import InputError
from dgemma_helpers.head import HeadBuffers, materialized_head, tiled_head
from dgemma_helpers.model import Experts
from dgemma_helpers.train.random_checkpoint import PRESETS


def settings(**kw):
    return dict(input_ids=[[5, 6, 7, 8]], seed=3, max_new_tokens=32, max_denoising_steps=6, **kw)


def test_the_head_is_chosen_by_memory_and_both_give_the_same_text(checkpoint, ours, monkeypatch):
    """Where the [batch, canvas, vocab] logits fit, the materialized head runs; where free memory is
    short, the tiled one; full probabilities (transformers' RNG, top-k) only come materialized."""
    model = ours(checkpoint("confident"))
    config, cpu = model.config, torch.device("cpu")
    args = dict(max_new_tokens=32, batch_size=1, dtype=torch.float32, device=cpu)
    materialized = memory.estimate_memory(config, 4, head="materialized", **args)
    tiled = memory.estimate_memory(config, 4, head="tiled", **args)
    assert tiled.denoise < materialized.denoise
    monkeypatch.setattr(memory, "available_memory", lambda device: (materialized.working + tiled.working) // 2)
    assert memory.fitting_head(config, 4, probabilities=False, **args)[0] == "tiled"
    assert memory.fitting_head(config, 4, probabilities=True, **args)[0] == "materialized"  # then refused
    chosen = []
    real = dg.generation.denoise_head
    monkeypatch.setattr(dg.generation, "denoise_head", lambda *a, **k: chosen.append(a[3]) or real(*a, **k))
    short = dg.generate(model, **settings())
    monkeypatch.setattr(memory, "available_memory", lambda device: None)
    roomy = dg.generate(model, **settings())
    assert set(chosen) == {"tiled", "materialized"} and chosen[0] == "tiled" and chosen[-1] == "materialized"
    assert torch.equal(short.token_ids, roomy.token_ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reused_head_buffers_change_nothing(checkpoint, dtype):
    model = dg.load_model(checkpoint("plain"), device="cpu", dtype="float32").to(dtype)
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(2, model.config.canvas_length, model.config.hidden_size, generator=g) * 3).to(dtype)
    buffers = HeadBuffers()
    with torch.no_grad():
        materialized_head(model, hidden * 2, 0.5, probs=True, buffers=buffers)  # leaves other values behind
        again = materialized_head(model, hidden, 0.7, probs=True, buffers=buffers)
        fresh = materialized_head(model, hidden, 0.7, probs=True)
        for name in ("argmax", "entropy", "soft_probs", "processed", "probs"):
            assert torch.equal(getattr(again, name), getattr(fresh, name)), name
        # The soft input the next round makes from the probabilities equals the tiled head's online sum.
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        a, b = fresh.soft_input(model).float(), tiled_head(model, hidden, 0.7).soft.float()
        assert ((a - b).norm() / b.norm()).item() < tol


def test_materialized_soft_input_is_transformers_arithmetic(checkpoint):
    """In bfloat16 transformers rounds the tempered logits to bfloat16 before its softmax: the
    materialized head's soft input is exactly that, softmax(processed.bf16) @ E * sqrt(hidden)."""
    model = dg.load_model(checkpoint("plain"), device="cpu", dtype="bfloat16")
    hidden = torch.randn(1, model.config.canvas_length, model.config.hidden_size, generator=torch.Generator()
                         .manual_seed(1)).bfloat16() * 3
    with torch.no_grad():
        head = materialized_head(model, hidden, 0.6, probs=False)
        expected = model.soft_embedding(head.processed.to(torch.bfloat16))
        assert torch.equal(head.soft_input(model), expected)


def experts_of(config: ModelConfig, dtype: torch.dtype, seed: int = 0) -> Experts:
    experts = Experts(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return experts.to(dtype)


WIDE = ModelConfig(hidden_size=1024, num_experts=8, top_k_experts=2, moe_intermediate_size=512)  # 1M-weight matrices


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_experts_equal_the_padded_batched_gemm(dtype, monkeypatch):
    if packed_experts._PACK is None:
        pytest.skip("this torch has no oneDNN: the padded batched GEMM runs instead (also tested here)")
    experts = experts_of(WIDE, dtype)
    x = torch.randn(64, WIDE.hidden_size).to(dtype)
    weights, chosen = torch.softmax(torch.randn(64, WIDE.num_experts), -1).topk(WIDE.top_k_experts, -1)
    with torch.inference_mode():
        packed = experts(x, weights, chosen)
        assert experts.packed is not None  # the packed path ran
        experts.packable = False
        padded = experts(x, weights, chosen)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert ((packed.float() - padded.float()).abs().max() / padded.float().abs().max()).item() < tol

    # A weight changed in place (an optimizer step): new packed copies, the new answer.
    experts.packable = True
    with torch.no_grad():
        experts.down_proj.mul_(2)
    with torch.inference_mode():
        doubled = experts(x, weights, chosen)
    assert ((doubled.float() - 2 * packed.float()).abs().max() / packed.float().abs().max()).item() < 2 * tol


def test_prepacked_experts_only_where_they_belong(monkeypatch):
    experts = experts_of(WIDE, torch.float32)
    x = torch.randn(8, WIDE.hidden_size)
    weights, chosen = torch.softmax(torch.randn(8, WIDE.num_experts), -1).topk(2, -1)
    out = experts(x, weights, chosen)  # gradients on: the packed GEMM has no backward
    assert experts.packed is None and out.requires_grad
    small = experts_of(ModelConfig(hidden_size=64, num_experts=4, top_k_experts=2, moe_intermediate_size=16),
                       torch.float32)
    with torch.inference_mode():
        small(torch.randn(8, 64), *torch.softmax(torch.randn(8, 4), -1).topk(2, -1))
    assert small.packed is None  # small experts: one padded batched GEMM is faster
    monkeypatch.setattr(packed_experts, "available_memory", lambda device: 1024)  # no room for a copy
    with torch.inference_mode():
        experts(x, weights, chosen)
    assert experts.packed is None


def test_official_2layer_preset_is_the_official_width():
    """The benchmark shape is the official text config, field for field, but for its two layers."""
    from transformers import DiffusionGemmaConfig

    cfg = DiffusionGemmaConfig(text_config=PRESETS["official-2layer"], canvas_length=256).to_dict()
    ours = ModelConfig.from_hf(json.loads(json.dumps(cfg)))
    official = ModelConfig()
    for field in official.to_dict():
        if field not in ("num_layers", "layer_types", "eos_token_ids", "bidirectional_vision"):  # text only
            assert getattr(ours, field) == getattr(official, field), field
    assert ours.layer_types == ("sliding_attention", "full_attention")


def test_shapes_are_built_once_and_refused_clearly(tmp_path, monkeypatch):
    path = shapes.shape_checkpoint("toy", cache=tmp_path)
    stamp = os.stat(path / "model.safetensors").st_mtime_ns
    assert shapes.shape_checkpoint("toy", cache=tmp_path) == path
    assert os.stat(path / "model.safetensors").st_mtime_ns == stamp  # reused, not rebuilt
    assert dg.load_model(path).config.hidden_size == 256
    with pytest.raises(InputError, match="unknown shape 'tiny'.*official-2layer"):
        shapes.shape_checkpoint("tiny", cache=tmp_path)
    monkeypatch.setattr(shapes.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**9})())
    with pytest.raises(InputError, match="needs about 5.0 GB of disk.*DGEMMA_CACHE"):
        shapes.shape_checkpoint("official-2layer", cache=tmp_path)
    assert not (tmp_path / "shapes" / "official-2layer").exists()
    monkeypatch.setenv("DGEMMA_CACHE", str(tmp_path / "elsewhere"))
    assert shapes.cache_dir() == tmp_path / "elsewhere"


def test_a_canvas_last_round_never_pays_for_the_soft_embedding(checkpoint, ours, monkeypatch):
    """The soft input is made at the start of the round that reads it: N rounds of a canvas make it
    N - 1 times (transformers' count), wherever the canvas stops."""
    model = ours(checkpoint("plain"))
    made = []
    real = model.soft_embedding
    monkeypatch.setattr(model, "soft_embedding", lambda *a, **k: made.append(1) or real(*a, **k))
    r = dg.generate(model, input_ids=[[5, 6, 7]], seed=0, max_new_tokens=2 * model.config.canvas_length,
                    max_denoising_steps=5, confidence_threshold=0.0, eos_token_ids=())
    assert r.steps_per_canvas == [[5], [5]] and len(made) == 2 * 4
