"""The denoising-trace file (format version 1): `read_document(path)` reads a gzip or plain JSON file
within a memory bound (a gzip bomb stops at inflate_limit); `parse_document(doc, source)` types and checks
every field, so a file that passes is safe for all a trace does later. Declared array shapes are checked
against their data with Python ints (nothing wraps) before any base64 is decoded.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import os
import re
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, TraceError
from ..validate import check, clip, is_int, is_number, short_repr

FORMAT = "dgemma-denoising-trace"
VERSION = 1
ARRAY_DTYPES = {"canvas_ids": "int32", "argmax_ids": "int32", "accepted": "bool", "entropy": "float32",
                "pinned": "bool", "top_ids": "int32", "top_probs": "float32"}
REQUIRED_ARRAYS = ("canvas_ids", "argmax_ids", "accepted", "entropy", "pinned")  # [R, L]; top-k ones may be null
SCALAR_FIELDS = ("canvas_index", "step", "remaining", "temperature")

# Real traces inflate 2-4x (base64 arrays); 64x leaves room for very regular ones (all pinned, all
# accepted), the floor lets any small file through, and the cap bounds the rest.
INFLATE_RATIO = 64
INFLATE_FLOOR = 32 << 20
MAX_TRACE_BYTES = 1 << 30
_CHUNK = 1 << 20
INT32_MAX = 2**31 - 1  # ids, counts and sizes are stored as int32 (stack() makes int32 arrays of them)
FIX = "record and save the trace again with this version of dgemma_helpers"
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


class _Invalid(Exception):
    """One field's problem, as a phrase; parse_document turns it into a TraceError naming the file."""


class _Missing(Exception):
    """A required field is absent (its name)."""


# ---- typed values: "<field> is <value>, but it must be <want>" ---------------------------------------
def _need(ok: bool, field: str, value: Any, want: str) -> None:
    if not ok:
        raise _Invalid(f"{field} is {short_repr(value)}, but it must be {want}")


def _int(value: Any, field: str, *, low: int = 0, high: int | None = INT32_MAX, want: str | None = None) -> int:
    # is_int refuses bool: true/false where a count belongs is a damaged file, not 1/0.
    _need(is_int(value) and value >= low and (high is None or value <= high), field, value,
          want or f"an integer >= {low}" + (f" and <= {high}" if high is not None else ""))
    return int(value)


def _token(value: Any, field: str) -> int:
    return _int(value, field, want=f"a token id (an integer in 0..{INT32_MAX})")


def _number(value: Any, field: str) -> float:
    _need(is_number(value) and math.isfinite(value) and value >= 0, field, value, "a finite number >= 0")
    return float(value)


def _text(value: Any, field: str) -> str | None:
    if value is not None:
        _need(isinstance(value, str), field, value, "a string or null")
        try:
            value.encode("utf-8")  # a lone surrogate (\ud800) parses but could never be saved or shown
        except UnicodeEncodeError:
            _need(False, field, value, "valid Unicode text (it holds a lone surrogate)")
    return value


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    _need(isinstance(value, Mapping), field, value, "a JSON object")
    return value


def _list(value: Any, field: str, item: Callable[[Any, str], Any]) -> list:
    _need(isinstance(value, (list, tuple)), field, value, "a list")
    return [item(v, f"{field}[{i}]") for i, v in enumerate(value)]


def _count(low: int) -> Callable[[Any, str], int]:
    return lambda value, field: _int(value, field, low=low, high=None)


# The settings a trace keeps from a run (enough to explain it and derive its committed canvases), and their checks.
SETTINGS: dict[str, Callable[[Any, str], Any]] = {
    "max_new_tokens": _count(1), "max_denoising_steps": _count(1), "entropy_bound": _number, "t_min": _number,
    "t_max": _number, "stability_threshold": _count(0), "confidence_threshold": _number,
    "eos_token_ids": lambda value, field: None if value is None else _list(value, field, _token),
    "pad_token_id": _token,
}
SETTING_KEYS = tuple(SETTINGS)
Parsed = tuple[dict[str, Any], dict[int, str | None], dict[str, Any]]  # meta, vocab, rounds (see parse_document)


# ---- reading the bytes -------------------------------------------------------------------------------
def inflate_limit(compressed_size: int, max_bytes: int | None = None) -> int:
    """The most bytes a file of `compressed_size` may inflate to (`max_bytes` overrides)."""
    return min(MAX_TRACE_BYTES, max(INFLATE_FLOOR, INFLATE_RATIO * compressed_size)) if max_bytes is None else max_bytes


def read_document(path: str | os.PathLike, max_bytes: int | None = None) -> Any:
    """The JSON value in a trace file (gzip, or plain JSON), read within inflate_limit()."""
    check(isinstance(path, (str, os.PathLike)), TraceError, f"a trace path must be a str or a pathlib.Path (got "
          f"{short_repr(path)}): pass the file's path, e.g. DenoisingTrace.load(\"trace.json.gz\").")
    check(max_bytes is None or (is_int(max_bytes) and max_bytes >= 1), TraceError, "max_bytes must be a positive "
          f"integer number of bytes (got {short_repr(max_bytes)}), or None for the default limit.")
    path = Path(path)
    check(path.is_file(), TraceError, f"no trace file at {str(path)!r}: save one with trace.save(path) first, or "
          "check the path.")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TraceError(f"cannot read {path} ({e.strerror or e}): check the file's permissions.") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            raw = _inflate(f, path, size, inflate_limit(size, max_bytes)) if gzipped else _read_plain(
                f, path, size, max_bytes or MAX_TRACE_BYTES)
        except OSError as e:  # a read error on an opened file (I/O error, a file system gone away)
            raise TraceError(f"cannot read {path} ({e.strerror or e}): check the file and the disk.") from None
    try:
        text = raw.decode("utf-8")
        del raw  # the bytes and their text need not both stay alive while the JSON is parsed
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        # ValueError covers UnicodeDecodeError, JSONDecodeError and Python's limit on the digits of an
        # integer; RecursionError, nesting deeper than the parser allows. None is in a file save() wrote.
        raise TraceError(f"{path} is not valid JSON ({type(e).__name__}: {clip(str(e))}): the file is corrupt or "
                         f"truncated; {FIX}.") from None


def _inflate(f: Any, path: Path, size: int, limit: int) -> bytearray:
    """Inflate chunk by chunk, asking for no more than limit + 1 bytes in all: a bomb stops at the limit."""
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=f, mode="rb") as gz:
            while chunk := gz.read(min(_CHUNK, limit + 1 - len(out))):
                out += chunk
                if len(out) > limit:
                    raise TraceError(_too_big(path, f"inflates to more than {limit:,} bytes from {size:,} "
                                                    "compressed", limit))
    except (EOFError, OSError, zlib.error) as e:
        raise TraceError(f"{path} is a truncated or corrupt gzip file ({e}): {FIX}.") from None
    return out


def _read_plain(f: Any, path: Path, size: int, limit: int) -> bytes:
    check(size <= limit, TraceError, _too_big(path, f"is {size:,} bytes", limit))
    raw = f.read(limit + 1)  # the file may have grown since the size was taken
    check(len(raw) <= limit, TraceError, _too_big(path, f"is more than {limit:,} bytes", limit))
    return raw


def _too_big(path: Path, what: str, limit: int) -> str:
    return (f"{path} {what}, over the {limit:,}-byte limit for a trace (real traces inflate 2-4x; at most "
            f"{INFLATE_RATIO}x, and {MAX_TRACE_BYTES:,} bytes, are read): it is not a file DenoisingTrace.save "
            "wrote, or it is damaged. If it is a genuine trace, pass a larger limit: "
            f"DenoisingTrace.load(path, max_bytes={2 * limit}).")


# ---- checking the fields -----------------------------------------------------------------------------
def parse_document(doc: Any, source: str = "the trace") -> Parsed:
    """A trace document (the JSON value of a file), every field checked: (meta, as DenoisingTrace keeps it;
    vocab; rounds: SCALAR_FIELDS as lists, ARRAY_DTYPES decoded to [R, L] or [R, L, k] arrays or None)."""
    check(isinstance(doc, Mapping) and doc.get("format") == FORMAT, TraceError, f"{source} is not a dgemma "
          f"denoising trace (no \"format\": \"{FORMAT}\"): load a file written by DenoisingTrace.save.")
    version = doc.get("version")
    check(is_int(version) and version == VERSION, TraceError, f"{source} is trace format version {version!r}, but "
          f"this dgemma_helpers reads version {VERSION}: {FIX}, or use the dgemma_helpers version that wrote it.")
    for key in ("meta", "vocab", "rounds"):
        check(key in doc, TraceError, f"{source} is missing or has malformed fields ({key!r} is missing): {FIX}.")
    try:
        fields = _parse(doc)
        problem = _consistency(*fields)
    except _Invalid as e:
        raise TraceError(f"{source} has a malformed field: {e}. The file was edited or damaged: {FIX}.") from None
    except _Missing as e:
        raise TraceError(f"{source} is missing or has malformed fields ({e} is missing): {FIX}.") from None
    check(not problem, TraceError, f"{source} is inconsistent: {problem}. The file was edited or damaged: {FIX}.")
    return fields


def checked_settings(settings: Any) -> dict[str, Any]:
    """The SETTINGS of a dict or a GenerationSettings (None: none), checked as a file's are, so that what a
    trace saves it loads back."""
    if not isinstance(settings, dict):
        settings = {key: getattr(settings, key) for key in SETTING_KEYS if hasattr(settings, key)}
    try:
        return _settings({key: settings[key] for key in SETTING_KEYS if key in settings}, "settings")
    except _Invalid as e:
        raise InputError(f"trace settings: {e}. Pass the run's GenerationSettings (result.settings).") from None


def _required(mapping: Mapping[str, Any], where: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in mapping:
            raise _Missing(f"{where}{key}")


def _parse(doc: Mapping[str, Any]) -> Parsed:
    meta = _mapping(doc["meta"], "meta")
    _required(meta, "meta.", ("canvas_length",))
    rounds = _mapping(doc["rounds"], "rounds")
    _required(rounds, "rounds.", SCALAR_FIELDS)
    columns = {name: _list(rounds[name], f"rounds.{name}", read) for name, read in (
        ("canvas_index", _int), ("step", lambda v, f: _int(v, f, low=1)), ("remaining", _int),
        ("temperature", _number))}
    no_rounds = not columns["canvas_index"]
    length = meta["canvas_length"]
    if length is not None or not no_rounds:
        length = _int(length, "meta.canvas_length", low=1, want=f"an integer in 1..{INT32_MAX} (the canvas length)"
                      + (" or null (no rounds)" if no_rounds else ""))
    vocab_size = meta.get("vocab_size")
    if vocab_size is not None:
        vocab_size = _int(vocab_size, "meta.vocab_size", low=1, high=INT32_MAX + 1,
                          want="an integer >= 1 (the model's vocabulary size) or null")
    prompt_ids = meta.get("prompt_ids")
    prompt_ids = None if prompt_ids is None else _list(prompt_ids, "meta.prompt_ids", _token)
    settings = meta.get("settings")
    settings = {} if settings is None else _settings(_mapping(settings, "meta.settings"), "meta.settings")
    vocab = {}
    for key, text in _mapping(doc["vocab"], "vocab").items():
        # int() alone would also take " 5", "+5", "٥" and refuse 5000 digits with a raw ValueError
        if not isinstance(key, str) or len(key) > 10 or not _DECIMAL.fullmatch(key) or int(key) > INT32_MAX:
            raise _Invalid(f"vocab has the key {short_repr(key)}, but its keys must be token ids in 0..{INT32_MAX} "
                           "written in decimal")
        vocab[int(key)] = _text(text, f"vocab[{key!r}]")
    columns.update({name: None if rounds.get(name) is None else _array(rounds[name], name) for name in ARRAY_DTYPES})
    _required(rounds, "rounds.", REQUIRED_ARRAYS)
    complete = meta.get("complete", False)
    _need(isinstance(complete, bool), "meta.complete", complete, "true or false")
    checked = dict(canvas_length=length, vocab_size=vocab_size,
                   row=_int(meta.get("row", 0), "meta.row", want="a batch row index >= 0"),
                   prompt=_text(meta.get("prompt"), "meta.prompt"), prompt_ids=prompt_ids, settings=settings,
                   title=_text(meta.get("title"), "meta.title"), complete=complete)
    return checked, vocab, columns


def _settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = [k for k in settings if k not in SETTINGS]
    if unknown:
        raise _Invalid(f"{where} has unknown key(s) {[clip(repr(k)) for k in unknown[:5]]}; a trace keeps "
                       f"{list(SETTING_KEYS)}")
    return {key: SETTINGS[key](value, f"{where}.{key}") for key, value in settings.items()}


def _array(spec: Any, name: str) -> np.ndarray:
    """Decode one ARRAY record; its declared size is checked against its data before any decoding."""
    dtype, field = ARRAY_DTYPES[name], f"rounds.{name}"
    if not isinstance(spec, Mapping) or spec.get("dtype") != dtype or not isinstance(spec.get("shape"), list):
        raise _Invalid(f"{field} is not a {dtype} array record ({{\"dtype\": \"{dtype}\", \"shape\": [...], "
                       "\"data\": base64}})")
    if len(spec["shape"]) > 3:
        raise _Invalid(f"{field}.shape has {len(spec['shape'])} dimensions, but a trace array has 2 or 3")
    # Each size within int32 too: a zero elsewhere would let [0, 10**30] match no data, and numpy refuses it.
    shape = tuple(_list(spec["shape"], f"{field}.shape",
                        lambda s, f: _int(s, f, want=f"an integer in 0..{INT32_MAX} (an array size)")))
    data = spec.get("data")
    if not isinstance(data, str) or len(data) % 4:
        raise _Invalid(f"field {name!r} has corrupt base64 data (not a base64 string)")
    held = len(data) // 4 * 3 - (2 if data.endswith("==") else 1 if data.endswith("=") else 0)
    needed = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow, however large the shape
    if held != needed:
        raise _Invalid(f"field {name!r} holds {held} bytes but its shape {list(shape)} needs {needed} bytes "
                       "(truncated or mismatched)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _Invalid(f"field {name!r} has corrupt base64 data ({e})") from None
    if dtype == "bool":
        as_bytes = np.frombuffer(raw, dtype=np.uint8)
        if as_bytes.size and int(as_bytes.max()) > 1:
            raise _Invalid(f"field {name!r} holds bytes other than 0 and 1, but it is a bool array")
        return as_bytes.astype(bool).reshape(shape)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)


def _consistency(meta: dict[str, Any], vocab: dict[int, str | None], rounds: dict[str, Any]) -> str:
    """What does not fit together (shapes, id ranges, order), as a phrase; "" when all does."""
    R, L, V = len(rounds["canvas_index"]), meta["canvas_length"] or 0, meta["vocab_size"]
    for name in SCALAR_FIELDS:
        if len(rounds[name]) != R:
            return f"{name} has {len(rounds[name])} entries but canvas_index has {R}"
    for name in REQUIRED_ARRAYS:
        if rounds[name] is None or rounds[name].shape != (R, L):
            got = None if rounds[name] is None else list(rounds[name].shape)
            return f"{name} has shape {got}, expected [{R}, {L}] (rounds x canvas_length)"
    top_ids, top_probs = rounds["top_ids"], rounds["top_probs"]
    if (top_ids is None) != (top_probs is None):
        return "top_ids and top_probs must both be present or both be null"
    if top_ids is not None and (top_ids.ndim != 3 or top_ids.shape[:2] != (R, L) or top_ids.shape != top_probs.shape
                                or (R * L and top_ids.shape[2] < 1)):
        return f"top_ids {list(top_ids.shape)} / top_probs {list(top_probs.shape)} must both be [{R}, {L}, k], k >= 1"
    ids = [a for a in (rounds["canvas_ids"], rounds["argmax_ids"], top_ids) if a is not None and a.size]
    if ids:
        low, high = min(int(a.min()) for a in ids), max(int(a.max()) for a in ids)
        if low < 0 or (V is not None and high >= V):
            return f"token ids span {low}..{high}, outside the vocabulary 0..{(V or 0) - 1}"
    if V is not None:
        settings = meta["settings"]
        for field, values in (("meta.prompt_ids", meta["prompt_ids"] or []), ("vocab", list(vocab)),
                              ("meta.settings.eos_token_ids", settings.get("eos_token_ids") or []),
                              ("meta.settings.pad_token_id", [settings.get("pad_token_id", 0)])):
            outside = [t for t in values if t >= V]
            if outside:
                return f"{field} holds token id {outside[0]}, outside the vocabulary 0..{V - 1} (meta.vocab_size)"
    if not np.isfinite(rounds["entropy"]).all():
        return "entropy holds NaN or infinite values (entropies are finite)"
    if top_probs is not None and not (np.isfinite(top_probs).all() and ((top_probs >= 0) & (top_probs <= 1.001)).all()):
        return "top_probs holds values outside 0..1 (or NaN): they are probabilities"
    if any(b < a for a, b in zip(rounds["canvas_index"], rounds["canvas_index"][1:])):
        return "canvas_index goes backwards"
    return ""


def encode_array(arr: np.ndarray, dtype: str) -> dict[str, Any]:
    """One ARRAY record: dtype, shape and base64 of the little-endian bytes (exact, compact)."""
    arr = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}
