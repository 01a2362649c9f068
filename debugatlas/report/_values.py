"""Coercion of user-provided summary values: a malformed value becomes None or empty, never an error."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def as_float(value: Any) -> float | None:
    """`value` as a finite float, else None (bools, strings, NaN and inf are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def as_int(value: Any) -> int | None:
    """`value` as an int when it is a whole finite number, else None."""
    number = as_float(value)
    return int(number) if number is not None and number == int(number) else None


def as_text(value: Any) -> str:
    """A user-provided value as display text (escaped later by the template)."""
    return "" if value is None else str(value)


def mapping(value: Any) -> Mapping:
    return value if isinstance(value, Mapping) else {}


def sequence(value: Any) -> Sequence:
    return value if isinstance(value, (list, tuple)) else []


def cell(value: Any) -> tuple[int, int] | None:
    """`[i, j]` as a pair of ints, else None."""
    items = sequence(value)
    if len(items) != 2:
        return None
    i, j = as_int(items[0]), as_int(items[1])
    return None if i is None or j is None else (i, j)
