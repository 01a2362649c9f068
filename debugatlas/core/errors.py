"""The one exception type for problems with the user's input, and the check of names against the valid ones."""
from __future__ import annotations

import difflib
from typing import Iterable


class DebugAtlasError(ValueError):
    """A problem with the user's input; the message says what to do about it."""


def refuse_unknown(given: Iterable[str], valid: Iterable[str], *, what: str, where: str) -> None:
    """Raise a `DebugAtlasError` naming every name of `given` not in `valid`, each with its closest
    valid names, and listing them all: "Unknown <what>(s) [...] in <where>. HINT: ..."."""
    names = sorted(set(valid))
    unknown = sorted(set(given) - set(names))
    if unknown:
        close = {u: difflib.get_close_matches(u, names, n=2) for u in unknown}
        raise DebugAtlasError(f"Unknown {what}(s) {unknown} in {where}. HINT: closest valid names {close}; "
                              f"all {what}s: {names}.")
