"""Checkpoint layout: sharded loading, dtype, saving in transformers' format, atomic writes."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers.cache import KVCache
from dgemma_helpers.checkpoint import save_checkpoint


def denoise_logits(model, prompt, canvas):
    kv = KVCache(model.config, 1, len(prompt), device=model.device, dtype=model.dtype)
    with torch.no_grad():
        model.encode(torch.tensor([prompt], device=model.device), kv)
        return model.logits(model.denoise(canvas.to(model.device), kv)).float().cpu()


def test_sharded_checkpoint_loads_like_a_single_file(checkpoint, reference, tmp_path):
    path = checkpoint("ring")
    sharded = tmp_path / "sharded"
    reference(path).save_pretrained(sharded, max_shard_size="60KB")
    assert (sharded / "model.safetensors.index.json").exists() and len(list(sharded.glob("model-*"))) > 2
    canvas = torch.randint(0, 997, (1, 16), generator=torch.Generator().manual_seed(0))
    a = denoise_logits(dg.load_model(path), [4, 5, 6, 7], canvas)
    b = denoise_logits(dg.load_model(sharded), [4, 5, 6, 7], canvas)
    assert torch.equal(a, b)


def test_a_placeholder_vision_tower_is_skipped_quietly(checkpoint, capfd, caplog):
    # Every kit-trained checkpoint has one: the load prints nothing, the model and the debug log say it.
    model = dg.load_model(checkpoint("plain"))
    assert "vision" not in capfd.readouterr().err
    with caplog.at_level(logging.DEBUG, logger="dgemma_helpers"):
        dg.load_model(checkpoint("plain"))
    assert model.vision is None and model.vision_note == "its vision tower is an untrained placeholder"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG] == [
        ("skipped the 16 vision-tower tensors: an untrained placeholder (vision_config = the kit's TINY_VISION_CONFIG), "
         "not a vision model")]


def test_bfloat16_load_casts_every_tensor(checkpoint):
    model = dg.load_model(checkpoint("plain"), dtype="bfloat16")
    assert {p.dtype for p in model.state_dict().values()} == {torch.bfloat16}
    result = dg.generate(model, input_ids=[3, 4, 5], seed=0, max_new_tokens=16, max_denoising_steps=3)
    assert result.token_ids.shape == (1, 16)


def test_generation_defaults_come_from_generation_config(checkpoint, tmp_path):
    dst = tmp_path / "gen"
    shutil.copytree(checkpoint("plain"), dst)
    import json

    cfg = json.loads((dst / "generation_config.json").read_text())
    cfg.update(max_denoising_steps=5, sampler_config={"entropy_bound": 0.3, "_cls_name": "EntropyBoundSamplerConfig"},
               t_min=0.2, max_new_tokens=20)
    (dst / "generation_config.json").write_text(json.dumps(cfg))
    model = dg.load_model(dst)
    s = model.generation_settings
    assert (s.max_denoising_steps, s.entropy_bound, s.t_min, s.t_max, s.max_new_tokens) == (5, 0.3, 0.2, 0.8, 20)
    result = dg.generate(model, input_ids=[5, 6], seed=0, confidence_threshold=0)
    assert result.steps_per_canvas == [[5], [5]] and result.token_ids.shape[1] == 20


def test_saved_checkpoint_loads_in_transformers_with_the_same_logits(checkpoint, tmp_path):
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.cache_utils import DynamicCache

    model = dg.load_model(checkpoint("ring"))
    out = save_checkpoint(model, tmp_path / "saved", tokenizer=model.tokenizer)
    assert {p.name for p in out.iterdir()} >= {"config.json", "generation_config.json", "model.safetensors",
                                               "tokenizer.json"}
    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(out, dtype=torch.float32).eval()
    reloaded = dg.load_model(out)
    canvas = torch.randint(0, 997, (1, 16), generator=torch.Generator().manual_seed(1))
    prompt = [9, 8, 7, 6, 5]
    with torch.no_grad():
        cache = DynamicCache(config=ref.config.get_text_config(decoder=True))
        ref.model.encoder(input_ids=torch.tensor([prompt]), cache=cache)
        theirs = ref(decoder_input_ids=canvas, cache=cache).logits
    mine = denoise_logits(reloaded, prompt, canvas)
    assert torch.equal(mine, denoise_logits(model, prompt, canvas))
    assert ((mine - theirs).norm() / theirs.norm()).item() < 1e-5
    assert reloaded.generation_settings == model.generation_settings


def test_interrupted_save_leaves_the_old_checkpoint_intact(checkpoint, tmp_path, monkeypatch):
    model = dg.load_model(checkpoint("plain"))
    target = save_checkpoint(model, tmp_path / "ckpt")
    before = sorted(p.name for p in target.iterdir())

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dgemma_helpers.checkpoint.save_file", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, target)
    assert sorted(p.name for p in target.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind
    dg.load_model(target)


def test_parameter_counts(checkpoint):
    model = dg.load_model(checkpoint("plain"))
    c = model.config
    per_expert = 3 * c.hidden_size * c.moe_intermediate_size
    assert model.num_parameters() - model.num_parameters(active=True) == \
        c.num_layers * per_expert * (c.num_experts - c.top_k_experts)
