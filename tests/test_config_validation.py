"""config.json and generation_config.json are data from elsewhere: every field has its type and range,
else the kit's CheckpointError names the file, the field, the value and the fix, at load time."""

from __future__ import annotations

import math

import pytest

import dgemma_helpers as dg
from dgemma_helpers import CheckpointError, InputError
from dgemma_helpers.config import GenerationSettings
from checkpoint_copies import ckpt, edit_json, no_weights_read, tiny, write_json  # noqa: F401


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
