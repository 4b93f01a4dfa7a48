"""LoRA adapters on the kit's model through peft, saved in peft's own format for transformers' model.

The kit's module names are the checkpoint's without `model.decoder.`, so one regular expression selects
the same linears in both. transformers' model holds the text layers twice (the encoder's are tied
copies of the denoiser's), so a saved adapter carries each LoRA matrix once per copy: loaded with
`PeftModel.from_pretrained(DiffusionGemmaForBlockDiffusion...)` it computes what the kit computes.
The defaults follow NeMo AutoModel's DiffusionGemma LoRA recipe: rank 16 on attention (q/k/v/o) and
the dense MLP; the router and the experts stay frozen.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..atomic import atomic_dir
from ..checkpoint import kit_to_hf
from ..errors import CheckpointError
from ..model import DiffusionGemma

# The text layers' linears, under the kit's names and under transformers' two copies (not the vision tower's).
ATTENTION_AND_MLP = (r"(model\.decoder\.|model\.encoder\.language_model\.)?layers\.\d+\."
                     r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)")
EXPERT_PARAMETERS = ["experts.gate_up_proj", "experts.down_proj"]
ENCODER_COPY = "model.encoder.language_model."  # where transformers keeps its tied copy of each text layer
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def lora_config(rank: int = 16, alpha: int | None = None, experts: bool = False) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, target_modules=ATTENTION_AND_MLP,
                      target_parameters=EXPERT_PARAMETERS if experts else None)


def add_lora(model: DiffusionGemma, config: LoraConfig, seed: int = 0) -> DiffusionGemma:
    """Inject `config`'s adapters into `model` in place (A from `seed`, B zero: the model computes what it
    did); only they train."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:  # float32 adapters (and optimizer state) over bfloat16 frozen weights
            p.data = p.data.float()
    return model


def has_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_adapter(model: DiffusionGemma, out: str | os.PathLike, base: str | None = None) -> Path:
    """adapter_config.json + adapter_model.safetensors in peft's format, named for transformers' model."""
    config = model.peft_config["default"]
    tensors = {}
    for name, t in get_peft_model_state_dict(model, save_embedding_layers=False).items():
        t = t.detach().to("cpu").contiguous()
        tensors["base_model.model." + kit_to_hf(name)] = t
        tensors["base_model.model." + ENCODER_COPY + name] = t.clone()  # safetensors stores no shared tensors
    settings = config.to_dict()
    settings.update(base_model_name_or_path=base, target_parameters=config.target_parameters)
    settings = {k: sorted(v) if isinstance(v, set) else v for k, v in settings.items()}
    with atomic_dir(out) as tmp:
        save_file(tensors, tmp / "adapter_model.safetensors", metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    return Path(out)


def load_adapter(model: DiffusionGemma, path: str | os.PathLike) -> DiffusionGemma:
    """Add the adapter saved at `path` to `model` (in place), refusing one made for another base model."""
    path = Path(path)
    missing = [f for f in ADAPTER_FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a peft adapter (no {', '.join(missing)}): pass the directory "
                              "finetune wrote its adapter to.")
    config = LoraConfig.from_pretrained(path)
    tensors = {}
    for name, t in load_file(path / "adapter_model.safetensors").items():
        name = name.removeprefix("base_model.model.")
        if name.startswith("model.decoder."):
            tensors[name.removeprefix("model.decoder.")] = t
    add_lora(model, config)
    expected = {name: tuple(t.shape) for name, t in get_peft_model_state_dict(model, save_embedding_layers=False).items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if expected != found:
        wrong = sorted(set(expected) ^ set(found)) or [n for n in expected if expected[n] != found[n]]
        detail = ", ".join(f"{n} {found.get(n, 'absent')} vs {expected.get(n, 'absent')}" for n in wrong[:3])
        raise CheckpointError(f"the adapter in {path} was made for another base model: its tensors do not match "
                              f"this model's layers ({len(wrong)} differ, e.g. {detail}, adapter vs model): load "
                              f"it onto the model it was trained on ({config.base_model_name_or_path or 'not recorded'}).")
    set_peft_model_state_dict(model, {k: v.float() for k, v in tensors.items()})
    return model


def merge(model: DiffusionGemma) -> DiffusionGemma:
    """Fold the adapters into the weights (in place) and remove peft's layers: a plain DiffusionGemma."""
    tuned = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for _, module in tuned:
        module.merge()
    for name, module in tuned:  # outermost first: get_base_layer unwraps a wrapped wrapper in one step
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    if has_lora(model):
        del model.peft_config
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def checkpoint_layers(model: DiffusionGemma) -> None:
    """Gradient checkpointing: each layer's activations are recomputed in the backward pass instead of
    kept. The recomputation replays the cache protocol's mode (encode or denoise) as it was in the
    forward pass, so that training's KV context is read and written the same way twice."""
    for layer in model.layers:
        if getattr(layer, "_checkpointed", False):
            continue
        forward = layer.forward

        def run(x, rope, mask, cache, encoder, _forward=forward):
            mode = cache._mode

            def replay(x):
                saved, cache._mode = cache._mode, mode
                try:
                    return _forward(x, rope, mask, cache, encoder)
                finally:
                    cache._mode = saved

            if not torch.is_grad_enabled():
                return _forward(x, rope, mask, cache, encoder)
            return checkpoint(replay, x, use_reentrant=False)

        layer.forward = run
        layer._checkpointed = True

