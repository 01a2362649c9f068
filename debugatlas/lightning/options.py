"""The callback's options: one route from keywords, `options=` and a YAML config to the capture.

The validation hooks capture with the settings in `CAPTURE_DEFAULTS`; every other option goes to
`analyze()`. Whichever way a user passes them, each name arrives once and is checked once.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..core.errors import DebugAtlasError
from ..pipeline.config import AnalysisConfig

__all__ = ["CAPTURE_DEFAULTS", "capture_settings"]

# the capture in the validation hooks: its settings and their defaults (uniform positions, one per
# image), which `options=` and keywords may set alike
CAPTURE_DEFAULTS: dict[str, Any] = {"sampling": "random", "samples_per_image": 1, "cap": 100_000}


def capture_settings(keywords: Mapping[str, Any], options: Mapping[str, Any] | None,
                     analysis_options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(capture settings, other analysis options) from keywords, `options=` and `**analysis_options`.

    Every option has one route: a name given twice is an error, the capture settings (see
    `CAPTURE_DEFAULTS`) go to the validation hooks' recorder and are recorded once in summary.json.
    """
    given = {k: v for k, v in keywords.items() if v is not None}
    both = sorted(set(options or {}) & (set(analysis_options) | set(given)))
    if both:
        raise DebugAtlasError(f"`AtlasCallback` got {both} both in `options=` and as keywords. HINT: pass each once.")
    merged = {**dict(options or {}), **dict(analysis_options), **given}
    # unknown names and bad values (a sampling rule, a cap) fail here, with the valid ones
    AnalysisConfig.from_options(dict(merged))
    capture = {k: merged.pop(k, default) for k, default in CAPTURE_DEFAULTS.items()}
    if not isinstance(capture["samples_per_image"], int):
        raise DebugAtlasError(
            f"`AtlasCallback(samples_per_image={capture['samples_per_image']!r})` must be an integer >= 1: the "
            "validation hooks sample before the analysis could size it. HINT: pass e.g. `samples_per_image=4`.")
    return capture, merged
