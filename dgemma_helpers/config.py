"""Model and generation settings, parsed from a checkpoint's config.json / generation_config.json.

`ModelConfig` is the text model only (the vision tower is not part of this engine). It is read
from the `text_config` of a `DiffusionGemmaForBlockDiffusion` config.json, in both the layout that
transformers writes (`per_layer_config`) and the one the official checkpoint ships
(`global_head_dim` / `num_global_key_value_heads`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputError

SLIDING = "sliding_attention"
FULL = "full_attention"


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

    def __post_init__(self) -> None:
        if not self.layer_types:
            # transformers' default pattern: every 6th layer is full attention.
            types = tuple(FULL if (i + 1) % 6 == 0 else SLIDING for i in range(self.num_layers))
            object.__setattr__(self, "layer_types", types)

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
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a parsed config.json of `DiffusionGemmaForBlockDiffusion`."""
        model_type = cfg.get("model_type")
        if model_type != "diffusion_gemma":
            raise CheckpointError(
                f"config.json has model_type={model_type!r}, expected 'diffusion_gemma'. This kit runs "
                "DiffusionGemma checkpoints only (google/diffusiongemma-26B-A4B-it or models/dgemma-tiny)."
            )
        text = cfg.get("text_config")
        if not isinstance(text, dict):
            raise CheckpointError("config.json has no 'text_config' section: it is not a DiffusionGemma config.")
        # These two flags are omitted by the official config; transformers treats both as on.
        if text.get("enable_moe_block", True) is False:
            raise CheckpointError("config.json sets enable_moe_block=false: this engine (like transformers) needs the MoE block.")
        if text.get("hidden_activation", "gelu_pytorch_tanh") not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise CheckpointError(f"unsupported hidden_activation {text['hidden_activation']!r}: expected gelu_pytorch_tanh.")
        if text.get("use_bidirectional_attention") == "all":
            raise CheckpointError("use_bidirectional_attention='all' is not supported: the encoder must be causal.")
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "num_experts", "top_k_experts", "moe_intermediate_size"]
        missing = [k for k in required if text.get(k) is None]
        if missing:
            raise CheckpointError(f"config.json text_config lacks {missing}: the file is incomplete or not a DiffusionGemma config.")

        n_layers = int(text["num_hidden_layers"])
        layer_types = text.get("layer_types") or [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(n_layers)]
        if len(layer_types) != n_layers or set(layer_types) - {SLIDING, FULL}:
            raise CheckpointError(f"config.json layer_types {layer_types} does not list {n_layers} sliding/full layers.")
        layer_types = list(layer_types)
        layer_types[-1] = FULL  # transformers forces the last layer to full attention

        full_head_dim = text.get("global_head_dim", 512)
        full_kv_heads = text.get("num_global_key_value_heads")
        per_layer = text.get("per_layer_config") or {}
        full_layers = [i for i, t in enumerate(layer_types) if t == FULL]
        overrides = per_layer.get(str(full_layers[0])) or per_layer.get(full_layers[0]) or per_layer.get(FULL) or {}
        full_head_dim = overrides.get("head_dim", full_head_dim)
        if text.get("attention_k_eq_v", True):
            full_kv_heads = overrides.get("num_key_value_heads", full_kv_heads)
        if full_kv_heads is None:
            full_kv_heads = text["num_key_value_heads"]

        rope = text.get("rope_parameters") or {}
        sliding_rope = rope.get(SLIDING, {"rope_type": "default", "rope_theta": 10_000.0})
        full_rope = rope.get(FULL, {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1e6})
        if sliding_rope.get("rope_type", "default") != "default" or sliding_rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError(f"unsupported sliding-layer RoPE {sliding_rope}: expected default RoPE over the whole head.")
        if full_rope.get("rope_type") != "proportional" or full_rope.get("factor", 1.0) != 1.0:
            raise CheckpointError(f"unsupported full-layer RoPE {full_rope}: expected unscaled proportional RoPE.")

        eos = text.get("eos_token_id", 1)
        eos = tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)
        config = cls(
            vocab_size=int(text["vocab_size"]),
            hidden_size=int(text["hidden_size"]),
            intermediate_size=int(text["intermediate_size"]),
            num_layers=n_layers,
            num_heads=int(text["num_attention_heads"]),
            sliding_kv_heads=int(text["num_key_value_heads"]),
            sliding_head_dim=int(text["head_dim"]),
            sliding_window=int(text.get("sliding_window", 512)),
            sliding_rope_theta=float(sliding_rope.get("rope_theta", 10_000.0)),
            full_kv_heads=int(full_kv_heads),
            full_head_dim=int(full_head_dim),
            full_rope_theta=float(full_rope.get("rope_theta", 1e6)),
            full_rope_fraction=float(full_rope.get("partial_rotary_factor", 1.0)),
            layer_types=tuple(layer_types),
            num_experts=int(text["num_experts"]),
            top_k_experts=int(text["top_k_experts"]),
            moe_intermediate_size=int(text["moe_intermediate_size"]),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            final_logit_softcapping=float(text.get("final_logit_softcapping") or 30.0),
            max_position_embeddings=int(text.get("max_position_embeddings", 131_072)),
            canvas_length=int(cfg.get("canvas_length") or 256),
            pad_token_id=int(text.get("pad_token_id") if text.get("pad_token_id") is not None else 0),
            bos_token_id=int(text.get("bos_token_id") if text.get("bos_token_id") is not None else 2),
            eos_token_ids=tuple(int(e) for e in eos if e is not None),
        )
        config.validate()
        return config

    def validate(self) -> None:
        for heads, name in ((self.sliding_kv_heads, "num_key_value_heads"), (self.full_kv_heads, "num_global_key_value_heads")):
            if heads <= 0 or self.num_heads % heads:
                raise CheckpointError(f"num_attention_heads={self.num_heads} is not a multiple of {name}={heads}.")
        if not 0 < self.top_k_experts <= self.num_experts:
            raise CheckpointError(f"top_k_experts={self.top_k_experts} must be in 1..num_experts={self.num_experts}.")
        if self.canvas_length <= 0:
            raise CheckpointError(f"canvas_length={self.canvas_length} must be positive.")

    def to_hf(self) -> dict[str, Any]:
        """The config.json transformers writes for this text model (vision tower left minimal)."""
        text = {
            "model_type": "diffusion_gemma_text",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.sliding_kv_heads,
            "head_dim": self.sliding_head_dim,
            "hidden_activation": "gelu_pytorch_tanh",
            "sliding_window": self.sliding_window,
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
            "num_experts": self.num_experts,
            "top_k_experts": self.top_k_experts,
            "moe_intermediate_size": self.moe_intermediate_size,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else self.eos_token_ids[0],
            "tie_word_embeddings": True,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_bidirectional_attention": None,
        }
        return {
            "architectures": ["DiffusionGemmaForBlockDiffusion"],
            "model_type": "diffusion_gemma",
            "canvas_length": self.canvas_length,
            "tie_word_embeddings": True,
            "text_config": text,
            "vision_config": dict(TINY_VISION_CONFIG),
        }


# The smallest vision tower transformers accepts: checkpoints this kit writes are text-only in
# practice, but keep the official layout so `DiffusionGemmaForBlockDiffusion` loads them.
TINY_VISION_CONFIG = {
    "model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 32, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
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
    def from_hf(cls, gen: dict[str, Any], model_config: ModelConfig | None = None) -> GenerationSettings:
        """Defaults from a generation_config.json; unset (null) entries keep the published defaults."""
        s = cls()
        if model_config is not None:
            s.eos_token_ids = model_config.eos_token_ids
            s.pad_token_id = model_config.pad_token_id
        for key, kind in (("max_new_tokens", int), ("max_denoising_steps", int), ("stability_threshold", int),
                          ("pad_token_id", int), ("t_min", float), ("t_max", float), ("confidence_threshold", float)):
            if gen.get(key) is not None:
                setattr(s, key, kind(gen[key]))
        sampler = gen.get("sampler_config")
        if isinstance(sampler, dict) and sampler.get("entropy_bound") is not None:
            s.entropy_bound = float(sampler["entropy_bound"])
        eos = gen.get("eos_token_id")
        if eos is not None:
            s.eos_token_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        return s

    def replace(self, **overrides: Any) -> GenerationSettings:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(f"unknown generation setting(s) {sorted(unknown)}; valid: "
                             f"{[f.name for f in dataclasses.fields(self) if f.name != 'extra']}")
        new = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
        new.validate()
        return new

    def validate(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(msg)

        check(isinstance(self.max_new_tokens, int) and self.max_new_tokens > 0,
              f"max_new_tokens must be a positive integer (got {self.max_new_tokens!r}).")
        check(isinstance(self.max_denoising_steps, int) and self.max_denoising_steps > 0,
              f"max_denoising_steps must be a positive integer (got {self.max_denoising_steps!r}).")
        check(isinstance(self.entropy_bound, (int, float)) and math.isfinite(self.entropy_bound) and self.entropy_bound > 0,
              f"entropy_bound must be > 0 (got {self.entropy_bound!r}); the default is 0.1, larger accepts more tokens per step.")
        check(self.t_min >= 0 and self.t_max >= 0, f"t_min and t_max must be >= 0 (got t_min={self.t_min}, t_max={self.t_max}).")
        check(self.t_max > self.t_min,
              f"t_max must be greater than t_min (got t_min={self.t_min}, t_max={self.t_max}); the defaults are 0.4 and 0.8.")
        check(isinstance(self.stability_threshold, int) and self.stability_threshold >= 0,
              f"stability_threshold must be an integer >= 0 (got {self.stability_threshold!r}).")
        check(isinstance(self.confidence_threshold, (int, float)) and self.confidence_threshold >= 0,
              f"confidence_threshold must be >= 0, 0 switching adaptive stopping off (got {self.confidence_threshold!r}).")

    def temperature(self, remaining: int) -> float:
        """Linear schedule: t_max on the first step (remaining == N), falling towards t_min."""
        return self.t_min + (self.t_max - self.t_min) * (remaining / self.max_denoising_steps)


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}): the {what} is corrupt; re-download or re-save it.") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object: the {what} is corrupt.")
    return data
