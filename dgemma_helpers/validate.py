"""The kit's checking vocabulary: the value tests (`is_int`, `is_number`), how a bad value is shown
in a message (`shown`: as JSON writes it, for files; `described`: type and repr, for arguments given
in code; `short_repr`: bounded, for values that may be huge), and typed reads of the JSON files a
checkpoint ships (`Fields`). config, inputs, trace files and the CLI check with these.

A checkpoint's config.json and generation_config.json are data from elsewhere: nothing in them is
trusted until it has the right JSON type and range. `Fields` reads one JSON object of one file and
turns every problem into a CheckpointError that names the file, the field (dotted, as it is written
in the file), the value as JSON spells it, what it must be, and the fix. The predicates (`is_int`,
`is_number`) are also what GenerationSettings.validate uses for arguments given in code, where the
error is an InputError instead.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from .errors import CheckpointError

_REQUIRED = object()


def is_int(value: Any) -> bool:
    """An integer, never a bool (JSON true is not 1 here) nor a float that happens to be whole."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float (numpy scalars included), never a bool or a string."""
    return isinstance(value, Real) and not isinstance(value, bool)


def shown(value: Any, limit: int = 80) -> str:
    """A value as JSON writes it (null, true, "six", NaN), cut short: the user recognises their file."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def described(value: Any) -> str:
    """An argument's type and value for a message: "int 5", "str 'hi'" (cut short)."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 4, 4, 2


def clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def short_repr(value: Any) -> str:
    """A repr bounded in size whatever the value (a hostile file can hold a list of millions)."""
    return clip(_REPR.repr(value))


def kind_of(value: Any) -> str:
    """The JSON type name of a value, for 'got a string' style messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, Integral):
        return "an integer"
    if isinstance(value, Real):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


@dataclass(frozen=True)
class _Default:
    """What _get returns for an unset field: told apart from a value equal to the default."""
    value: Any


class Fields:
    """Typed, range-checked reads from one JSON object (`data`) of `file`.

    `where` is the dotted path of the object inside the file ("text_config."), `fix` the advice
    every message ends with. A missing key takes `default` (without one it is an error); null is
    an error too unless `nullable`, for the fields transformers itself types as optional.
    """

    def __init__(self, data: Mapping[str, Any], file: str, where: str = "", fix: str = "") -> None:
        self.data, self.file, self.where, self.fix = data, file, where, fix

    def error(self, key: str, value: Any, need: str) -> CheckpointError:
        return CheckpointError(f"{self.file}: {self.where}{key} is {shown(value)} ({kind_of(value)}); it must be "
                               f"{need}. {self.fix}".rstrip())

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _get(self, key: str, default: Any, need: str, nullable: bool) -> Any:
        value = self.data.get(key)
        if value is None and default is _REQUIRED:
            raise CheckpointError(f"{self.file}: {self.where}{key} is missing or null; it must be {need}. "
                                  f"{self.fix}".rstrip())
        if key not in self.data or (value is None and nullable):
            return _Default(default)
        if value is None:
            raise self.error(key, value, need)
        return value

    def integer(self, key: str, default: Any = _REQUIRED, *, low: int = 1, high: int | None = None,
                nullable: bool = False) -> int:
        """An integer in low..high (inclusive); the default is returned as given."""
        span = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        value = self._get(key, default, span, nullable)
        if isinstance(value, _Default):
            return value.value
        if not is_int(value):
            raise self.error(key, value, span + " (a JSON number without a decimal point)")
        if value < low or (high is not None and value > high):
            raise self.error(key, value, span)
        return int(value)

    def number(self, key: str, default: Any = _REQUIRED, *, above: float | None = None,
               at_least: float | None = None, at_most: float | None = None, nullable: bool = False) -> float:
        """A finite number; `above` is exclusive, `at_least` / `at_most` inclusive."""
        parts = ["a finite number"]
        if above is not None:
            parts.append(f"> {above}")
        if at_least is not None:
            parts.append(f">= {at_least}")
        if at_most is not None:
            parts.append(f"<= {at_most}")
        need = " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if parts[1:] else "")
        value = self._get(key, default, need, nullable)
        if isinstance(value, _Default):
            return value.value
        ok = is_number(value) and math.isfinite(value)
        ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
        ok = ok and (at_most is None or value <= at_most)
        if not ok:
            raise self.error(key, value, need)
        return float(value)

    def flag(self, key: str, default: bool, nullable: bool = False) -> bool:
        value = self._get(key, default, "true or false", nullable)
        if isinstance(value, _Default):
            return value.value
        if not isinstance(value, bool):
            raise self.error(key, value, "true or false")
        return value

    def string(self, key: str, default: Any = _REQUIRED, nullable: bool = False) -> str:
        value = self._get(key, default, "a string", nullable)
        if isinstance(value, _Default):
            return value.value
        if not isinstance(value, str):
            raise self.error(key, value, "a string")
        return value

    def section(self, key: str) -> Fields:
        """A nested JSON object (absent or null: an empty one, as transformers reads an unset section),
        read with the same file and fix."""
        value = self.data.get(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.error(key, value, "a JSON object")
        return Fields(value, self.file, f"{self.where}{key}.", self.fix)

    def token_ids(self, key: str, default: Any, vocab_size: int | None, nullable: bool = False) -> tuple[int, ...]:
        """One token id or a list of them, each in the vocabulary (0..vocab_size-1)."""
        need = "a token id or a list of token ids" + (f", each in 0..{vocab_size - 1}" if vocab_size else "")
        value = self._get(key, default, need, nullable)
        if isinstance(value, _Default):
            return value.value
        ids = value if isinstance(value, list) else [value]
        top = vocab_size - 1 if vocab_size else None
        if not all(is_int(i) and i >= 0 and (top is None or i <= top) for i in ids):
            raise self.error(key, value, need)
        return tuple(int(i) for i in ids)
