"""Model and generation settings, parsed from a checkpoint's config.json / generation_config.json.

`ModelConfig` is the text model, read from the `text_config` of a `DiffusionGemmaForBlockDiffusion`
config.json in both the layout transformers writes (`per_layer_config`) and the one the official
checkpoint ships (`global_head_dim` / `num_global_key_value_heads`). The vision tower is built by
vision.py from config.json's vision_config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputError
from .validate import Fields, check, is_int, is_number, shown

SLIDING = "sliding_attention"
FULL = "full_attention"
# Far above any real model (the official one has 30): a typo like 30000 fails here, not after
# building thirty thousand empty layers.
MAX_LAYERS = 1024
DEFAULT_FULL_ROPE = {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6}
# The ModelConfig fields that config.json keeps under one key each: field -> (section, key, how it is
# read: Fields.integer or Fields.number, with its default and range). "text" is text_config, "top" the
# file's top level. from_hf reads them through this table, and messages name the file's field by it.
KEYS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "vocab_size": ("text", "vocab_size", "integer", {}),
    "hidden_size": ("text", "hidden_size", "integer", {}),
    "intermediate_size": ("text", "intermediate_size", "integer", {}),
    "num_layers": ("text", "num_hidden_layers", "integer", {"high": MAX_LAYERS}),
    "num_heads": ("text", "num_attention_heads", "integer", {}),
    "sliding_kv_heads": ("text", "num_key_value_heads", "integer", {}),
    "sliding_head_dim": ("text", "head_dim", "integer", {"low": 2}),
    "sliding_window": ("text", "sliding_window", "integer", {"default": 512, "low": 2}),
    "num_experts": ("text", "num_experts", "integer", {}),
    "top_k_experts": ("text", "top_k_experts", "integer", {}),
    "moe_intermediate_size": ("text", "moe_intermediate_size", "integer", {}),
    "rms_norm_eps": ("text", "rms_norm_eps", "number", {"default": 1e-6, "above": 0}),
    "final_logit_softcapping": ("text", "final_logit_softcapping", "number",
                                {"default": 30.0, "above": 0, "nullable": True}),
    "max_position_embeddings": ("text", "max_position_embeddings", "integer", {"default": 131_072}),
    "canvas_length": ("top", "canvas_length", "integer", {"default": 256, "nullable": True}),
    "image_token_id": ("top", "image_token_id", "integer", {"default": 258_880, "low": 0, "nullable": True}),
    "boi_token_id": ("top", "boi_token_id", "integer", {"default": 255_999, "low": 0, "nullable": True}),
    "eoi_token_id": ("top", "eoi_token_id", "integer", {"default": 258_882, "low": 0, "nullable": True}),
}
# ModelConfig field -> where config.json keeps it, for the messages of ModelConfig.validate.
JSON_NAMES = {
    **{f: ("text_config." if section == "text" else "") + key for f, (section, key, _, _) in KEYS.items()},
    "full_kv_heads": "text_config.num_global_key_value_heads (or per_layer_config.N.num_key_value_heads)",
    "full_head_dim": "text_config.global_head_dim (or per_layer_config.N.head_dim)",
}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 262_144
    hidden_size: int = 2816
    intermediate_size: int = 2112  # dense MLP and self-conditioning MLP
    num_layers: int = 30
    num_heads: int = 16
    # Sliding-window layers: default RoPE over the whole head.
    sliding_kv_heads: int = 8
    sliding_head_dim: int = 256
    sliding_window: int = 1024
    sliding_rope_theta: float = 10_000.0
    # Full-attention layers: keys are the values (no v_proj), proportional partial RoPE.
    full_kv_heads: int = 2
    full_head_dim: int = 512
    full_rope_theta: float = 1_000_000.0
    full_rope_fraction: float = 0.25
    layer_types: tuple[str, ...] = ()
    num_experts: int = 128
    top_k_experts: int = 8
    moe_intermediate_size: int = 704
    rms_norm_eps: float = 1e-6
    final_logit_softcapping: float = 30.0
    max_position_embeddings: int = 262_144
    canvas_length: int = 256
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_ids: tuple[int, ...] = (1,)
    # Image prompts (dgemma_helpers/vision.py): the soft-token ids that wrap and stand for an image,
    # and whether the encoder attends bidirectionally inside an image (text_config.
    # use_bidirectional_attention == "vision", as the official checkpoint sets it; transformers' default
    # when the field is absent is None: causal everywhere). Only checked against the vocabulary when an
    # image is actually given, since transformers writes these defaults into text-only configs too.
    image_token_id: int = 258_880
    boi_token_id: int = 255_999
    eoi_token_id: int = 258_882
    bidirectional_vision: bool = True

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", default_layer_types(self.num_layers))

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    def head_dim(self, layer: int) -> int:
        return self.sliding_head_dim if self.is_sliding(layer) else self.full_head_dim

    def kv_heads(self, layer: int) -> int:
        return self.sliding_kv_heads if self.is_sliding(layer) else self.full_kv_heads

    @property
    def embed_scale(self) -> float:
        return self.hidden_size**0.5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---- transformers' config.json ----------------------------------------------------------
    @classmethod
    def from_hf(cls, cfg: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a parsed config.json of `DiffusionGemmaForBlockDiffusion`, every field checked for
        its JSON type and range as it is read: a wrong one is a CheckpointError naming it in `source`."""
        top, t = _sections(cfg, source)
        sections = {"top": top, "text": t}
        values = {f: getattr(sections[section], reader)(key, **options)
                  for f, (section, key, reader, options) in KEYS.items()}
        vocab, n_layers = values["vocab_size"], values["num_layers"]
        layer_types = _layer_types(t, n_layers)
        full_head_dim, full_kv_heads = _full_attention_shape(t, layer_types, values["sliding_head_dim"],
                                                             values["sliding_kv_heads"])
        sliding, full = _rope_sections(t)
        config = cls(
            **values,
            full_kv_heads=full_kv_heads,
            full_head_dim=full_head_dim,
            layer_types=layer_types,
            sliding_rope_theta=sliding.number("rope_theta", 10_000.0, above=0),
            full_rope_theta=full.number("rope_theta", 1e6, above=0),
            full_rope_fraction=full.number("partial_rotary_factor", 1.0, above=0, at_most=1),
            pad_token_id=t.integer("pad_token_id", 0, low=0, high=vocab - 1, nullable=True),
            bos_token_id=t.integer("bos_token_id", 2, low=0, high=vocab - 1, nullable=True),
            eos_token_ids=t.token_ids("eos_token_id", (1,), vocab, nullable=True),
            bidirectional_vision=t.data.get("use_bidirectional_attention") == "vision",
        )
        config.validate(source)
        return config

    def validate(self, source: str | None = None) -> None:
        """The rules across fields (from_hf checked each field's type and range where it read it). With
        `source` (the config.json it came from) fields are named as that file writes them."""
        def name(f: str) -> str:
            return JSON_NAMES.get(f, f) if source else f

        where = f"{source}: " if source else "ModelConfig: "
        fix = f"; correct it in {source}, or re-download the checkpoint's config.json." if source else "."
        rules = [(self.num_heads % heads == 0, f"{name('num_heads')}={self.num_heads} is not a multiple of {name(f)}="
                  f"{heads} (each key/value head serves a whole number of query heads)")
                 for heads, f in ((self.sliding_kv_heads, "sliding_kv_heads"), (self.full_kv_heads, "full_kv_heads"))]
        rules += [(dim % 2 == 0, f"{name(f)}={dim} must be even (rotary embeddings rotate pairs of dimensions)")
                  for dim, f in ((self.sliding_head_dim, "sliding_head_dim"), (self.full_head_dim, "full_head_dim"))]
        rules += [
            (0 < self.top_k_experts <= self.num_experts,
             f"{name('top_k_experts')}={self.top_k_experts} must be in 1..{name('num_experts')}={self.num_experts}"),
            (self.canvas_length <= self.max_position_embeddings,
             f"{name('canvas_length')}={self.canvas_length} exceeds {name('max_position_embeddings')}="
             f"{self.max_position_embeddings}: not even one canvas fits in the context"),
        ]
        for ok, message in rules:
            check(ok, CheckpointError, where + message + fix)

    def to_hf(self) -> dict[str, Any]:
        """The config.json transformers writes for this text model (vision tower left minimal)."""
        fields = {section: {key: getattr(self, f) for f, (where, key, _, _) in KEYS.items() if where == section}
                  for section in ("top", "text")}
        text = fields["text"] | {
            "model_type": "diffusion_gemma_text",
            "hidden_activation": "gelu_pytorch_tanh",
            "layer_types": list(self.layer_types),
            "per_layer_config": {
                str(i): {"head_dim": self.full_head_dim, "num_key_value_heads": self.full_kv_heads}
                for i, t in enumerate(self.layer_types) if t == FULL
            },
            "rope_parameters": {
                SLIDING: {"rope_type": "default", "rope_theta": self.sliding_rope_theta},
                FULL: {"rope_type": "proportional", "partial_rotary_factor": self.full_rope_fraction,
                       "rope_theta": self.full_rope_theta},
            },
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids),
            "tie_word_embeddings": True,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_bidirectional_attention": "vision" if self.bidirectional_vision else None,
        }
        return {
            "architectures": ["DiffusionGemmaForBlockDiffusion"],
            "model_type": "diffusion_gemma",
            **fields["top"],
            "tie_word_embeddings": True,
            "text_config": text,
            "vision_config": dict(TINY_VISION_CONFIG),
        }


def _sections(cfg: dict[str, Any], source: str) -> tuple[Fields, Fields]:
    """config.json's top level and text_config, once they say a DiffusionGemma this engine runs."""
    fix = f"Correct it in {source}, or re-download the checkpoint's config.json."
    model_type = cfg.get("model_type")
    check(model_type == "diffusion_gemma", CheckpointError,
          f"{source} has model_type={model_type!r}, expected 'diffusion_gemma'. This kit runs DiffusionGemma "
          "checkpoints only (google/diffusiongemma-26B-A4B-it or models/dgemma-tiny).")
    text = cfg.get("text_config")
    check(isinstance(text, dict), CheckpointError,
          f"{source} has no 'text_config' section: it is not a DiffusionGemma config.")
    top, t = Fields(cfg, source, "", fix), Fields(text, source, "text_config.", fix)
    check(top.flag("tie_word_embeddings", True) and t.flag("tie_word_embeddings", True), CheckpointError,
          f"{source} sets tie_word_embeddings=false: DiffusionGemma's encoder and denoiser share their weights, "
          "which this engine requires.")
    # These two flags are omitted by the official config; transformers treats both as on.
    check(t.flag("enable_moe_block", True, nullable=True), CheckpointError,
          f"{source} sets enable_moe_block=false: this engine (like transformers) needs the MoE block.")
    activation = t.string("hidden_activation", "gelu_pytorch_tanh")
    check(activation in ("gelu_pytorch_tanh", "gelu_tanh"), CheckpointError,
          f"{source}: unsupported hidden_activation {activation!r}: expected gelu_pytorch_tanh.")
    bidirectional = t.string("use_bidirectional_attention", "vision", nullable=True)
    check(bidirectional != "all", CheckpointError,
          "use_bidirectional_attention='all' is not supported: the encoder must be causal.")
    if bidirectional != "vision":
        raise t.error("use_bidirectional_attention", bidirectional, "null or \"vision\"")
    missing = [key for section, key, _, options in KEYS.values()
               if section == "text" and "default" not in options and text.get(key) is None]
    check(not missing, CheckpointError,
          f"{source} text_config lacks {missing}: the file is incomplete or not a DiffusionGemma config.")
    return top, t


def _rope_sections(t: Fields) -> tuple[Fields, Fields]:
    """The sliding and full layers' RoPE settings, refused unless default and proportional RoPE."""
    rope = t.section("rope_parameters")
    sliding = rope.section(SLIDING)
    full = rope.section(FULL) if rope.has(FULL) else Fields(DEFAULT_FULL_ROPE, t.file, f"{rope.where}{FULL}.", t.fix)
    check(sliding.string("rope_type", "default") == "default" and sliding.number("partial_rotary_factor", 1.0) == 1.0,
          CheckpointError, f"{t.file}: unsupported sliding-layer RoPE {sliding.data}: expected default RoPE over the "
          "whole head.")
    check(full.string("rope_type", "") == "proportional" and full.number("factor", 1.0) == 1.0, CheckpointError,
          f"{t.file}: unsupported full-layer RoPE {full.data}: expected unscaled proportional RoPE.")
    return sliding, full


def default_layer_types(n_layers: int) -> tuple[str, ...]:
    """transformers' default pattern: every 6th layer is full attention, the others sliding."""
    return tuple(FULL if (i + 1) % 6 == 0 else SLIDING for i in range(n_layers))


def _layer_types(t: Fields, n_layers: int) -> tuple[str, ...]:
    """text_config.layer_types, checked; absent or null: transformers' default (every 6th layer full)."""
    raw = t.data.get("layer_types")
    need = f"a list of {n_layers} layer kinds (one per layer), each {SLIDING!r} or {FULL!r}"
    types = list(default_layer_types(n_layers)) if raw is None else raw
    if not isinstance(types, list):
        raise t.error("layer_types", raw, need)
    check(len(types) == n_layers, CheckpointError, f"{t.file}: text_config.layer_types lists {len(types)} layers but "
          f"text_config.num_hidden_layers is {n_layers}; it must be {need}. {t.fix}")
    unknown = sorted({shown(k) for k in types if k not in (SLIDING, FULL)})
    check(not unknown, CheckpointError, f"{t.file}: text_config.layer_types holds unknown layer kind(s) "
          f"{', '.join(unknown)}; it must be {need}. {t.fix}")
    types = list(types)
    types[-1] = FULL  # transformers forces the last layer to full attention
    return tuple(types)


def _full_attention_shape(t: Fields, layer_types: tuple[str, ...], head_dim: int, kv_heads: int) -> tuple[int, int]:
    """(head_dim, kv heads) of the full-attention layers, from either config layout. The engine has one
    shape per layer kind, so overrides that differ between full layers, or give a sliding layer its
    own shape, are refused rather than silently ignored."""
    default_dim = t.integer("global_head_dim", 512, low=2)
    default_kv = t.integer("num_global_key_value_heads", kv_heads, nullable=True)
    k_eq_v = t.flag("attention_k_eq_v", True, nullable=True)
    per = t.section("per_layer_config")
    shapes: set[tuple[int, int]] = set()
    for i, kind in enumerate(layer_types):
        key = str(i) if per.has(str(i)) else FULL if kind == FULL and per.has(FULL) else None
        o = per.section(key) if key else Fields({}, t.file)
        if kind == SLIDING:
            shape = (o.integer("head_dim", head_dim, low=2), o.integer("num_key_value_heads", kv_heads))
            check(shape == (head_dim, kv_heads), CheckpointError, f"{t.file}: text_config.per_layer_config.{i} "
                  f"gives sliding layer {i} its own shape ({shown(o.data)}); this engine needs every sliding layer to "
                  f"have head_dim={head_dim} and num_key_value_heads={kv_heads}. {t.fix}")
            continue
        kv = o.integer("num_key_value_heads", default_kv) if k_eq_v else default_kv
        shapes.add((o.integer("head_dim", default_dim, low=2), kv))
    check(len(shapes) == 1, CheckpointError, f"{t.file}: text_config.per_layer_config gives the full-attention "
          f"layers different (head_dim, key/value heads) {sorted(shapes)}; this engine needs one shape for all of "
          f"them. {t.fix}")
    return shapes.pop()


# The smallest vision tower transformers accepts: what the kit writes for a model without a loaded
# tower (its trained models are text-only), in the official layout so that
# `DiffusionGemmaForBlockDiffusion` loads the file; load_model recognises it and skips it.
TINY_VISION_CONFIG = {
    "model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
}


# GenerationSettings field -> its key in generation_config.json (transformers' names), for messages.
GENERATION_FILE_KEYS = {"entropy_bound": "sampler_config.entropy_bound", "eos_token_ids": "eos_token_id"}


def _finite(v: Any) -> bool:
    return is_number(v) and math.isfinite(v) and v >= 0


# GenerationSettings field -> (its test, the rule, a hint), checked in this order by validate().
SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "max_new_tokens": (lambda v: is_int(v) and v > 0, "must be a positive integer", ""),
    "max_denoising_steps": (lambda v: is_int(v) and v > 0, "must be a positive integer", ""),
    "entropy_bound": (lambda v: _finite(v) and v > 0, "must be > 0 and finite",
                      "the default is 0.1, larger accepts more tokens per step"),
    "t_min": (_finite, "must be a finite number >= 0", "the default is 0.4"),
    "t_max": (_finite, "must be a finite number >= 0", "the default is 0.8"),
    "stability_threshold": (lambda v: is_int(v) and v >= 0, "must be an integer >= 0", ""),
    "confidence_threshold": (_finite, "must be >= 0 and finite", "0 switches adaptive stopping off"),
}


@dataclass
class GenerationSettings:
    """Sampler settings. Names follow transformers' DiffusionGemmaGenerationConfig."""

    max_new_tokens: int = 256
    max_denoising_steps: int = 48
    entropy_bound: float = 0.1
    t_min: float = 0.4
    t_max: float = 0.8
    # Adaptive stopping; confidence_threshold=0 switches it off (every canvas runs all steps).
    stability_threshold: int = 1
    confidence_threshold: float = 0.005
    eos_token_ids: tuple[int, ...] = (1, 106, 50)
    pad_token_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_hf(cls, gen: dict[str, Any], model_config: ModelConfig | None = None,
                source: str = "generation_config.json") -> GenerationSettings:
        """Defaults from a generation_config.json (unset or null entries keep the published ones), taken
        as the file has them and checked by `validate(source=...)`."""
        s = cls()
        if model_config is not None:
            s.eos_token_ids = model_config.eos_token_ids
            s.pad_token_id = model_config.pad_token_id
        for key in ("max_new_tokens", "max_denoising_steps", "stability_threshold", "pad_token_id", "t_min", "t_max",
                    "confidence_threshold"):
            if gen.get(key) is not None:
                setattr(s, key, gen[key])
        sampler = gen.get("sampler_config")
        if sampler is not None:
            fields = Fields(gen, source, fix=f"Correct it in {source}, or delete it to use the published default.")
            if not isinstance(sampler, dict):
                raise fields.error("sampler_config", sampler, 'an object like {"entropy_bound": 0.1, '
                                   '"_cls_name": "EntropyBoundSamplerConfig"}')
            if sampler.get("_cls_name", "EntropyBoundSamplerConfig") != "EntropyBoundSamplerConfig":
                raise fields.section("sampler_config").error(
                    "_cls_name", sampler["_cls_name"],
                    '"EntropyBoundSamplerConfig", the one sampler DiffusionGemma has')
            if sampler.get("entropy_bound") is not None:
                s.entropy_bound = sampler["entropy_bound"]
        eos = gen.get("eos_token_id")
        if eos is not None:
            s.eos_token_ids = tuple(eos) if isinstance(eos, list) else (eos,)
        s.validate(vocab_size=model_config.vocab_size if model_config is not None else None, source=source)
        for key in ("t_min", "t_max", "confidence_threshold", "entropy_bound"):
            setattr(s, key, float(getattr(s, key)))
        return s

    def replace(self, **overrides: Any) -> GenerationSettings:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        check(not unknown, InputError, f"unknown generation setting(s) {sorted(unknown)}; valid: "
              f"{[f.name for f in dataclasses.fields(self) if f.name != 'extra']}")
        new = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
        new.validate()
        return new

    def validate(self, *, vocab_size: int | None = None, source: str | None = None) -> None:
        """Check every setting's type and range (SETTING_RULES), t_max > t_min, and with `vocab_size`
        the token ids. Settings given in code (`source=None`) raise InputError naming the argument; read
        from a file (`source` = its path), CheckpointError naming the file and the field as it spells it."""
        def token(v: Any) -> bool:
            return is_int(v) and v >= 0 and (vocab_size is None or v < vocab_size)

        top = f"0..{vocab_size - 1}" if vocab_size else ">= 0"
        rules = {**SETTING_RULES,
                 "eos_token_ids": (lambda v: isinstance(v, (tuple, list)) and all(token(e) for e in v),
                                   f"must be a list of integer token ids in {top}", ""),
                 "pad_token_id": (token, f"must be an integer token id in {top}", "")}
        for name, (ok, rule, hint) in rules.items():
            value = getattr(self, name)
            if ok(value):
                continue
            if source is None:
                raise InputError(f"{name} {rule} (got {value!r})" + (f"; {hint}" if hint else "") + ".")
            raise CheckpointError(f"{source}: {GENERATION_FILE_KEYS.get(name, name)} is {shown(value)}; it {rule}"
                                  + (f" ({hint})" if hint else "") + f". Correct it in {Path(source).name}, or "
                                  "delete the field to use the published default.")
        if not self.t_max > self.t_min:
            where = f"{source}: " if source else ""
            fix = (f"Correct t_min or t_max in {Path(source).name}, or delete both to use the published defaults "
                   "0.4 and 0.8." if source else "The defaults are 0.4 and 0.8.")
            raise (CheckpointError if source else InputError)(
                f"{where}t_max must be greater than t_min (got t_min={self.t_min}, t_max={self.t_max}): the "
                f"temperature falls from t_max to t_min over the rounds. {fix}")

    def temperature(self, remaining: int) -> float:
        """Linear schedule: t_max on the first step (remaining == N), falling towards t_min."""
        return self.t_min + (self.t_max - self.t_min) * (remaining / self.max_denoising_steps)


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a checkpoint file; anything else (unreadable, not UTF-8, not JSON) is a CheckpointError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} is not valid JSON ({e}): the {what} is corrupt; re-download or re-save "
                              "it.") from e
    except OSError as e:
        raise CheckpointError(f"{path} could not be read ({e.strerror or e}): the {what} must be a readable "
                              "file.") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object: the {what} is corrupt.")
    return data
