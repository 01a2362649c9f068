"""Reading summary.json's records with checks, and writing them back as they were read.

`Record` is the base of the run record's dataclasses (`artifacts.record`): `_KINDS` names each
field's check, `_OPTIONAL` the fields a file of schema 1 may lack; a missing field or a value of
the wrong type is a `DebugAtlasError` that names the field by its path (`pairs[0].patches[3].flip_rate`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from ..core.errors import DebugAtlasError

REDO = "rerun the analysis with this version of debugatlas"


def _fail(where: str, problem: str) -> DebugAtlasError:
    return DebugAtlasError(f"summary.json field `{where}` {problem}. HINT: {REDO}.")


def _number(value: Any, where: str, optional: bool) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, f"is {value!r}; expected a number" + (" or null" if optional else ""))
    return value


_CHECKS = {
    "str": lambda v, w: v if isinstance(v, str) else _raise(w, v, "text"),
    "str?": lambda v, w: v if v is None or isinstance(v, str) else _raise(w, v, "text or null"),
    "int": lambda v, w: v if isinstance(v, int) and not isinstance(v, bool) else _raise(w, v, "a whole number"),
    "int?": lambda v, w: v if v is None or (isinstance(v, int) and not isinstance(v, bool))
    else _raise(w, v, "a whole number or null"),
    "num": lambda v, w: _number(v, w, False),
    "num?": lambda v, w: _number(v, w, True),
    "bool": lambda v, w: v if isinstance(v, bool) else _raise(w, v, "true or false"),
    "bool?": lambda v, w: v if v is None or isinstance(v, bool) else _raise(w, v, "true, false or null"),
    "dict": lambda v, w: dict(v) if isinstance(v, Mapping) else _raise(w, v, "an object"),
    "dict?": lambda v, w: None if v is None else dict(v) if isinstance(v, Mapping) else _raise(w, v, "an object"),
    "strs": lambda v, w: tuple(_CHECKS["str"](x, f"{w}[{k}]") for k, x in enumerate(_list(v, w))),
    "strs?": lambda v, w: None if v is None else _CHECKS["strs"](v, w),
    "ints": lambda v, w: tuple(_CHECKS["int"](x, f"{w}[{k}]") for k, x in enumerate(_list(v, w))),
    "cell": lambda v, w: _cell(v, w),
    "cell?": lambda v, w: None if v is None else _cell(v, w),
    "ci?": lambda v, w: None if v is None else _pair_of_numbers(v, w),
    "matrix": lambda v, w: tuple(tuple(_number(x, f"{w}[{r}][{c}]", False) for c, x in enumerate(_list(row, f"{w}[{r}]")))
                                 for r, row in enumerate(_list(v, w))),
}


def _raise(where: str, value: Any, expected: str):
    raise _fail(where, f"is {value!r}; expected {expected}")


def _list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise _fail(where, f"is {type(value).__name__}; expected a list")
    return list(value)


def _cell(value: Any, where: str) -> tuple[int, int]:
    items = _list(value, where)
    if len(items) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
        raise _fail(where, f"is {value!r}; expected a cell [i, j]")
    return int(items[0]), int(items[1])


def _pair_of_numbers(value: Any, where: str) -> tuple:
    items = _list(value, where)
    if len(items) != 2:
        raise _fail(where, f"is {value!r}; expected [lo, hi]")
    return tuple(_number(x, f"{where}[{k}]", False) for k, x in enumerate(items))


def plain(value: Any) -> Any:
    """JSON-ready: records as dicts, tuples as lists, NaN and infinities as None."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Record:
    """Shared reading and writing of the records below: `_KINDS` maps each field to its check
    (see `_CHECKS`) or to a record class (`[Cls]` for a list of them); `_OPTIONAL` names the
    fields schema 1 gained after its first release, which a file may lack (the default stands in)."""

    _KINDS: ClassVar[dict[str, Any]] = {}
    _OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = plain(value)
        out.update(plain(getattr(self, "extra", {}) or {}))
        return out

    @classmethod
    def from_dict(cls, raw: Any, where: str = ""):
        if not isinstance(raw, Mapping):
            raise _fail(where or cls.__name__, f"is {type(raw).__name__}; expected an object")
        values, known = {}, set()
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            known.add(f.name)
            at = f"{where}.{f.name}" if where else f.name
            if f.name not in raw:
                if f.name not in cls._OPTIONAL:
                    raise _fail(at, "is missing")
                continue
            kind = cls._KINDS[f.name]
            value = raw[f.name]
            if isinstance(kind, list):
                values[f.name] = tuple(kind[0].from_dict(x, f"{at}[{k}]") for k, x in enumerate(_list(value, at)))
            elif isinstance(kind, type):
                values[f.name] = None if value is None else kind.from_dict(value, at)
            else:
                values[f.name] = _CHECKS[kind](value, at)
        if "extra" in {f.name for f in dataclasses.fields(cls)}:
            values["extra"] = {k: v for k, v in raw.items() if k not in known}
        return cls(**values)
