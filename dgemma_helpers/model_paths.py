"""Where models are: `find_model()` looks a relative path such as "models/dgemma-tiny" up from the
working directory, its parents (a notebook runs in notebooks/) and the repository root, takes a Hub
id (hub.py) to its snapshot in the local Hugging Face cache, and refuses a missing model with how to
get one. The environment report looks for the official checkpoint without downloading it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import GET_MODEL_HINT
from .errors import CheckpointError
from .hub import OFFICIAL_REPO, cached_snapshot, hub_model, snapshot

DOWNLOAD_COMMAND = f"hf download {OFFICIAL_REPO} --local-dir ~/models/diffusiongemma"
TINY_MODEL = "models/dgemma-tiny"
MAKE_RANDOM_COMMAND = "python -m dgemma_helpers make-random /tmp/rand --canvas-length 32"
REPO_ROOT = Path(__file__).resolve().parents[1]  # the repository
# Where people usually keep the official checkpoint: the README's --local-dir, then the hub cache.
OFFICIAL_CANDIDATES = ("~/models/diffusiongemma",)


# ---- model paths ------------------------------------------------------------------------------------
def model_candidates(path: str | os.PathLike) -> list[Path]:
    """Where a model path may be: as given, from the working directory's parents, from the repo root."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return [p]
    cwd = Path.cwd()
    out = [cwd / p] + [parent / p for parent in list(cwd.parents)[:3]] + [REPO_ROOT / p]
    return list(dict.fromkeys(out))


def find_model(path: str | os.PathLike = TINY_MODEL, *, local_files_only: bool = False) -> Path:
    """The directory of a model path (see model_candidates), else of a Hub id's snapshot (hub.snapshot:
    from the cache, downloaded unless local_files_only or HF_HUB_OFFLINE=1); a missing one is refused
    with how to get it."""
    candidates = model_candidates(path)
    for c in candidates:
        if c.exists():
            return c
    model = hub_model(path)
    if model is None:
        raise CheckpointError(missing_model_message(path, candidates))
    return snapshot(model, local_files_only=local_files_only, not_local=missing_model_message(path, candidates))


def missing_model_message(path: str | os.PathLike, looked_in: Sequence[Path]) -> str:
    where = ", ".join(str(c) for c in looked_in)
    if Path(path).name == Path(TINY_MODEL).name:
        return (f"model {str(path)!r} not found (looked in {where}). models/dgemma-tiny is the kit's small trained "
                "model and is part of the repository: run from a clone of it, set model_path to where it is, or "
                "train it again with `make train-tiny` (about 70 minutes on 2 CPU cores). "
                f"Other choices: the official checkpoint (`{DOWNLOAD_COMMAND}`, about 50 GB, for a GPU), or an "
                f"untrained stand-in that shows the mechanics only (`{MAKE_RANDOM_COMMAND}`, then "
                "model_path='/tmp/rand').")
    return f"model {str(path)!r} not found (looked in {where}). {GET_MODEL_HINT}"


def hub_cache_snapshots(repo: str = OFFICIAL_REPO) -> list[Path]:
    """The snapshot of `repo` that load_model(repo) reads from the local Hugging Face cache, found by
    huggingface_hub (its cache rules); empty when there is none. Nothing is fetched."""
    found = cached_snapshot(repo)
    return [found] if found is not None else []
