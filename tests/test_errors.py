"""Every bad input gets a clear exception that names the problem and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import dgemma_helpers as dg
from dgemma_helpers import CheckpointError, DeviceError, InputError


@pytest.fixture()
def ckpt(checkpoint, tmp_path) -> Path:
    """A private copy of a good checkpoint, to break."""
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint("plain"), dst)
    return dst


def rewrite_config(path: Path, edit) -> None:
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


# ---- checkpoints ----------------------------------------------------------------------------------
def test_missing_directory_says_how_to_get_a_model(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist.*hf download.*dgemma-tiny"):
        dg.load_model(tmp_path / "nope")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        dg.load_model(ckpt)


def test_corrupt_config_json(ckpt):
    (ckpt / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        dg.load_model(ckpt)


def test_wrong_model_type(ckpt):
    rewrite_config(ckpt, lambda c: c.update(model_type="gemma3"))
    with pytest.raises(CheckpointError, match="model_type='gemma3'.*expected 'diffusion_gemma'"):
        dg.load_model(ckpt)


def test_truncated_safetensors(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.*re-download"):
        dg.load_model(ckpt)


def test_corrupt_safetensors_header(ckpt):
    f = ckpt / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:16] = b"\xff" * 8  # garbage inside the JSON header
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is not a valid safetensors file .*header.*corrupt or truncated; re-download"):
        dg.load_model(ckpt)


def test_not_a_safetensors_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a valid safetensors file \(.*header too small\): it is corrupt or truncated"):
        dg.load_model(ckpt)


def _rewrite_weights(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor(ckpt):
    _rewrite_weights(ckpt, lambda t: t.pop("model.decoder.layers.2.router.proj.weight"))
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*layers\.2\.router\.proj\.weight"):
        dg.load_model(ckpt)


def test_misshaped_tensor(ckpt):
    def edit(t):
        t["model.decoder.layers.0.experts.down_proj"] = t["model.decoder.layers.0.experts.down_proj"][:, :, :10].contiguous()

    _rewrite_weights(ckpt, edit)
    with pytest.raises(CheckpointError, match=r"experts\.down_proj.*shape \[8, 64, 10\].*implies \[8, 64, 24\]"):
        dg.load_model(ckpt)


def test_weights_and_config_disagree(ckpt):
    rewrite_config(ckpt, lambda c: c["text_config"].update(num_experts=4, top_k_experts=2))
    with pytest.raises(CheckpointError, match="weights and the config do not match"):
        dg.load_model(ckpt)


def test_pickle_checkpoint_is_refused_without_opening(ckpt):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"this would be unpickled by torch.load")
    with pytest.raises(CheckpointError, match=r"pickle.*never opens.*save_pretrained"):
        dg.load_model(ckpt)


def test_missing_shard(ckpt, reference):
    sharded = ckpt.parent / "sharded"
    reference(ckpt).save_pretrained(sharded, max_shard_size="100KB")
    shutil.copy(ckpt / "generation_config.json", sharded)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match="lacks shard.*incomplete"):
        dg.load_model(sharded)


def test_not_enough_memory_is_refused_before_loading(ckpt, monkeypatch):
    monkeypatch.setattr("dgemma_helpers.checkpoint.available_memory", lambda device: 1024)
    with pytest.raises(DeviceError, match=r"needs about .* GiB .* only 0.0 GiB is free"):
        dg.load_model(ckpt)


# ---- devices ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, message", [
    ("cuda:57", "does not exist|CUDA is not available"),
    ("xla", "not supported"),
    ("banana", "not a device name"),
])
def test_device_that_does_not_exist(ckpt, device, message):
    with pytest.raises(DeviceError, match=message):
        dg.load_model(ckpt, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine(ckpt):
    with pytest.raises(DeviceError, match="CUDA is not available here.*device='cpu'"):
        dg.load_model(ckpt, device="cuda")


def test_unknown_dtype(ckpt):
    with pytest.raises(DeviceError, match="dtype 'int4' is not supported"):
        dg.load_model(ckpt, dtype="int4")


# ---- generation inputs -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(checkpoint, ours):
    return ours(checkpoint("plain"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt=["fine", ""]), "prompt is empty"),
    (dict(input_ids=[]), "input_ids must be"),
    (dict(), "exactly one of prompt, messages or input_ids"),
    (dict(prompt="a", input_ids=[1]), "exactly one of"),
    (dict(input_ids=[1, 2, 5000]), r"outside the vocabulary 0\.\.999"),
    (dict(messages=[{"role": "user"}]), "message 0 must be a dict with 'role' and 'content'"),
    (dict(input_ids=[1], max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (dict(input_ids=[1], max_new_tokens=-5), "max_new_tokens must be a positive integer"),
    (dict(input_ids=[1], max_denoising_steps=0), "max_denoising_steps must be a positive integer"),
    (dict(input_ids=[1], t_min=0.8, t_max=0.8), "t_max must be greater than t_min"),
    (dict(input_ids=[1], t_min=0.9, t_max=0.5), "t_max must be greater than t_min"),
    (dict(input_ids=[1], entropy_bound=0.0), "entropy_bound must be > 0"),
    (dict(input_ids=[1], entropy_bound=-1.0), "entropy_bound must be > 0"),
    (dict(input_ids=[1], confidence_threshold=-0.1), "confidence_threshold must be >= 0"),
    (dict(input_ids=[1], initial_canvas=[1, 2, 3]), r"initial_canvas has shape \[3\]; expected \[16\]"),
    (dict(input_ids=[1], initial_canvas=[[1] * 16] * 2), r"expected \[16\] or \[1, 16\]"),
    (dict(input_ids=[1], initial_canvas=[2000] * 16), "initial_canvas holds ids outside the vocabulary"),
    (dict(input_ids=[1], initial_canvas=[-1] * 16), "initial_canvas holds ids outside the vocabulary"),
    (dict(input_ids=[1], initial_canvas=[0.5] * 16), "must hold integer token ids"),
    (dict(input_ids=[1], initial_canvas=[1] * 16, pinned=[3, 16]), r"pinned position\(s\) \[16\] are outside"),
    (dict(input_ids=[1], initial_canvas=[1] * 16, pinned=[-1]), "are outside the canvas"),
    (dict(input_ids=[1], initial_canvas=[1] * 16, pinned=[True] * 4), r"pinned mask has shape \[4\]"),
    (dict(input_ids=[1], pinned=[3]), "pinned positions need initial_canvas"),
    (dict(input_ids=[1], record_topk=-1), "record_topk"),
    (dict(input_ids=[1], seed="7"), "seed must be an int"),
])
def test_bad_generation_inputs(model, kwargs, message):
    with pytest.raises(InputError, match=message):
        dg.generate(model, **kwargs)


def test_prompt_longer_than_the_context(model):
    n = model.config.max_position_embeddings
    with pytest.raises(InputError, match=r"exceeds the model's context of 4096 tokens.*shorten"):
        dg.generate(model, input_ids=[5] * (n - 10), max_new_tokens=16)


def test_text_needs_a_tokenizer(tmp_path, checkpoint):
    dst = tmp_path / "no_tok"
    shutil.copytree(checkpoint("plain"), dst)
    (dst / "tokenizer.json").unlink()
    model = dg.load_model(dst)
    with pytest.raises(InputError, match="ships no tokenizer.*input_ids"):
        dg.generate(model, "hello")


def test_unknown_setting_names_the_valid_ones(model):
    from dgemma_helpers.generation import resolve_settings

    with pytest.raises(InputError, match="unknown generation setting.*temperature.*valid"):
        resolve_settings(model, {"temperature": 0.5})
