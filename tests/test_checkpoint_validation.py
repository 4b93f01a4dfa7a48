"""Checkpoint files and configs are data from elsewhere: every file read lies inside the checkpoint,
every tensor is a floating-point weight the config defines, and every config.json and
generation_config.json field has its type and range, else the kit's CheckpointError names the
file, the field, the value and the fix, at load time and before anything is allocated."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dgemma_helpers as dg
from dgemma_helpers import CheckpointError, InputError
from dgemma_helpers.config import GenerationSettings

TINY = Path(__file__).resolve().parents[1] / "models" / "dgemma-tiny"


# ---- copies to break --------------------------------------------------------------------------------
@pytest.fixture()
def ckpt(checkpoint, tmp_path) -> Path:
    """A private copy of a small random checkpoint (written by transformers)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint("plain"), dst)
    return dst


def _link_or_copy(src: str, dst: str) -> None:
    # The 22 MB weights are hard-linked (a hard link is the same file, not a symlink), everything
    # else copied; tests that change a file write a new one (see write_json), never into the link.
    if src.endswith(".safetensors"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


@pytest.fixture()
def tiny(tmp_path) -> Path:
    """A copy of the shipped models/dgemma-tiny."""
    dst = tmp_path / "dgemma-tiny"
    shutil.copytree(TINY, dst, copy_function=_link_or_copy)
    return dst


def write_json(path: Path, data) -> None:
    path.unlink(missing_ok=True)  # a new file: never write through a hard link into the original
    path.write_text(json.dumps(data))


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    write_json(path, data)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.unlink(missing_ok=True)
    save_file(tensors, path, metadata={"format": "pt"})


def shard(path: Path, names: tuple[str, str] = ("model-00001-of-00002.safetensors",
                                                "model-00002-of-00002.safetensors")) -> dict[str, str]:
    """Split model.safetensors into two shards and an index, as save_pretrained does; the weight map."""
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    keys = sorted(tensors)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2:])
    weight_map = {}
    for name, part in zip(names, halves):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path / name, {k: tensors[k] for k in part})
        weight_map.update({k: name for k in part})
    write_json(path / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    return weight_map


@pytest.fixture()
def no_weights_read(monkeypatch):
    """Fails the test if any tensor data is read: the checks must all run on headers first."""
    def forbidden(*args, **kwargs):
        raise AssertionError("tensor data was read before the checkpoint was checked")

    monkeypatch.setattr("dgemma_helpers.checkpoint.safe_open", forbidden)


@pytest.fixture()
def headers_read(monkeypatch) -> list[Path]:
    """The files whose safetensors header the loader opened."""
    import dgemma_helpers.checkpoint as ck

    seen: list[Path] = []
    real = ck.read_safetensors_header

    def spy(path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(ck, "read_safetensors_header", spy)
    return seen


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
    dg.load_model(ckpt)
    notes = [line for line in capfd.readouterr().err.splitlines() if "vision" in line]
    assert notes == ["dgemma_helpers: text-only engine: skipped the 16 vision-tower tensors"]


# ---- safetensors layout -----------------------------------------------------------------------------
def _raw_file(path: Path, header: dict, data: bytes) -> None:
    blob = json.dumps(header).encode()
    path.unlink(missing_ok=True)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


@pytest.mark.parametrize("header, data, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlap or leave a gap"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12), "4 bytes after its last tensor"),
    ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, bytes(8), "corrupt header entry for 'a'"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "corrupt header entry for 'a'"),
    ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8), "dtype C64, which this kit cannot read"),
    ([1, 2, 3], b"", "not a JSON object"),
])
def test_safetensors_layout_is_checked_like_the_library_does(ckpt, header, data, message):
    _raw_file(ckpt / "model.safetensors", header, data)
    with pytest.raises(CheckpointError, match=message):
        dg.load_model(ckpt)


def test_a_directory_named_as_a_shard(ckpt):
    names = load_file(ckpt / "model.safetensors").keys()
    (ckpt / "dir.safetensors").mkdir()
    write_json(ckpt / "model.safetensors.index.json", {"weight_map": {n: "dir.safetensors" for n in names}})
    with pytest.raises(CheckpointError, match="is not a file"):
        dg.load_model(ckpt)


# ---- config.json --------------------------------------------------------------------------------------
def _set(section: str | None, **values):
    def edit(cfg):
        (cfg[section] if section else cfg).update(values)
    return edit


TEXT = "text_config"


@pytest.mark.parametrize("edit, field, value", [
    (_set(TEXT, num_hidden_layers="six"), "text_config.num_hidden_layers", '"six"'),
    (_set(TEXT, num_hidden_layers=6.0), "text_config.num_hidden_layers", "6.0"),
    (_set(TEXT, num_hidden_layers=True), "text_config.num_hidden_layers", "true"),
    (_set(TEXT, num_hidden_layers=100_000), "text_config.num_hidden_layers", "100000"),
    (_set(TEXT, hidden_size=-256), "text_config.hidden_size", "-256"),
    (_set(TEXT, hidden_size=0), "text_config.hidden_size", "0"),
    (_set(TEXT, vocab_size=[4096]), "text_config.vocab_size", "[4096]"),
    (_set(TEXT, head_dim=0), "text_config.head_dim", "0"),
    (_set(TEXT, sliding_window=1), "text_config.sliding_window", "1"),
    (_set(TEXT, sliding_window=None), "text_config.sliding_window", "null"),  # transformers refuses it too
    (_set(TEXT, final_logit_softcapping=None), None, None),  # optional in transformers: null keeps the default
    (_set(TEXT, max_position_embeddings="8k"), "text_config.max_position_embeddings", '"8k"'),
    (_set(TEXT, rms_norm_eps=-1e-6), "text_config.rms_norm_eps", "-1e-06"),
    (_set(TEXT, rms_norm_eps="tiny"), "text_config.rms_norm_eps", '"tiny"'),
    (_set(TEXT, final_logit_softcapping=math.inf), "text_config.final_logit_softcapping", "Infinity"),
    (_set(TEXT, pad_token_id=-1), "text_config.pad_token_id", "-1"),
    (_set(TEXT, bos_token_id=5000), "text_config.bos_token_id", "5000"),
    (_set(TEXT, eos_token_id=["a"]), "text_config.eos_token_id", '["a"]'),
    (_set(TEXT, eos_token_id=[1, 4096]), "text_config.eos_token_id", "[1, 4096]"),
    (_set(TEXT, tie_word_embeddings="false"), "text_config.tie_word_embeddings", '"false"'),
    (_set(TEXT, enable_moe_block=1), "text_config.enable_moe_block", "1"),
    (_set(TEXT, hidden_activation=7), "text_config.hidden_activation", "7"),
    (_set(TEXT, per_layer_config={"5": {"head_dim": "128"}}), "text_config.per_layer_config.5.head_dim", '"128"'),
    (_set(TEXT, per_layer_config=[1]), "text_config.per_layer_config", "[1]"),
    (_set(TEXT, rope_parameters={"full_attention": {"rope_type": "proportional", "rope_theta": math.nan}}),
     "text_config.rope_parameters.full_attention.rope_theta", "NaN"),
    (_set(TEXT, rope_parameters={"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 1.5}}),
     "text_config.rope_parameters.full_attention.partial_rotary_factor", "1.5"),
    (_set(None, canvas_length=0), "canvas_length", "0"),
    (_set(None, canvas_length=-64), "canvas_length", "-64"),
    (_set(None, canvas_length="64"), "canvas_length", '"64"'),
    (_set(None, tie_word_embeddings=None), "tie_word_embeddings", "null"),
    (_set(TEXT, pad_token_id=None), None, None),
])
def test_config_field_types_and_ranges(tiny, edit, field, value):
    edit_json(tiny / "config.json", edit)
    if field is None:
        assert dg.load_model(tiny).config.num_layers == 6
        return
    with pytest.raises(CheckpointError) as e:
        dg.load_model(tiny)
    msg = str(e.value)
    assert msg.startswith(f"{tiny / 'config.json'}: {field} is {value} ("), msg
    assert "it must be" in msg and "Correct it in" in msg and "re-download" in msg


@pytest.mark.parametrize("edit, message", [
    (_set(TEXT, num_key_value_heads=3), r"text_config\.num_attention_heads=4 is not a multiple of "
                                        r"text_config\.num_key_value_heads=3"),
    (_set(TEXT, per_layer_config={"5": {"head_dim": 128, "num_key_value_heads": 3}}),
     r"num_attention_heads=4 is not a multiple of text_config\.num_global_key_value_heads.*=3"),
    (_set(TEXT, head_dim=63), r"text_config\.head_dim=63 must be even"),
    (_set(TEXT, top_k_experts=17), r"text_config\.top_k_experts=17 must be in 1\.\.text_config\.num_experts=16"),
    (_set(TEXT, vocab_size=2), r"text_config\.bos_token_id is 2.*0\.\.1"),
    (_set(TEXT, vocab_size=4, bos_token_id=1), r"text_config\.eos_token_id is \[1, 5\].*0\.\.3"),
    (_set(TEXT, max_position_embeddings=32), r"canvas_length=64 exceeds text_config\.max_position_embeddings=32"),
    (_set(TEXT, layer_types=["sliding_attention"] * 5), r"layer_types lists 5 layers but "
                                                        r"text_config\.num_hidden_layers is 6"),
    (_set(TEXT, layer_types=["sliding_attention"] * 4 + ["local_attention", "full_attention"]),
     r"layer_types holds unknown layer kind\(s\) \"local_attention\""),
    (_set(TEXT, layer_types="sliding_attention"), r"text_config\.layer_types is \"sliding_attention\" \(a string\)"),
    (_set(TEXT, num_hidden_layers=12, layer_types=None,
          per_layer_config={"5": {"head_dim": 128}, "11": {"head_dim": 256}}),
     r"full-attention layers different \(head_dim, key/value heads\) \[\(128, 2\), \(256, 2\)\]"),
    (_set(TEXT, per_layer_config={"0": {"head_dim": 32}, "5": {"head_dim": 128}}),
     r"per_layer_config\.0 gives sliding layer 0 its own shape"),
    (_set(TEXT, hidden_size=None), r"text_config lacks \['hidden_size'\]"),
    (_set(None, text_config=[]), "no 'text_config' section"),
])
def test_config_fields_that_do_not_fit_together(tiny, edit, message):
    edit_json(tiny / "config.json", edit)
    with pytest.raises(CheckpointError, match=message) as e:
        dg.load_model(tiny)
    assert "config.json" in str(e.value)


def test_read_config_alone_checks_the_config(tiny):
    from dgemma_helpers.checkpoint import read_config

    edit_json(tiny / "config.json", _set(TEXT, num_hidden_layers="six"))
    with pytest.raises(CheckpointError, match="num_hidden_layers"):
        read_config(tiny)  # what the CLI's `info` and `generate` call first


def test_integer_valued_floats_are_fine_where_a_float_belongs(tiny):
    edit_json(tiny / "config.json", _set(TEXT, rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000}}))
    assert dg.load_model(tiny).config.full_rope_theta == 1e6


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"[1, 2]", b"[" * 100_000])
def test_config_that_is_not_a_json_object(tiny, content):
    (tiny / "config.json").unlink()
    (tiny / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match="config.json (is not valid JSON|does not hold a JSON object)"):
        dg.load_model(tiny)


def test_config_json_that_is_a_directory(tiny):
    (tiny / "config.json").unlink()
    (tiny / "config.json").mkdir()
    with pytest.raises(CheckpointError, match="could not be read.*must be a readable file"):
        dg.load_model(tiny)


# ---- generation_config.json --------------------------------------------------------------------------
def _gen(**values):
    def edit(gen):
        for key, v in values.items():
            if key == "entropy_bound":
                gen["sampler_config"]["entropy_bound"] = v
            else:
                gen[key] = v
    return edit


@pytest.mark.parametrize("edit, field, value", [
    (_gen(max_new_tokens="lots"), "max_new_tokens", '"lots"'),
    (_gen(max_new_tokens=-1), "max_new_tokens", "-1"),
    (_gen(max_new_tokens=2.5), "max_new_tokens", "2.5"),
    (_gen(max_new_tokens=True), "max_new_tokens", "true"),
    (_gen(max_denoising_steps=-3), "max_denoising_steps", "-3"),
    (_gen(max_denoising_steps="48"), "max_denoising_steps", '"48"'),
    (_gen(t_max=math.inf), "t_max", "Infinity"),
    (_gen(t_max=math.nan), "t_max", "NaN"),
    (_gen(t_min=-0.5), "t_min", "-0.5"),
    (_gen(t_min="0.1"), "t_min", '"0.1"'),
    (_gen(entropy_bound=-1.0), "sampler_config.entropy_bound", "-1.0"),
    (_gen(entropy_bound=math.nan), "sampler_config.entropy_bound", "NaN"),
    (_gen(entropy_bound="big"), "sampler_config.entropy_bound", '"big"'),
    (_gen(stability_threshold=1.5), "stability_threshold", "1.5"),
    (_gen(confidence_threshold=math.nan), "confidence_threshold", "NaN"),
    (_gen(confidence_threshold=-0.1), "confidence_threshold", "-0.1"),
    (_gen(eos_token_id=["a"]), "eos_token_id", '["a"]'),
    (_gen(eos_token_id=[1, 4096]), "eos_token_id", "[1, 4096]"),
    (_gen(eos_token_id=1.5), "eos_token_id", "[1.5]"),
    (_gen(pad_token_id=-1), "pad_token_id", "-1"),
])
def test_generation_config_fields_fail_at_load_time(tiny, no_weights_read, edit, field, value):
    edit_json(tiny / "generation_config.json", edit)
    with pytest.raises(CheckpointError) as e:
        dg.load_model(tiny)
    msg = str(e.value)
    assert msg.startswith(f"{tiny / 'generation_config.json'}: {field} is {value}; it must"), msg
    assert "Correct it in generation_config.json, or delete the field to use the published default." in msg


def test_generation_config_with_t_min_above_t_max(tiny, no_weights_read):
    edit_json(tiny / "generation_config.json", _gen(t_min=0.9, t_max=0.5))
    with pytest.raises(CheckpointError, match=r"generation_config\.json: t_max must be greater than t_min \(got "
                                              r"t_min=0\.9, t_max=0\.5\).*Correct t_min or t_max"):
        dg.load_model(tiny)


@pytest.mark.parametrize("sampler, message", [
    ("fast", r"sampler_config is \"fast\" \(a string\); it must be an object"),
    ({"entropy_bound": 0.1, "_cls_name": "GreedySamplerConfig"}, r"sampler_config\._cls_name is "
                                                                  r"\"GreedySamplerConfig\""),
])
def test_generation_config_sampler_section(tiny, sampler, message):
    edit_json(tiny / "generation_config.json", lambda g: g.update(sampler_config=sampler))
    with pytest.raises(CheckpointError, match=message):
        dg.load_model(tiny)


def test_generation_config_nulls_and_absence_keep_the_defaults(tiny):
    edit_json(tiny / "generation_config.json", lambda g: g.update(max_new_tokens=None, t_min=None,
                                                                  sampler_config=None))
    s = dg.load_model(tiny).generation_settings
    assert (s.max_new_tokens, s.t_min, s.t_max, s.entropy_bound) == (256, 0.4, 0.9, 0.1)
    (tiny / "generation_config.json").unlink()
    assert dg.load_model(tiny).generation_settings.eos_token_ids == (1, 5)


# ---- the same rules for values given in code: InputError --------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (dict(t_min="0.1"), r"t_min must be a finite number >= 0 \(got '0\.1'\)"),
    (dict(t_max=math.inf), r"t_max must be a finite number >= 0 \(got inf\)"),
    (dict(max_new_tokens=2.5), r"max_new_tokens must be a positive integer \(got 2\.5\)"),
    (dict(max_new_tokens=True), r"max_new_tokens must be a positive integer \(got True\)"),
    (dict(entropy_bound=math.nan), "entropy_bound must be > 0 and finite"),
    (dict(stability_threshold="1"), "stability_threshold must be an integer >= 0"),
    (dict(eos_token_ids=("a",)), "eos_token_ids must be a list of integer token ids"),
    (dict(eos_token_ids=5), "eos_token_ids must be a list of integer token ids"),
    (dict(pad_token_id=-1), "pad_token_id must be an integer token id"),
    (dict(t_min=0.9, t_max=0.5), "t_max must be greater than t_min"),
])
def test_settings_given_in_code_raise_input_error(overrides, message):
    with pytest.raises(InputError, match=message):
        GenerationSettings().replace(**overrides)


def test_settings_check_token_ids_against_a_vocabulary():
    GenerationSettings(eos_token_ids=(1, 5)).validate(vocab_size=10)
    with pytest.raises(InputError, match=r"eos_token_ids must be a list of integer token ids in 0\.\.9"):
        GenerationSettings(eos_token_ids=(1, 50)).validate(vocab_size=10)


@pytest.mark.parametrize("path", [None, 5, "", "   "])
def test_load_model_needs_a_path(path):
    with pytest.raises(InputError, match="model path must be a checkpoint directory"):
        dg.load_model(path)
