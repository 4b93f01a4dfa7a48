"""Read and write DiffusionGemmaForBlockDiffusion checkpoint directories (safetensors only).

Loading checks everything before it allocates anything: config, every shard's header (a
truncated or corrupt file is named), every tensor's name and shape against the config, and the
memory the device has. Then the model is built empty on the target device and each tensor is
copied in straight from the memory-mapped shard, in the target dtype: there is never a full CPU
copy of the weights. Pickle files (.bin) are refused, never opened.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .atomic import atomic_dir
from .config import GenerationSettings, ModelConfig, read_json
from .devices import available_memory, resolve_device, resolve_dtype
from .errors import CheckpointError, DeviceError
from .model import DiffusionGemma

log = logging.getLogger("dgemma_helpers")

GET_MODEL_HINT = (
    "Download the official checkpoint with `hf download google/diffusiongemma-26B-A4B-it --local-dir PATH` "
    "(about 50 GB), or use the kit's small model in models/dgemma-tiny."
)
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1}
VISION_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.embed_vision.")


@dataclass
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]


# ---- names --------------------------------------------------------------------------------------
def hf_to_kit(name: str) -> str | None:
    """The model's parameter name for a checkpoint tensor; None for tensors the engine skips."""
    if name.startswith("model.decoder."):
        return name[len("model.decoder."):]
    if name.startswith("model.encoder.language_model."):
        rest = name[len("model.encoder.language_model."):]
        if rest.endswith(".layer_scalar"):  # the one encoder tensor not tied to the denoiser's
            return rest[: -len("layer_scalar")] + "encoder_layer_scalar"
        return None  # a tied copy of a denoiser weight
    if name == "lm_head.weight" or name.startswith(VISION_PREFIXES):
        return None
    raise CheckpointError(f"unexpected tensor {name!r}: this is not a DiffusionGemmaForBlockDiffusion checkpoint.")


def kit_to_hf(name: str) -> str:
    if name.endswith(".encoder_layer_scalar"):
        return "model.encoder.language_model." + name[: -len("encoder_layer_scalar")] + "layer_scalar"
    return "model.decoder." + name


# ---- safetensors headers --------------------------------------------------------------------------
def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and check one file's header without reading its data."""
    size = path.stat().st_size
    fix = f"re-download or re-save {path.name}"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes): not a safetensors file; {fix}.")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path} is corrupt or truncated: its header claims {n} bytes but the file has "
                                  f"{size}; {fix}.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} has a corrupt safetensors header ({e}); {fix}.") from e
    header.pop("__metadata__", None)
    entries, end = {}, 0
    for name, info in header.items():
        try:
            dtype, shape, (start, stop) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt header entry for {name!r}; {fix}.") from e
        numel = 1
        for d in shape:
            numel *= d
        if dtype not in DTYPE_BYTES or stop - start != numel * DTYPE_BYTES[dtype]:
            raise CheckpointError(f"{path}: header entry for {name!r} is inconsistent ({dtype}, {shape}, "
                                  f"{stop - start} bytes); {fix}.")
        entries[name] = TensorEntry(path, dtype, shape)
        end = max(end, stop)
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: its header needs {8 + n + end} bytes, the file has {size}; {fix}.")
    return entries


def index_checkpoint(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint directory, from model.safetensors or a sharded index."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map': the shard index is corrupt; re-download it.")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise CheckpointError(f"{path} lacks shard(s) {missing[:3]}{'...' if len(missing) > 3 else ''} listed in "
                                  f"{index.name}: the download is incomplete. {GET_MODEL_HINT}")
        entries: dict[str, TensorEntry] = {}
        for f in files:
            entries.update(read_safetensors_header(path / f))
        return entries
    if single.exists():
        return read_safetensors_header(single)
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    if pickles:
        raise CheckpointError(
            f"{path} holds only pickle weights ({', '.join(pickles[:3])}), which this kit never opens (unpickling runs "
            "arbitrary code). If you trust the file, convert it once with transformers: "
            "`DiffusionGemmaForBlockDiffusion.from_pretrained(SRC).save_pretrained(DST)` writes safetensors.")
    raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json. {GET_MODEL_HINT}")


# ---- loading ----------------------------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> tuple[Path, ModelConfig]:
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist. {GET_MODEL_HINT}")
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a file; load_model takes the checkpoint directory that holds "
                              "config.json and the safetensors files.")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json: it is not a checkpoint directory. {GET_MODEL_HINT}")
    raw = read_json(path / "config.json", "model config")
    if raw.get("tie_word_embeddings", True) is False:
        raise CheckpointError("config.json sets tie_word_embeddings=false: DiffusionGemma's encoder and denoiser "
                              "share their weights, which this engine requires.")
    return path, ModelConfig.from_hf(raw)


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the model loads, from a weightless (meta) instance."""
    with torch.device("meta"):
        model = DiffusionGemma(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def weights_bytes(config: ModelConfig, dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(_numel(shape) for shape in expected_tensors(config).values()) * size


def runtime_bytes(config: ModelConfig, dtype: torch.dtype, batch_size: int = 1, context: int = 4096) -> int:
    """Working memory for one generation: the KV cache plus the float32 [batch, canvas, vocab] temporaries."""
    from .cache import KVCache

    logits = 6 * batch_size * config.canvas_length * config.vocab_size * 4
    return logits + KVCache.bytes_needed(config, batch_size, context, dtype)


def load_model(path: str | os.PathLike, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None) -> DiffusionGemma:
    """Load a DiffusionGemmaForBlockDiffusion checkpoint directory (official or tiny) for generation.

    device: "cuda", "cuda:1", "cpu", ... (default: the first GPU if there is one, else the CPU).
    dtype: "bfloat16", "float32", ... (default: bfloat16 on GPU, float32 on CPU).
    """
    path, config = read_config(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    entries = index_checkpoint(path)

    # Map and check names and shapes before allocating anything.
    expected = expected_tensors(config)
    plan: dict[str, TensorEntry] = {}
    skipped_vision = 0
    for hf_name, entry in entries.items():
        name = hf_to_kit(hf_name)
        if name is None:
            skipped_vision += hf_name.startswith(VISION_PREFIXES)
            continue
        if name not in expected:
            raise CheckpointError(f"tensor {hf_name!r} does not exist in a model with this config.json "
                                  f"({config.num_layers} layers): the weights and the config do not match.")
        if entry.shape != expected[name]:
            raise CheckpointError(f"tensor {hf_name!r} has shape {list(entry.shape)} but config.json implies "
                                  f"{list(expected[name])}: the weights and the config do not match.")
        plan[name] = entry
    missing = [kit_to_hf(n) for n in expected if n not in plan]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {len(missing)} tensor(s), e.g. {missing[:3]}: the download is "
                              f"incomplete or the weights belong to another config. {GET_MODEL_HINT}")
    if skipped_vision:
        log.info("text-only engine: skipped the %d vision-tower tensors", skipped_vision)

    need = weights_bytes(config, dtype) + runtime_bytes(config, dtype)
    free = available_memory(device)
    if free is not None and need > free:
        raise DeviceError(
            f"{path.name} needs about {need / 2**30:.1f} GiB on {device} in {str(dtype).replace('torch.', '')} "
            f"(weights + working memory) but only {free / 2**30:.1f} GiB is free. Free memory, use a larger device, "
            "pick dtype='bfloat16', or use models/dgemma-tiny.")

    with torch.device("meta"):
        model = DiffusionGemma(config)
    model = model.to(dtype).to_empty(device=device)
    model.init_buffers()
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for hf_name, entry in entries.items():
        name = hf_to_kit(hf_name)
        if name is not None:
            by_file.setdefault(entry.file, []).append((hf_name, name))
    state = model.state_dict()
    with torch.no_grad():
        for file, names in by_file.items():
            with safe_open(file, framework="pt", device="cpu") as f:
                for hf_name, name in names:
                    state[name].copy_(f.get_tensor(hf_name))
    model.eval().requires_grad_(False)
    model.path = path
    gen_file = path / "generation_config.json"
    gen = read_json(gen_file, "generation config") if gen_file.exists() else {}
    model.generation_settings = GenerationSettings.from_hf(gen, config)
    from .tokenizer import load_tokenizer

    model.tokenizer = load_tokenizer(path)
    return model


# ---- saving -----------------------------------------------------------------------------------------
def save_checkpoint(model: DiffusionGemma, path: str | os.PathLike, *, tokenizer=None,
                    generation_settings: GenerationSettings | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write `model` as a DiffusionGemmaForBlockDiffusion checkpoint directory, atomically.

    Everything is written to a temporary sibling directory that replaces `path` only once complete,
    so an interrupted save never leaves a half-written checkpoint.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        tensors = {kit_to_hf(n): t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}
        tensors.update(_vision_tensors(model.config))
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        config = model.config.to_hf()
        config["dtype"] = str(model.dtype).replace("torch.", "")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        settings = generation_settings or model.generation_settings or GenerationSettings()
        (tmp / "generation_config.json").write_text(json.dumps(generation_json(settings), indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return path


def generation_json(s: GenerationSettings) -> dict:
    return {
        "max_new_tokens": s.max_new_tokens, "max_denoising_steps": s.max_denoising_steps,
        "sampler_config": {"entropy_bound": float(s.entropy_bound), "_cls_name": "EntropyBoundSamplerConfig"},
        "t_min": s.t_min, "t_max": s.t_max, "stability_threshold": s.stability_threshold,
        "confidence_threshold": s.confidence_threshold, "eos_token_id": list(s.eos_token_ids),
        "pad_token_id": s.pad_token_id, "return_dict_in_generate": True,
    }


def _vision_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    """A minimal vision tower, so that transformers loads the checkpoint without missing weights."""
    try:
        from transformers import AutoConfig, AutoModel
        from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaMultimodalEmbedder
    except ImportError:
        return {}
    from .config import TINY_VISION_CONFIG

    vision_config = AutoConfig.for_model(**TINY_VISION_CONFIG)
    g = torch.Generator().manual_seed(0)
    tower = AutoModel.from_config(vision_config)
    embed = DiffusionGemmaMultimodalEmbedder(vision_config, _TextDims(config.hidden_size))
    out = {}
    for prefix, module in (("model.encoder.vision_tower.", tower), ("model.encoder.embed_vision.", embed)):
        for name, t in module.state_dict().items():
            t = t.detach().clone()
            if t.is_floating_point() and t.ndim >= 2:
                t = torch.randn(t.shape, generator=g) * 0.02
            out[prefix + name] = t.contiguous()
    return out


@dataclass
class _TextDims:
    hidden_size: int


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
