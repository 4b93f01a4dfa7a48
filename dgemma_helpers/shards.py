"""Safetensors shards: each file's header read and checked without reading its data (the same
layout rules the safetensors library enforces: contiguous tensors covering the file, so it never
fails later), and tensors copied from the memory-mapped files into a model's own tensors."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError
from .validate import is_int, shown

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# What model weights may be stored as. The kit's own checkpoints are never fp8: quantize_experts()
# quantises at load time (fast/quant.py), so an fp8 or integer tensor is someone else's layout.
FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


@dataclass
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Parse and check one file's header without reading its data: the same layout rules the
    safetensors library enforces (contiguous tensors covering the file), so that it never fails later."""
    fix = f"re-download or re-save {path.name}"
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file: a safetensors shard must be one; {fix}.")
    try:
        return _parse_header(path, fix)
    except OSError as e:  # unreadable (permissions, I/O error): name the file, not a traceback
        raise CheckpointError(f"{path} could not be read ({e.strerror or e}); {fix}.") from e


def _parse_header(path: Path, fix: str) -> dict[str, TensorEntry]:
    size = path.stat().st_size
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
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CheckpointError(f"{path} has a corrupt safetensors header ({e}); {fix}.") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object); {fix}.")
    header.pop("__metadata__", None)
    entries, spans = {}, []
    for name, info in header.items():
        try:
            dtype, shape, (start, stop) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt header entry for {name!r}; {fix}.") from e
        if not (isinstance(dtype, str) and all(is_int(d) and d >= 0 for d in shape)
                and is_int(start) and is_int(stop) and 0 <= start <= stop):
            raise CheckpointError(f"{path}: corrupt header entry for {name!r} ({shown(info)}); {fix}.")
        if dtype not in DTYPE_BYTES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}, which this kit cannot read (model "
                                  f"weights are {', '.join(FLOAT_DTYPES)}); re-save the checkpoint in bfloat16 or "
                                  "float32.")
        if stop - start != numel(shape) * DTYPE_BYTES[dtype]:
            raise CheckpointError(f"{path}: header entry for {name!r} is inconsistent ({dtype}, {shape}, "
                                  f"{stop - start} bytes); {fix}.")
        entries[name] = TensorEntry(path, dtype, shape)
        spans.append((start, stop, name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            raise CheckpointError(f"{path}: tensor {name!r} starts at byte {start} of the data, expected {end} "
                                  f"(tensors overlap or leave a gap): the file is corrupt; {fix}.")
        end = stop
    if 8 + n + end > size:
        raise CheckpointError(f"{path} is truncated: its header needs {8 + n + end} bytes, the file has {size}; {fix}.")
    if 8 + n + end < size:
        raise CheckpointError(f"{path} has {size - 8 - n - end} bytes after its last tensor: it is corrupt or was not "
                              f"written by safetensors; {fix}.")
    return entries


def copy_tensors(by_file: dict[Path, list[str]], targets: dict[str, torch.Tensor],
                 stored_name: Callable[[str], str] = lambda name: name) -> None:
    """Copy each named tensor of each file into targets[name] (as `stored_name(name)` in the file),
    straight from the memory-mapped shard: there is never a full CPU copy of the weights."""
    with torch.no_grad():
        for file, names in by_file.items():
            try:
                with safe_open(file, framework="pt", device="cpu") as f:
                    for name in names:
                        targets[name].copy_(f.get_tensor(stored_name(name)))
            except (SafetensorError, OSError) as e:  # the file changed since its header was checked
                raise CheckpointError(f"{file} could not be read ({e}); re-download or re-save it.") from e


def numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
