"""Parameter counts, encoder/denoiser sharing, layer pattern and MoE routing (introspection.py)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import dgemma_helpers as dg
from dgemma_helpers.config import FULL, ModelConfig
from dgemma_helpers.notebook.introspection import PARTS, parameter_counts


def test_parameter_counts_split_the_model_and_agree_with_it(checkpoint, ours):
    model = ours(checkpoint("ring"))
    c = parameter_counts(model)
    assert c.total == model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert c.active == model.num_parameters(active=True)
    assert c.active < c.total
    assert sum(c.by_part.values()) == c.total and sum(c.active_by_part.values()) == c.active
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert c.by_part["experts"] == experts
    cfg = model.config
    assert c.active_by_part["experts"] == experts * cfg.top_k_experts // cfg.num_experts
    assert c.by_part["self-conditioning"] == sum(p.numel() for p in model.self_conditioning.parameters())
    assert c.by_part["embedding"] == cfg.vocab_size * cfg.hidden_size
    assert [r["part"] for r in c.records()] == list(PARTS)


def test_official_model_counts_from_its_config_alone():
    # ModelConfig() is the official text config: no download, weightless (meta) tensors.
    c = parameter_counts(ModelConfig())
    assert 25.0e9 < c.total < 25.5e9  # the model card: 25.2B (text), 3.8B active
    assert 3.7e9 < c.active < 3.95e9
    assert c.by_part["experts"] / c.total > 0.9


def test_weight_sharing_matches_the_checkpoint_and_the_reference(checkpoint, ours, reference):
    path = checkpoint("ring")
    model = ours(path)
    ws = dg.notebook.weight_sharing(model)
    total = model.num_parameters()
    assert ws.shared + ws.denoiser_only == total == ws.denoiser_parameters
    assert ws.encoder_parameters == total - ws.denoiser_only and ws.encoder_only == 0
    assert ws.denoiser_only == sum(p.numel() for p in model.self_conditioning.parameters())
    assert ws.if_untied == 2 * total - ws.denoiser_only
    n = model.config.num_layers
    # The file stores the encoder's per-layer scalars and nothing else of the encoder.
    sections = ws.checkpoint_sections
    assert sections["encoder (model.encoder.language_model)"] == {"tensors": n, "values": n}
    assert sections["denoiser (model.decoder)"]["values"] == total + n  # + the denoiser's own scalars
    with safe_open(path / "model.safetensors", framework="pt") as f:
        for i in range(n):
            assert ws.encoder_scalars[i] == f.get_tensor(f"model.encoder.language_model.layers.{i}.layer_scalar").item()
            assert ws.denoiser_scalars[i] == f.get_tensor(f"model.decoder.layers.{i}.layer_scalar").item()
    assert ws.encoder_scalars != ws.denoiser_scalars  # random checkpoints make them differ
    # Ground truth: in transformers the encoder's weights are the denoiser's (same storage).
    ref = reference(path).model
    enc, dec = ref.encoder.language_model.layers[0], ref.decoder.layers[0]
    assert enc.mlp.gate_proj.weight.data_ptr() == dec.mlp.gate_proj.weight.data_ptr()
    assert enc.experts.down_proj.data_ptr() == dec.experts.down_proj.data_ptr()


def test_layer_pattern_follows_the_config(checkpoint, ours):
    model = ours(checkpoint("ring"))
    cfg = model.config
    rows = dg.notebook.layer_pattern(model)
    assert [r.attention == "full" for r in rows] == [t == FULL for t in cfg.layer_types]
    for r in rows:
        assert r.values == ("keys" if r.attention == "full" else "v_proj")
        assert (r.head_dim, r.kv_heads) == (cfg.head_dim(r.layer), cfg.kv_heads(r.layer))
        assert r.window == (None if r.attention == "full" else cfg.sliding_window)
    outside = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("layers."))
    assert sum(r.parameters for r in rows) + outside == model.num_parameters()
    official = dg.notebook.layer_pattern(ModelConfig())
    assert [r.layer for r in official if r.attention == "full"] == [5, 11, 17, 23, 29]
    assert {(r.head_dim, r.kv_heads) for r in official if r.attention == "full"} == {(512, 2)}


def test_expert_routing_counts_every_token_top_k_times(checkpoint, ours):
    model = ours(checkpoint("ring"))
    trace = dg.notebook.expert_routing(model, "The sky is blue because")
    T, k, E = len(trace.token_ids), model.config.top_k_experts, model.config.num_experts
    assert trace.experts.shape == (model.config.num_layers, T, k) == trace.weights.shape
    assert len(trace.tokens) == T and trace.token_ids == model.tokenizer.encode("The sky is blue because")
    counts = trace.counts()
    assert counts.shape == (model.config.num_layers, E)
    assert (counts.sum(dim=1) == T * k).all()
    # Top-k picks k distinct experts per token; the weight matrix has exactly those k entries.
    assert all(len(set(row.tolist())) == k for layer in trace.experts for row in layer)
    w = trace.token_expert_weights(0)
    assert ((w > 0).sum(dim=1) == k).all()
    assert torch.allclose(w.sum(dim=1), trace.weights[0].sum(dim=1))
    assert ((trace.experts_used() >= 1) & (trace.experts_used() <= min(E, T * k))).all()
    # The hooks are gone and did not change what the model computes.
    assert all(not layer.router._forward_hooks for layer in model.layers)
    assert torch.equal(dg.notebook.expert_routing(model, input_ids=trace.token_ids).experts, trace.experts)


def test_expert_routing_refuses_a_batch(checkpoint, ours):
    model = ours(checkpoint("ring"))
    with pytest.raises(dg.InputError, match="one prompt"):
        dg.notebook.expert_routing(model, ["a", "b"])
    with pytest.raises(dg.InputError, match="one prompt"):
        dg.notebook.expert_routing(model, input_ids=[[2, 3], [2, 4]])
