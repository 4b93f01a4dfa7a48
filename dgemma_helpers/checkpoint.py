"""Read and write DiffusionGemmaForBlockDiffusion checkpoint directories (safetensors only).

Loading checks everything before it allocates anything: the configs, that every file it reads lies
inside the checkpoint directory (symlinks followed), every shard's header, every tensor's name,
dtype and shape against the config, and the memory the device has. Then the model is built empty
on the device and each tensor copied in from the memory-mapped shard: there is never a full CPU
copy of the weights. Pickle files (.bin) are refused, never opened.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic import atomic_dir
from .config import GenerationSettings, ModelConfig, read_json
from .devices import available_memory, resolve_device, resolve_dtype
from .errors import CheckpointError, DeviceError, InputError
from .hub import CONFIG_FILES, KIT_FILES, hub_model, snapshot
from .memory import estimate_memory
from .model import DiffusionGemma
from .shards import FLOAT_DTYPES, TensorEntry, load_tensors, read_safetensors_header
from .tokenizer import load_tokenizer
from .validate import check, shown
from .vision import VISION_PREFIXES, check_vision_tensors, is_placeholder, load_vision, placeholder_tensors

log = logging.getLogger("dgemma_helpers")

GET_MODEL_HINT = (
    "Use the official checkpoint by its Hub id, google/diffusiongemma-26B-A4B-it (as load_model's path or --model; "
    "about 50 GB, downloaded once into the Hugging Face cache), or download it with "
    "`hf download google/diffusiongemma-26B-A4B-it --local-dir PATH`, or use the kit's small model in "
    "models/dgemma-tiny."
)
DECODER, ENCODER = "model.decoder.", "model.encoder.language_model."
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PICKLE_HINT = ("which this kit never opens (unpickling runs arbitrary code). If you trust the file, convert it once "
               "with transformers: `DiffusionGemmaForBlockDiffusion.from_pretrained(SRC).save_pretrained(DST)` writes "
               "safetensors.")


# ---- names --------------------------------------------------------------------------------------
def hf_to_kit(name: str) -> str | None:
    """The model's parameter name for a checkpoint tensor; None for tensors the engine skips."""
    if name.startswith(DECODER):
        return name[len(DECODER):]
    if name.startswith(ENCODER):
        rest = name[len(ENCODER):]
        if rest.endswith(".layer_scalar"):  # the one encoder tensor not tied to the denoiser's
            return rest[: -len("layer_scalar")] + "encoder_layer_scalar"
        return None  # a tied copy of a denoiser weight
    if name == "lm_head.weight" or name.startswith(VISION_PREFIXES):
        return None
    raise CheckpointError(f"unexpected tensor {name!r}: this is not a DiffusionGemmaForBlockDiffusion checkpoint.")


def kit_to_hf(name: str) -> str:
    if name.endswith(".encoder_layer_scalar"):
        return ENCODER + name[: -len("encoder_layer_scalar")] + "layer_scalar"
    return DECODER + name


# ---- files inside the checkpoint ----------------------------------------------------------------
def inside_checkpoint(path: Path, name: str, what: str) -> Path:
    """path/name, refused unless it resolves (symlinks followed) inside the checkpoint directory:
    a name like '../elsewhere/x' or a link out of the directory would read someone else's file."""
    root = path.resolve()
    target = (root / name).resolve()
    roots = [root]
    # A Hugging Face cache snapshot (models--ORG--NAME/snapshots/REV) holds symlinks into that one
    # repo's blobs/, which is where its files really are.
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        roots.append(root.parent.parent / "blobs")
    check(any(target.is_relative_to(r) for r in roots), CheckpointError,
          f"{what} {name!r} of {path} resolves to {target}, outside the checkpoint directory: this kit never reads a "
          "file outside the checkpoint. Copy the file into the directory (in place of the link), or fix the name.")
    return path / name


def index_checkpoint(path: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint directory, from model.safetensors or a sharded index (whose shard
    names are data: each must be a .safetensors file inside the directory)."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if not index.exists():
        if single.exists():
            return read_safetensors_header(inside_checkpoint(path, single.name, "the weights file"))
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        check(not pickles, CheckpointError, f"{path} holds only pickle weights ({', '.join(pickles[:3])}), "
              + PICKLE_HINT)
        raise CheckpointError(f"{path} has no model.safetensors or model.safetensors.index.json. {GET_MODEL_HINT}")
    inside_checkpoint(path, index.name, "the shard index")
    weight_map = read_json(index, "shard index").get("weight_map")
    check(isinstance(weight_map, dict) and all(isinstance(v, str) and v for v in weight_map.values()),
          CheckpointError, f"{index} has no 'weight_map' of tensor name -> shard file name: the shard index is "
          "corrupt; re-download it.")
    files = sorted(set(weight_map.values()))
    for f in files:
        inside_checkpoint(path, f, f"shard {index.name} names")
    pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
    check(not pickles, CheckpointError, f"{index} names pickle shard(s) {pickles[:3]}: a PyTorch pickle checkpoint, "
          + PICKLE_HINT)
    foreign = [f for f in files if not f.endswith(".safetensors")]
    check(not foreign, CheckpointError, f"{index} names shard(s) {foreign[:3]} that are not .safetensors files: this "
          "kit reads safetensors weights only. Re-download the checkpoint, or fix the index.")
    missing = [f for f in files if not (path / f).exists()]
    check(not missing, CheckpointError, f"{path} lacks shard(s) {missing[:3]}{'...' if len(missing) > 3 else ''} "
          f"listed in {index.name}: the download is incomplete. {GET_MODEL_HINT}")
    entries: dict[str, TensorEntry] = {}
    for f in files:
        for name, entry in read_safetensors_header(path / f).items():
            if name in entries:
                raise CheckpointError(f"tensor {name!r} is in both {entries[name].file.name} and {f}: the shards "
                                      "overlap; re-download the checkpoint.")
            entries[name] = entry
    stale = [n for n, f in weight_map.items() if n not in entries or entries[n].file != path / f]
    check(not stale, CheckpointError, f"{index} places {len(stale)} tensor(s) in shards that do not hold them, e.g. "
          f"{stale[:3]}: the index and the shards are from different downloads; re-download the checkpoint.")
    return entries


# ---- loading ----------------------------------------------------------------------------------------
def read_config(path: str | os.PathLike, *, revision: str | None = None,
                local_files_only: bool = False) -> tuple[Path, ModelConfig]:
    """The checkpoint directory and its checked config.json (no weights are read). A Hugging Face
    Hub id (hub.py) gives its snapshot in the local cache, where only the configs are fetched."""
    check(isinstance(path, (str, os.PathLike)) and str(path).strip(), InputError, "the model path must be a checkpoint "
          f"directory (a str or Path), got {shown(path)} ({type(path).__name__}). {GET_MODEL_HINT}")
    model = hub_model(path, revision)
    if model is not None:
        path = snapshot(model, CONFIG_FILES, local_files_only=local_files_only)
    path = Path(path).expanduser()
    check(path.exists(), CheckpointError, f"checkpoint directory {str(path)!r} does not exist. {GET_MODEL_HINT}")
    check(path.is_dir(), CheckpointError, f"{str(path)!r} is a file; load_model takes the checkpoint directory that "
          "holds config.json and the safetensors files.")
    check((path / "config.json").exists(), CheckpointError,
          f"{path} has no config.json: it is not a checkpoint directory. {GET_MODEL_HINT}")
    # Loaders (the tokenizer's too) read the directory's files by name: no link may lead out of it.
    for entry in sorted(path.iterdir()):
        if entry.is_symlink() and entry.suffix != ".md":  # model cards are never read
            inside_checkpoint(path, entry.name, "the link")
    return path, ModelConfig.from_hf(read_json(path / "config.json", "model config"), source=str(path / "config.json"))


def read_generation_settings(path: Path, config: ModelConfig) -> GenerationSettings:
    """The checkpoint's sampler defaults from generation_config.json (checked), else the published ones."""
    gen_file = path / "generation_config.json"
    if not gen_file.exists():
        return GenerationSettings.from_hf({}, config)
    gen = read_json(inside_checkpoint(path, gen_file.name, "the file"), "generation config")
    return GenerationSettings.from_hf(gen, config, source=str(gen_file))


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the model loads, from a weightless (meta) instance."""
    with torch.device("meta"):
        model = DiffusionGemma(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def weights_bytes(config: ModelConfig, dtype: torch.dtype, vision: dict[str, tuple[int, ...]] | None = None) -> int:
    """The text model's weights, plus the vision tower's (name -> shape) when it is loaded."""
    shapes = list(expected_tensors(config).values()) + list((vision or {}).values())
    return sum(math.prod(shape) for shape in shapes) * dtype.itemsize


def runtime_bytes(config: ModelConfig, dtype: torch.dtype, device: torch.device | str = "cpu", batch_size: int = 1,
                  context: int = 4096) -> int:
    """Working memory for one generation after a prompt of `context` tokens (memory.estimate_memory);
    load_model checks room for a modest prompt, and generate() checks each call's own."""
    return estimate_memory(config, context, batch_size=batch_size, dtype=dtype, device=device).working


def plan_tensors(path: Path, entries: dict[str, TensorEntry],
                 config: ModelConfig) -> tuple[dict[str, TensorEntry], dict[str, TensorEntry]]:
    """Model parameter name -> checkpoint tensor, with every name, dtype and shape checked against
    the config (nothing is read but the headers); also the vision tensors (checkpoint name -> tensor),
    which load_model loads into transformers' vision modules or skips, with dtypes checked here."""
    expected = expected_tensors(config)
    plan: dict[str, TensorEntry] = {}
    unknown: list[str] = []
    vision: dict[str, TensorEntry] = {}
    for hf_name, entry in entries.items():
        if hf_name.startswith(VISION_PREFIXES):
            vision[hf_name] = entry
        elif hf_name.startswith((DECODER, ENCODER)):
            name = hf_to_kit(hf_name)
            if name in expected:
                plan[name] = entry
            # None: an encoder tensor tied to the denoiser's, known if the denoiser has it
            elif name is not None or hf_name[len(ENCODER):] not in expected:
                unknown.append(hf_name)
        elif hf_name != "lm_head.weight":  # lm_head is tied to the embedding, which the engine reads once
            unknown.append(hf_name)
    check(not unknown, CheckpointError,
          f"checkpoint {path} has {len(unknown)} tensor(s) that a DiffusionGemma with this config.json "
          f"({config.num_layers} layers, {config.num_experts} experts) does not have: {_listed(unknown)}. The weights "
          "and the config do not match (or this is not a DiffusionGemmaForBlockDiffusion checkpoint): use the "
          "config.json that came with these weights, or re-download the checkpoint.")
    bad_dtype = [(n, e) for n, e in list(plan.items()) + list(vision.items()) if e.dtype not in FLOAT_DTYPES]
    if bad_dtype:
        name, entry = bad_dtype[0]
        what = "fp8" if entry.dtype.startswith("F8") else "boolean" if entry.dtype == "BOOL" else "integer"
        fix = ("this kit's checkpoints hold floating-point weights and quantise at load time "
               "(dg.quantize_experts(model) after load_model): de-quantise it with the tool that wrote it, or use "
               "the original bfloat16 checkpoint" if what == "fp8" else
               "model weights are floating point, so the file was written wrongly: re-download the checkpoint, or "
               "re-save it in bfloat16 or float32 (save_pretrained, or dg.save_checkpoint)")
        raise CheckpointError(
            f"tensor {name if name in vision else kit_to_hf(name)!r} in {entry.file.name} is stored as {entry.dtype} "
            f"({what})" + (f", and {len(bad_dtype) - 1} more tensor(s) are not floating point" if bad_dtype[1:] else "")
            + f": {fix}. Weights must be {', '.join(FLOAT_DTYPES.values())}.")
    for name, entry in plan.items():
        check(entry.shape == expected[name], CheckpointError, f"tensor {kit_to_hf(name)!r} has shape "
              f"{list(entry.shape)} but config.json implies {list(expected[name])}: the weights and the config do "
              "not match.")
    missing = [kit_to_hf(n) for n in expected if n not in plan]
    check(not missing, CheckpointError, f"checkpoint {path} lacks {len(missing)} tensor(s), e.g. {missing[:3]}: the "
          f"download is incomplete or the weights belong to another config. {GET_MODEL_HINT}")
    return plan, vision


def load_model(path: str | os.PathLike, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, *, vision: bool | None = None, revision: str | None = None,
               local_files_only: bool = False) -> DiffusionGemma:
    """Load a DiffusionGemmaForBlockDiffusion checkpoint (official or tiny) for generation.

    path: a directory, or a Hub id ("google/diffusiongemma-26B-A4B-it", "hf://org/name@REVISION"; see
    hub.py): from the local Hugging Face cache, else downloaded unless HF_HUB_OFFLINE=1 or local_files_only.
    device: "cuda", "cuda:1", "cpu", ... (default: the first GPU if there is one, else the CPU).
    dtype: "bfloat16", "float32", ... (default: bfloat16 on GPU, float32 on CPU).
    vision: None loads the vision tower (into transformers' modules, dgemma_helpers/vision.py) when the
    checkpoint has a trained one; False skips it; True requires one.
    """
    check(vision in (None, True, False), InputError, "vision must be None (load a trained vision tower if there is "
          f"one), True (require one) or False (skip it), got {shown(vision)}.")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    model_id = hub_model(path, revision)
    if model_id is not None:  # its config first (a few KB): a device without room is refused before the weights
        _, head = read_config(path, revision=revision, local_files_only=local_files_only)
        check_room(str(model_id), head, dtype, device)
        path = snapshot(model_id, KIT_FILES, local_files_only=local_files_only)
    path, config = read_config(path)
    settings = read_generation_settings(path, config)
    # Map and check names, dtypes and shapes before allocating anything.
    plan, vision_entries = plan_tensors(path, index_checkpoint(path), config)
    raw_config = read_json(path / "config.json", "model config")
    vc = raw_config.get("vision_config")  # the tower is absent, the kit's untrained placeholder, or real
    status = "absent" if not isinstance(vc, dict) or not vision_entries else "placeholder" if is_placeholder(vc) \
        else "real"
    vision_shapes, note = None, None
    what = "an untrained placeholder vision tower (the kit's TINY_VISION_CONFIG)" if status == "placeholder" \
        else "no vision tower"
    check(vision is not True or status == "real", CheckpointError, f"load_model(vision=True): {path} has {what}. Use "
          "a checkpoint with a trained vision tower, such as the official google/diffusiongemma-26B-A4B-it, or load "
          "without vision=True for text only.")
    if status == "real" and vision is not False:
        vision_shapes = check_vision_tensors(path, vision_entries, vc, config.hidden_size)
    elif status == "placeholder" and vision is None:
        note = "its vision tower is an untrained placeholder"
        # Every kit-trained checkpoint carries one (transformers needs it): on each load that is no news, so
        # debug-level; `dgemma info`, model.vision_note and an image input say it where it matters.
        log.debug("skipped the %d vision-tower tensors: an untrained placeholder (vision_config = the kit's "
                 "TINY_VISION_CONFIG), not a vision model", len(vision_entries))
    elif vision_entries:
        note = "config.json has no vision_config"
        log.info("text-only engine: skipped the %d vision-tower tensors", len(vision_entries))
    if vision is False:
        note = "the model was loaded with vision=False"

    check_room(path.name, config, dtype, device, vision_shapes)

    with torch.device("meta"):
        model = DiffusionGemma(config)
    model = model.to(dtype).to_empty(device=device)
    model.init_buffers()
    load_tensors(plan, model.state_dict(), kit_to_hf)
    model.eval().requires_grad_(False)
    model.path = path
    model.generation_settings = settings
    model.tokenizer = load_tokenizer(path)
    if vision_shapes is not None:
        model.vision = load_vision(path, raw_config, vision_entries, config, device, dtype)
    model.vision_note = note
    return model


def check_room(name: str, config: ModelConfig, dtype: torch.dtype, device: torch.device,
               vision: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse, before anything is allocated, a model whose weights and working memory the device lacks."""
    need = weights_bytes(config, dtype, vision) + runtime_bytes(config, dtype, device)
    free = available_memory(device)
    check(free is None or need <= free, DeviceError,
          f"{name} needs about {need / 2**30:.1f} GiB on {device} in {str(dtype).replace('torch.', '')} (weights + "
          f"working memory) but only {(free or 0) / 2**30:.1f} GiB is free. Free memory, use a larger device, pick "
          "dtype='bfloat16', or use models/dgemma-tiny.")


# ---- saving -----------------------------------------------------------------------------------------
def save_checkpoint(model: DiffusionGemma, path: str | os.PathLike, *, tokenizer=None,
                    generation_settings: GenerationSettings | None = None,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write `model` as a DiffusionGemmaForBlockDiffusion checkpoint directory, atomically (atomic_dir):
    an interrupted save never leaves a half-written checkpoint."""
    # The format holds floating-point weights only: a quantised model (fp8 experts from
    # quantize_experts) would be written in a layout that no loader reads back.
    extra = sorted(set(model.state_dict()) - set(expected_tensors(model.config)))
    check(not extra, InputError, "save_checkpoint writes floating-point weights only, and this model has tensors the "
          f"checkpoint format lacks ({_listed(extra, 3)}; quantize_experts makes these): save the model before "
          "quantising it, or load the checkpoint again and quantise after load_model.")
    path = Path(path)
    with atomic_dir(path) as tmp:
        tensors = {kit_to_hf(n): t.detach().to("cpu").contiguous() for n, t in model.state_dict().items()}
        # A loaded vision tower is written back whole; a text model gets the placeholder transformers needs.
        vision = getattr(model, "vision", None)
        tensors.update(vision.checkpoint_tensors() if vision is not None
                       else placeholder_tensors(model.config.hidden_size))
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        config = model.config.to_hf()
        config["dtype"] = str(model.dtype).replace("torch.", "")
        settings = generation_settings or model.generation_settings or GenerationSettings()
        files = {"config.json": config, "generation_config.json": generation_json(settings)}
        if vision is not None:
            config["vision_config"] = vision.tower.config.to_dict()
            files["processor_config.json"] = {"image_processor": vision.processor}
        for name, data in files.items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
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


def _listed(names: list[str], limit: int = 8) -> str:
    return ", ".join(repr(n) for n in names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
