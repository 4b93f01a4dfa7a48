"""Look inside a DiffusionGemma: where the parameters are, what the encoder and the denoiser share, the
layer pattern, and which experts a real prompt routes to (notebook 02; dgemma_helpers/plots/anatomy.py
plots them). Counting works on a bare ModelConfig too (a weightless "meta" model): the official 26B
model's numbers need no download.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cache import KVCache
from ..checkpoint import index_checkpoint
from ..config import SLIDING, ModelConfig
from ..errors import InputError
from ..inputs import prompt_batch
from ..model import DiffusionGemma
from ..validate import check
from ..vision import OFFICIAL_VISION_CONFIG, VISION_PREFIXES, vision_parameters

# Parameter groups, in the order a token meets them.
PARTS = ("embedding", "self-conditioning", "attention", "norms", "dense MLP", "router", "experts")


def as_model(model_or_config: DiffusionGemma | ModelConfig) -> DiffusionGemma:
    """The model itself, or a weightless (meta) one built from a config: shapes without memory."""
    if isinstance(model_or_config, DiffusionGemma):
        return model_or_config
    if isinstance(model_or_config, ModelConfig):
        with torch.device("meta"):
            return DiffusionGemma(model_or_config)
    raise InputError(f"expected a DiffusionGemma model or a ModelConfig (got {type(model_or_config).__name__}); "
                     "load one with dg.load_model(path).")


def part_of(name: str) -> str:
    """The group of a parameter name, e.g. 'layers.3.experts.down_proj' -> 'experts'."""
    if name.startswith("embed_tokens."):
        return "embedding"
    if name.startswith("self_conditioning."):
        return "self-conditioning"
    if name == "norm.weight" or "norm" in name.rsplit(".", 2)[-2]:
        return "norms"
    for key, part in ((".self_attn.", "attention"), (".mlp.", "dense MLP"), (".router.", "router"),
                      (".experts.", "experts")):
        if key in name:
            return part
    raise ValueError(f"parameter {name!r} belongs to no known part")


# ---- parameter counts --------------------------------------------------------------------------
@dataclass
class ParameterCounts:
    total: int
    active: int  # what one token touches: all but the (num_experts - top_k) experts it is not routed to
    by_part: dict[str, int]
    active_by_part: dict[str, int]

    def records(self) -> list[dict]:
        """One row per part: name, total, active, share of the total."""
        return [dict(part=p, total=self.by_part[p], active=self.active_by_part[p],
                     share=self.by_part[p] / self.total) for p in PARTS]


def parameter_counts(model_or_config: DiffusionGemma | ModelConfig) -> ParameterCounts:
    """Total and active parameters, split by part of the network."""
    model = as_model(model_or_config)
    c = model.config
    by_part = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():
        by_part[part_of(name)] += p.numel()
    active_by_part = dict(by_part)
    # Expert weights are [num_experts, ...] per layer; a token uses top_k of them in every layer.
    active_by_part["experts"] = by_part["experts"] // c.num_experts * c.top_k_experts
    return ParameterCounts(total=model.num_parameters(), active=model.num_parameters(active=True),
                           by_part=by_part, active_by_part=active_by_part)


@dataclass
class VisionShare:
    """The vision tower's parameters beside the text model's."""

    text: int
    vision: int  # 0 where the model has no (trained) tower
    note: str  # where the vision number comes from, or why there is none

    @property
    def share(self) -> float:
        return self.vision / (self.text + self.vision)


def vision_share(model_or_config: DiffusionGemma | ModelConfig, vision_config: dict | None = None) -> VisionShare:
    """A loaded model's tower (model.vision), or for a config the tower of `vision_config` (default:
    the official checkpoint's), counted on weightless modules."""
    text = parameter_counts(model_or_config).total
    if isinstance(model_or_config, ModelConfig):
        vc = vision_config or OFFICIAL_VISION_CONFIG
        note = "the official checkpoint's vision tower" if vision_config is None else "the given vision_config"
        return VisionShare(text=text, vision=vision_parameters(vc, model_or_config.hidden_size),
                           note=f"{note} ({vc['num_hidden_layers']} layers of width {vc['hidden_size']}), counted "
                                "from its shape")
    tower = getattr(model_or_config, "vision", None)
    if tower is None:
        return VisionShare(text=text, vision=0, note=getattr(model_or_config, "vision_note", None)
                           or "this model has no vision tower")
    return VisionShare(text=text, vision=tower.num_parameters(), note="the loaded vision tower and its embedder")


# ---- encoder / denoiser weight sharing -------------------------------------------------------------
@dataclass
class WeightSharing:
    """One set of weights, two modes. The denoiser alone has the self-conditioning block; each mode
    has its own per-layer output scalar (a buffer, one number per layer)."""

    shared: int  # parameters both modes run: embeddings, every layer, the final norm
    denoiser_only: int  # the self-conditioning block
    encoder_only: int  # 0: the encoder has no weights of its own
    encoder_scalars: list[float]  # per layer
    denoiser_scalars: list[float]
    checkpoint_sections: dict[str, dict[str, int]] | None  # section -> {"tensors": n, "values": n}

    @property
    def encoder_parameters(self) -> int:
        return self.shared + self.encoder_only

    @property
    def denoiser_parameters(self) -> int:
        return self.shared + self.denoiser_only

    @property
    def if_untied(self) -> int:
        """What two separate networks would hold: the price the sharing avoids."""
        return self.encoder_parameters + self.denoiser_parameters

    def scalar_records(self) -> list[dict]:
        return [dict(layer=i, encoder=e, denoiser=d) for i, (e, d) in
                enumerate(zip(self.encoder_scalars, self.denoiser_scalars))]


def weight_sharing(model: DiffusionGemma) -> WeightSharing:
    """Numbers for the encoder/denoiser sharing, from the model and (when it was loaded from a
    directory) from its checkpoint files' headers."""
    counts = parameter_counts(model)
    denoiser_only = counts.by_part["self-conditioning"]
    sections = checkpoint_sections(model.path) if getattr(model, "path", None) is not None else None
    scalars = [(float(layer.encoder_layer_scalar), float(layer.layer_scalar)) for layer in model.layers] \
        if model.device.type != "meta" else [(float("nan"), float("nan"))] * len(model.layers)
    return WeightSharing(shared=counts.total - denoiser_only, denoiser_only=denoiser_only, encoder_only=0,
                         encoder_scalars=[e for e, _ in scalars], denoiser_scalars=[d for _, d in scalars],
                         checkpoint_sections=sections)


CHECKPOINT_SECTIONS = (("model.decoder.", "denoiser (model.decoder)"),
                       ("model.encoder.language_model.", "encoder (model.encoder.language_model)"),
                       *((prefix, "vision tower (skipped)") for prefix in VISION_PREFIXES))


def checkpoint_sections(path: str | Path) -> dict[str, dict[str, int]]:
    """Tensors and values per section of a checkpoint directory, read from the file headers only."""
    out: dict[str, dict[str, int]] = {}
    for name, entry in index_checkpoint(Path(path)).items():
        section = next((s for prefix, s in CHECKPOINT_SECTIONS if name.startswith(prefix)), "other")
        row = out.setdefault(section, {"tensors": 0, "values": 0})
        row["tensors"] += 1
        row["values"] += math.prod(entry.shape)
    return out


# ---- layer pattern -------------------------------------------------------------------------------
@dataclass
class LayerInfo:
    layer: int
    attention: str  # "sliding" or "full"
    window: int | None  # tokens a sliding layer sees; None: the whole context
    query_heads: int
    kv_heads: int
    head_dim: int
    values: str  # "v_proj", or "keys" where the values are the keys (full layers)
    rope_theta: float
    rotary_fraction: float  # share of each head that rotates
    parameters: int


def layer_pattern(model_or_config: DiffusionGemma | ModelConfig) -> list[LayerInfo]:
    """One row per layer: attention kind, heads, head size, RoPE, parameters."""
    model = as_model(model_or_config)
    c = model.config
    rows = []
    for i, layer in enumerate(model.layers):
        sliding = c.layer_types[i] == SLIDING
        rows.append(LayerInfo(
            layer=i, attention="sliding" if sliding else "full", window=c.sliding_window if sliding else None,
            query_heads=c.num_heads, kv_heads=c.kv_heads(i), head_dim=c.head_dim(i),
            values="v_proj" if layer.self_attn.v_proj is not None else "keys",
            rope_theta=c.sliding_rope_theta if sliding else c.full_rope_theta,
            rotary_fraction=1.0 if sliding else c.full_rope_fraction,
            parameters=sum(p.numel() for p in layer.parameters())))
    return rows


# ---- MoE routing on a real prompt -------------------------------------------------------------------
@dataclass
class RoutingTrace:
    """Which experts each prompt token was routed to, in every layer (the encoder pass)."""

    token_ids: list[int]
    tokens: list[str]  # each token's text
    experts: torch.Tensor  # [layers, tokens, top_k] expert indices
    weights: torch.Tensor  # [layers, tokens, top_k] routing weights (after per-expert scale)
    num_experts: int

    @property
    def top_k(self) -> int:
        return self.experts.shape[-1]

    def counts(self) -> torch.Tensor:
        """[layers, num_experts]: how many tokens each expert received; each row sums to tokens * top_k."""
        return torch.stack([torch.bincount(layer.reshape(-1), minlength=self.num_experts) for layer in self.experts])

    def experts_used(self) -> torch.Tensor:
        """[layers]: distinct experts that fired at least once."""
        return (self.counts() > 0).sum(dim=1)

    def token_expert_weights(self, layer: int) -> torch.Tensor:
        """[tokens, num_experts] routing weight of each token for each expert (0 where not routed)."""
        out = torch.zeros(len(self.token_ids), self.num_experts, dtype=self.weights.dtype)
        return out.scatter_(1, self.experts[layer], self.weights[layer])


@torch.inference_mode()
def expert_routing(model: DiffusionGemma, prompt: str | None = None, *, messages: Sequence[dict] | None = None,
                   input_ids: Sequence[int] | None = None, thinking: bool | None = None) -> RoutingTrace:
    """Run the encoder over one prompt and record every layer's router decisions (forward hooks
    on the Router modules; the model is left as it was)."""
    ids, _, rows = prompt_batch(model, prompt, messages, input_ids, thinking, model.config.pad_token_id)
    check(len(rows) == 1, InputError,  # prompt_batch takes a batch of any of the three
          "expert_routing traces one prompt: pass a single string (or one chat, or one list of ids).")
    decisions: list[tuple[torch.Tensor, torch.Tensor]] = []

    def record(_module, _inputs, output) -> None:
        weights, experts = output
        decisions.append((weights.float().cpu(), experts.cpu()))

    hooks = [layer.router.register_forward_hook(record) for layer in model.layers]
    try:
        cache = KVCache(model.config, 1, ids.shape[1], device=model.device, dtype=model.dtype)
        model.encode(ids, cache)
    finally:
        for h in hooks:
            h.remove()
    token_ids = rows[0]
    tok = model.tokenizer
    tokens = [tok.decode([t]) for t in token_ids] if tok is not None else [str(t) for t in token_ids]
    return RoutingTrace(token_ids=token_ids, tokens=tokens, experts=torch.stack([e for _, e in decisions]),
                        weights=torch.stack([w for w, _ in decisions]), num_experts=model.config.num_experts)
