"""Copies of checkpoints for the validation tests to break: the small random one and models/dgemma-tiny
(hard links, so a copy costs nothing), JSON and tensor editing, and fixtures that fail a test that
reads weights or headers it should not."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

TINY = Path(__file__).resolve().parents[1] / "models" / "dgemma-tiny"


# ---- copies to break --------------------------------------------------------------------------------
@pytest.fixture()
def ckpt(checkpoint, tmp_path) -> Path:
    """A private copy of a small random checkpoint (written by transformers)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint("plain"), dst)
    return dst


def _link_or_copy(src: str, dst: str) -> None:
    # The 22 MB weights are hard-linked (a hard link is the same file, not a symlink), everything
    # else copied; tests that change a file write a new one (see write_json), never into the link.
    if src.endswith(".safetensors"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


@pytest.fixture()
def tiny(tmp_path) -> Path:
    """A copy of the shipped models/dgemma-tiny."""
    dst = tmp_path / "dgemma-tiny"
    shutil.copytree(TINY, dst, copy_function=_link_or_copy)
    return dst


def write_json(path: Path, data) -> None:
    path.unlink(missing_ok=True)  # a new file: never write through a hard link into the original
    path.write_text(json.dumps(data))


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    write_json(path, data)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.unlink(missing_ok=True)
    save_file(tensors, path, metadata={"format": "pt"})


def shard(path: Path, names: tuple[str, str] = ("model-00001-of-00002.safetensors",
                                                "model-00002-of-00002.safetensors")) -> dict[str, str]:
    """Split model.safetensors into two shards and an index, as save_pretrained does; the weight map."""
    tensors = load_file(path / "model.safetensors")
    (path / "model.safetensors").unlink()
    keys = sorted(tensors)
    halves = (keys[: len(keys) // 2], keys[len(keys) // 2:])
    weight_map = {}
    for name, part in zip(names, halves):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path / name, {k: tensors[k] for k in part})
        weight_map.update({k: name for k in part})
    write_json(path / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    return weight_map


@pytest.fixture()
def no_weights_read(monkeypatch):
    """Fails the test if any tensor data is read: the checks must all run on headers first (names,
    dtypes and shapes through safe_open are allowed; a tensor or a slice of one is not)."""
    import dgemma_helpers.shards as shards

    real = shards.safe_open

    class HeaderOnly:
        def __init__(self, *args, **kwargs):
            self.handle = real(*args, **kwargs)

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_slice(self, name):
            info = self.handle.get_slice(name)
            return type("SliceInfo", (), {"get_dtype": lambda _: info.get_dtype(), "get_shape": lambda _: info.get_shape()})()

        def get_tensor(self, name):
            raise AssertionError("tensor data was read before the checkpoint was checked")

    monkeypatch.setattr(shards, "safe_open", HeaderOnly)


@pytest.fixture()
def headers_read(monkeypatch) -> list[Path]:
    """The files whose safetensors header the loader opened."""
    import dgemma_helpers.checkpoint as ck

    seen: list[Path] = []
    real = ck.read_safetensors_header

    def spy(path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(ck, "read_safetensors_header", spy)
    return seen
