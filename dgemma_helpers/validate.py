"""The kit's checking vocabulary, one for the whole package: value tests (`is_int`, `is_number`),
`check` (one rule, one line), how a bad value is shown in a message (`shown`: as JSON writes it, for
files; `described`: type and repr, for arguments given in code; `short_repr`: bounded, for values that
may be huge), and `Fields`, typed reads of one JSON object of a checkpoint's files, each problem a
CheckpointError naming the file, the field, the value and the fix."""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

from .errors import CheckpointError

_REQUIRED = object()


def check(ok: object, error: type[Exception], message: str) -> None:
    """Raise error(message) unless ok."""
    if not ok:
        raise error(message)


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
    kinds = ((bool, "a boolean"), (Integral, "an integer"), (Real, "a number"), (str, "a string"),
             ((list, tuple), "a list"), (Mapping, "an object"))
    if value is None:
        return "null"
    return next((name for kind, name in kinds if isinstance(value, kind)), type(value).__name__)


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

    def _read(self, key: str, default: Any, nullable: bool, need: str, ok: Callable[[Any], bool],
              convert: Callable[[Any], Any] = lambda v: v) -> Any:
        """The value converted, or `default` as given where the key is absent (or null and nullable)."""
        value = self.data.get(key)
        if value is None and default is _REQUIRED:
            raise CheckpointError(f"{self.file}: {self.where}{key} is missing or null; it must be {need}. "
                                  f"{self.fix}".rstrip())
        if key not in self.data or (value is None and nullable):
            return default
        if value is None or not ok(value):
            raise self.error(key, value, need)
        return convert(value)

    def integer(self, key: str, default: Any = _REQUIRED, *, low: int = 1, high: int | None = None,
                nullable: bool = False) -> int:
        """An integer in low..high (inclusive)."""
        need = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"
        if not is_int(self.data.get(key)) and self.data.get(key) is not None:
            need += " (a JSON number without a decimal point)"
        return self._read(key, default, nullable, need,
                          lambda v: is_int(v) and v >= low and (high is None or v <= high), int)

    def number(self, key: str, default: Any = _REQUIRED, *, above: float | None = None,
               at_least: float | None = None, at_most: float | None = None, nullable: bool = False) -> float:
        """A finite number; `above` is exclusive, `at_least` / `at_most` inclusive."""
        bounds = [f"{op} {x}" for op, x in ((">", above), (">=", at_least), ("<=", at_most)) if x is not None]
        need = ("a finite number " + " and ".join(bounds)).rstrip()

        def ok(v: Any) -> bool:
            return (is_number(v) and math.isfinite(v) and (above is None or v > above)
                    and (at_least is None or v >= at_least) and (at_most is None or v <= at_most))

        return self._read(key, default, nullable, need, ok, float)

    def flag(self, key: str, default: bool, nullable: bool = False) -> bool:
        return self._read(key, default, nullable, "true or false", lambda v: isinstance(v, bool))

    def string(self, key: str, default: Any = _REQUIRED, nullable: bool = False) -> str:
        return self._read(key, default, nullable, "a string", lambda v: isinstance(v, str))

    def section(self, key: str) -> Fields:
        """A nested JSON object (absent or null: an empty one, as transformers reads an unset section)."""
        value = self.data.get(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.error(key, value, "a JSON object")
        return Fields(value, self.file, f"{self.where}{key}.", self.fix)

    def token_ids(self, key: str, default: Any, vocab_size: int | None, nullable: bool = False) -> tuple[int, ...]:
        """One token id or a list of them, each in the vocabulary (0..vocab_size-1)."""
        need = "a token id or a list of token ids" + (f", each in 0..{vocab_size - 1}" if vocab_size else "")

        def ok(value: Any) -> bool:
            ids = value if isinstance(value, list) else [value]
            return all(is_int(i) and i >= 0 and (not vocab_size or i < vocab_size) for i in ids)

        return self._read(key, default, nullable, need, ok,
                          lambda v: tuple(int(i) for i in (v if isinstance(v, list) else [v])))
