"""Safetensors shards: each file's names, dtypes and shapes read through safe_open without reading
its data (the library checks the layout there, so a later read never fails on it), and tensors
copied from the memory-mapped files into a model's own tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError
from .validate import check

# The dtypes a checkpoint may name; any other (complex, 4-bit, ...) is refused by name at the header.
KNOWN_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "F8_E4M3",
                "F8_E5M2"}
# What model weights may be stored as. The kit's own checkpoints are never fp8: quantize_experts()
# quantises at load time (fast/quant.py), so an fp8 or integer tensor is someone else's layout.
FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


@dataclass
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Each tensor's dtype and shape, from the file's header alone: safe_open checks the layout the
    way every later read will (offsets, coverage of the file, sizes) and reads no tensor data."""
    fix = f"re-download or re-save {path.name}"
    check(path.is_file(), CheckpointError, f"{path} is not a file: a safetensors shard must be one; {fix}.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            entries = {name: TensorEntry(path, f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape()))
                       for name in f.keys()}  # noqa: SIM118 - a safe_open handle is no mapping
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e}): it is corrupt or truncated; "
                              f"{fix}.") from e
    except OSError as e:  # unreadable (permissions, I/O error): name the file, not a traceback
        raise CheckpointError(f"{path} could not be read ({e.strerror or e}); {fix}.") from e
    for name, entry in entries.items():
        check(entry.dtype in KNOWN_DTYPES, CheckpointError, f"{path}: tensor {name!r} has dtype {entry.dtype}, which "
              f"this kit cannot read (model weights are {', '.join(FLOAT_DTYPES)}); re-save the checkpoint in "
              "bfloat16 or float32.")
    return entries


def load_tensors(entries: Mapping[str, TensorEntry], targets: dict[str, torch.Tensor],
                 stored_name: Callable[[str], str] = lambda name: name) -> None:
    """Copy each tensor of `entries` (name -> where it is stored) into targets[name], file by file
    (as `stored_name(name)` in the file), straight from the memory-mapped shard: there is never a
    full CPU copy of the weights."""
    by_file: dict[Path, list[str]] = {}
    for name, entry in entries.items():
        by_file.setdefault(entry.file, []).append(name)
    with torch.no_grad():
        for file, names in by_file.items():
            try:
                with safe_open(file, framework="pt", device="cpu") as f:
                    for name in names:
                        targets[name].copy_(f.get_tensor(stored_name(name)))
            except (SafetensorError, OSError) as e:  # the file changed since its header was checked
                raise CheckpointError(f"{file} could not be read ({e}); re-download or re-save it.") from e

