"""Built-in benchmark shapes: random checkpoints built once by transformers and cached, so that speed
is measured at a named shape. A toy hides what the official width shows (the head over 262,144
tokens, 128 experts): every speed claim names its shape."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..devices import available_memory
from ..errors import InputError
from ..train.random_checkpoint import make_random_checkpoint


@dataclass(frozen=True)
class Shape:
    dtype: torch.dtype  # what the weights are saved in
    disk_bytes: int  # what the checkpoint takes on disk
    build_bytes: int  # memory the build needs
    description: str


GB = 10**9
SHAPES = {  # keyed by make_random_checkpoint's preset
    "toy": Shape(torch.float32, GB // 20, GB, "hidden 256, 6 layers, 16 experts top-4, vocab 4,096"),
    "official-2layer": Shape(torch.bfloat16, 5 * GB, 11 * GB,
                             "the official width (hidden 2,816, 128 experts top-8, vocab 262,144), "
                             "1 sliding + 1 full-attention layer"),
}
CANVAS = 256


def cache_dir() -> Path:
    if os.environ.get("DGEMMA_CACHE"):
        return Path(os.environ["DGEMMA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dgemma_helpers"


def shape_checkpoint(name: str, cache: str | os.PathLike | None = None) -> Path:
    """The checkpoint directory of a built-in shape, built on first use (a few seconds for the toy,
    about two minutes on 2 CPU cores for official-2layer) and reused after."""
    if name not in SHAPES:
        raise InputError(f"unknown shape {name!r}: choose one of {', '.join(SHAPES)}.")
    shape = SHAPES[name]
    path = Path(cache or cache_dir()) / "shapes" / name
    stamp = {"preset": name, "seed": 0, "untrained": True}
    with contextlib.suppress(OSError, ValueError):
        if json.loads((path / "dgemma_random.json").read_text()) == stamp:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(path.parent).free
    if free_disk < shape.disk_bytes * 1.1:
        raise InputError(f"building the {name} checkpoint needs about {shape.disk_bytes / GB:.1f} GB of disk, but "
                         f"{path.parent} has {free_disk / GB:.1f} GB free: free some, or set DGEMMA_CACHE to a "
                         "directory on a larger disk.")
    free_memory = available_memory(torch.device("cpu"))
    if free_memory is not None and free_memory < shape.build_bytes:
        raise InputError(f"building the {name} checkpoint needs about {shape.build_bytes / GB:.0f} GB of memory, but "
                         f"{free_memory / GB:.1f} GB is available: close other programs or build it on a larger "
                         "machine (then copy the directory into place).")
    print(f"building the {name} checkpoint ({shape.description}) in {path}; it is reused after", flush=True)
    return make_random_checkpoint(path, preset=name, canvas_length=CANVAS, dtype=shape.dtype)
