"""The one exception type for problems with the user's input."""
from __future__ import annotations


class DebugAtlasError(ValueError):
    """A problem with the user's input; the message says what to do about it."""
