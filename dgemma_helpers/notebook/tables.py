"""Rows of results as dicts and as a plain-text table: what the notebooks print (no pandas needed;
`pandas.DataFrame(records(rows))` works where pandas is installed)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


def records(rows: Sequence[Any]) -> list[dict]:
    """Dataclass rows (or dicts) as dicts."""
    return [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else dict(r) for r in rows]


def format_table(rows: Sequence[Any], columns: Sequence[str] | None = None, width: int = 48) -> str:
    """A fixed-width table; floats get 4 significant digits, long cells are cut at `width`."""
    rows = records(rows)
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0])
    cells = [[_cell(r.get(c), width) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "-" * len(line)]
    for row in cells:
        out.append("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(out)


def _cell(value: Any, width: int) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        text = f"{value:,}"
    else:
        text = str(value).replace("\n", "\\n")
    return text if len(text) <= width else text[:width - 1] + "…"


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()
