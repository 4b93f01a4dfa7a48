"""Checkpoint files and configs are data from elsewhere: every file read lies inside the checkpoint,
every tensor is a floating-point weight the config defines, and every config.json and
generation_config.json field has its type and range, else the kit's CheckpointError names the
file, the field, the value and the fix, at load time and before anything is allocated."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dgemma_helpers as dg
from dgemma_helpers import CheckpointError, InputError
from checkpoint_copies import (TINY, _link_or_copy, ckpt, edit_json, headers_read, no_weights_read, save_tensors,  # noqa: F401
                               shard, tiny, write_json)


# ---- files outside the checkpoint -------------------------------------------------------------------
def test_a_sharded_copy_still_loads(ckpt):
    shard(ckpt)
    model = dg.load_model(ckpt)
    assert model.config.num_layers == 6


def test_index_naming_a_file_in_another_directory_is_refused_unread(ckpt, headers_read):
    elsewhere = ckpt.parent / "elsewhere"
    elsewhere.mkdir()
    shutil.move(ckpt / "model.safetensors", elsewhere / "model.safetensors")
    names = load_file(elsewhere / "model.safetensors").keys()
    write_json(ckpt / "model.safetensors.index.json",
               {"weight_map": {n: "../elsewhere/model.safetensors" for n in names}})
    with pytest.raises(CheckpointError, match=r"'\.\./elsewhere/model\.safetensors'.*outside the checkpoint "
                                              r"directory.*never reads.*Copy the file into the directory"):
        dg.load_model(ckpt)
    assert headers_read == []


def test_index_naming_an_absolute_path_is_refused(ckpt, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(ckpt / "model.safetensors", outside)
    names = load_file(outside).keys()
    write_json(ckpt / "model.safetensors.index.json", {"weight_map": {n: str(outside) for n in names}})
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        dg.load_model(ckpt)


def test_symlinked_shard_pointing_outside_is_refused_unread(ckpt, tmp_path, headers_read):
    shard(ckpt)
    victim = ckpt / "model-00002-of-00002.safetensors"
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(victim, outside / victim.name)
    victim.symlink_to(outside / victim.name)
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors.*resolves to .*outside.*outside "
                                              r"the checkpoint directory"):
        dg.load_model(ckpt)
    assert all(p.resolve().is_relative_to(ckpt.resolve()) for p in headers_read)


def test_symlinked_single_weights_file_pointing_outside_is_refused(ckpt, tmp_path, headers_read):
    outside = tmp_path / "weights.safetensors"
    shutil.move(ckpt / "model.safetensors", outside)
    (ckpt / "model.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"'model\.safetensors'.*outside the checkpoint directory"):
        dg.load_model(ckpt)
    assert headers_read == []


def test_symlinked_tokenizer_pointing_outside_is_refused(ckpt, tmp_path):
    # The tokenizer loader reads files by name from the directory: a link out of it is refused too.
    outside = tmp_path / "tokenizer.json"
    shutil.move(ckpt / "tokenizer.json", outside)
    (ckpt / "tokenizer.json").symlink_to(outside)
    with pytest.raises(CheckpointError, match=r"'tokenizer\.json'.*outside the checkpoint directory"):
        dg.load_model(ckpt)


def test_symlinks_inside_the_checkpoint_are_fine(ckpt):
    shard(ckpt, names=("shards/a.safetensors", "shards/b.safetensors"))
    (ckpt / "b.safetensors").symlink_to("shards/b.safetensors")
    edit_json(ckpt / "model.safetensors.index.json",
              lambda d: d["weight_map"].update({k: "b.safetensors" for k, v in d["weight_map"].items()
                                                if v == "shards/b.safetensors"}))
    assert dg.load_model(ckpt).config.vocab_size == 1000


def test_hugging_face_cache_snapshot_loads(ckpt, tmp_path):
    """`hf download` without --local-dir keeps a snapshot of symlinks into the repo's blobs/: that
    one blob store is part of the checkpoint, and nothing beyond it."""
    repo = tmp_path / "hub" / "models--google--diffusiongemma-26B-A4B-it"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(ckpt.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snapshot / f.name).symlink_to(Path("../../blobs") / f"blob{i}")
    assert dg.load_model(snapshot).config.vocab_size == 1000
    stray = tmp_path / "stray.json"
    shutil.copy(snapshot / "config.json", stray)
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(stray)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        dg.load_model(snapshot)


# ---- pickle and other non-safetensors shards --------------------------------------------------------
def test_index_pointing_at_a_pickle_says_so_and_never_opens_it(ckpt, headers_read):
    names = load_file(ckpt / "model.safetensors").keys()
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"this would be unpickled by torch.load")
    write_json(ckpt / "model.safetensors.index.json", {"weight_map": {n: "pytorch_model.bin" for n in names}})
    with pytest.raises(CheckpointError) as e:
        dg.load_model(ckpt)
    msg = str(e.value)
    assert "pytorch_model.bin" in msg and "pickle" in msg and "never opens" in msg and "save_pretrained" in msg
    assert "corrupt" not in msg and "header" not in msg
    assert headers_read == []


def test_index_pointing_at_another_format_is_named(ckpt):
    names = load_file(ckpt / "model.safetensors").keys()
    write_json(ckpt / "model.safetensors.index.json", {"weight_map": {n: "weights.npz" for n in names}})
    with pytest.raises(CheckpointError, match=r"'weights\.npz'.*not \.safetensors files.*safetensors weights only"):
        dg.load_model(ckpt)


@pytest.mark.parametrize("weight_map", [["a"], {"x": 5}, {"x": ""}, None])
def test_malformed_weight_map(ckpt, weight_map):
    write_json(ckpt / "model.safetensors.index.json", {"weight_map": weight_map})
    with pytest.raises(CheckpointError, match="weight_map.*corrupt"):
        dg.load_model(ckpt)


def test_index_that_places_a_tensor_in_the_wrong_shard(ckpt):
    weight_map = shard(ckpt)
    moved = next(k for k, v in weight_map.items() if v.startswith("model-00001"))
    weight_map[moved] = "model-00002-of-00002.safetensors"
    write_json(ckpt / "model.safetensors.index.json", {"weight_map": weight_map})
    with pytest.raises(CheckpointError, match=r"places 1 tensor\(s\) in shards that do not hold them.*re-download"):
        dg.load_model(ckpt)


# ---- tensor dtypes ----------------------------------------------------------------------------------
NAME = "model.decoder.layers.1.mlp.down_proj.weight"


@pytest.mark.parametrize("dtype, stored, kind", [
    (torch.int64, "I64", "integer"),
    (torch.int32, "I32", "integer"),
    (torch.bool, "BOOL", "boolean"),
    (torch.uint8, "U8", "integer"),
    (torch.float8_e4m3fn, "F8_E4M3", "fp8"),
    (torch.float8_e5m2, "F8_E5M2", "fp8"),
])
def test_non_floating_point_weights_are_refused_before_reading(ckpt, no_weights_read, dtype, stored, kind):
    tensors = load_file(ckpt / "model.safetensors")
    tensors[NAME] = tensors[NAME].to(dtype)
    save_tensors(ckpt / "model.safetensors", tensors)
    with pytest.raises(CheckpointError) as e:
        dg.load_model(ckpt)
    msg = str(e.value)
    assert repr(NAME) in msg and f"stored as {stored} ({kind})" in msg
    assert "float32, bfloat16, float16" in msg
    assert ("quantize_experts" in msg) if kind == "fp8" else ("re-save it in bfloat16 or float32" in msg)


def test_many_bad_dtypes_are_counted(ckpt):
    tensors = {k: (t.to(torch.int64) if k.startswith("model.decoder.layers.0.") else t)
               for k, t in load_file(ckpt / "model.safetensors").items()}
    save_tensors(ckpt / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=r"stored as I64 \(integer\), and \d+ more tensor\(s\) are not floating"):
        dg.load_model(ckpt)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_floating_point_weights_of_any_width_load(ckpt, dtype):
    tensors = load_file(ckpt / "model.safetensors")
    tensors[NAME] = tensors[NAME].to(dtype)
    save_tensors(ckpt / "model.safetensors", tensors)
    model = dg.load_model(ckpt)
    assert model.state_dict()[NAME[len("model.decoder."):]].dtype == torch.float32


def test_a_quantised_model_is_not_saved_in_a_layout_nothing_reads(ckpt, tmp_path):
    model = dg.quantize_experts(dg.load_model(ckpt))
    with pytest.raises(InputError, match=r"floating-point weights only.*gate_up_fp8.*before quantising"):
        dg.save_checkpoint(model, tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


# ---- tensors the config does not define --------------------------------------------------------------
def test_unknown_text_tensors_are_listed(ckpt, no_weights_read):
    tensors = load_file(ckpt / "model.safetensors")
    tensors["model.decoder.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)
    tensors["model.decoder.layers.6.input_layernorm.weight"] = torch.zeros(64)  # a 7th layer of a 6-layer config
    tensors["model.encoder.language_model.bogus.weight"] = torch.zeros(3)
    tensors["some.other.weight"] = torch.zeros(2)
    save_tensors(ckpt / "model.safetensors", tensors)
    with pytest.raises(CheckpointError) as e:
        dg.load_model(ckpt)
    msg = str(e.value)
    assert "has 4 tensor(s) that a DiffusionGemma with this config.json (6 layers, 8 experts) does not have" in msg
    for name in ("model.decoder.layers.0.mlp.extra_proj.weight", "model.decoder.layers.6.input_layernorm.weight",
                 "model.encoder.language_model.bogus.weight", "some.other.weight"):
        assert repr(name) in msg
    assert "weights and the config do not match" in msg and "re-download" in msg


def test_tied_encoder_copies_and_vision_tensors_are_skipped(ckpt, capfd):
    tensors = load_file(ckpt / "model.safetensors")
    # An encoder copy of a denoiser weight (how an untied save would write it) is known, not loaded twice.
    tensors["model.encoder.language_model.norm.weight"] = tensors["model.decoder.norm.weight"].clone()
    save_tensors(ckpt / "model.safetensors", tensors)
    model = dg.load_model(ckpt)
    assert model.vision is None and model.vision_note == "its vision tower is an untrained placeholder"
    assert "vision" not in capfd.readouterr().err  # a placeholder tower is skipped quietly


# ---- safetensors layout -----------------------------------------------------------------------------
def _raw_file(path: Path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.unlink(missing_ok=True)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


@pytest.mark.parametrize("header, data, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "invalid offset for tensor `b`"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12), "file not fully covered"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), "file not fully covered"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "invalid shape, data type, or offset"),
    ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, bytes(8), "invalid JSON in header"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "invalid offset for tensor `a`"),
    ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8), "dtype C64, which this kit cannot read"),
    ([1, 2, 3], b"", "invalid JSON in header"),
])
def test_safetensors_layout_is_checked_by_the_library_at_the_header(ckpt, header, data, message):
    _raw_file(ckpt / "model.safetensors", header, data)
    with pytest.raises(CheckpointError, match=re.escape(message)) as e:
        dg.load_model(ckpt)
    assert "model.safetensors" in str(e.value) and ("re-download or re-save" in str(e.value) or "re-save" in str(e.value))


def test_a_directory_named_as_a_shard(ckpt):
    names = load_file(ckpt / "model.safetensors").keys()
    (ckpt / "dir.safetensors").mkdir()
    write_json(ckpt / "model.safetensors.index.json", {"weight_map": {n: "dir.safetensors" for n in names}})
    with pytest.raises(CheckpointError, match="is not a file"):
        dg.load_model(ckpt)
