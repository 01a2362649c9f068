"""The offline HTML debugging report (`index.html`) for one debugatlas run."""
from __future__ import annotations

from .writer import render_report, script_json, write_report

__all__ = ["render_report", "script_json", "write_report"]
