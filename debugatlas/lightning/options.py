"""The callback's options: one mapping, `options=`, written alike in Python and in a LightningCLI YAML config.

Each name in it goes one way, checked once here: the capture settings (`CAPTURE_DEFAULTS`) to the
validation hooks' recorder and to `analyze()` (so summary.json records them), the store settings
(`STORE_DEFAULTS`) to the recorder only, `analyze()`'s own arguments (`RUN_ARGUMENTS`) to that
call, and every other `AnalysisConfig` option to `analyze()` as a stage option.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..capture import DISK_THRESHOLD_BYTES, CaptureSpec
from ..core.errors import DebugAtlasError, refuse_unknown
from ..pipeline.config import AnalysisConfig

__all__ = ["CAPTURE_DEFAULTS", "RUN_ARGUMENTS", "STORE_DEFAULTS", "CallbackOptions", "refuse_keywords",
           "split_options"]

# the capture in the validation hooks: its settings and their defaults (uniform positions, one per image)
CAPTURE_DEFAULTS: dict[str, Any] = {"sampling": "random", "samples_per_image": 1, "cap": 100_000}
# where the hooks' reservoir keeps its vectors (see `capture.ActivationRecorder`)
STORE_DEFAULTS: dict[str, Any] = {"store_dir": None, "disk_threshold_bytes": DISK_THRESHOLD_BYTES}
# what `analyze()` takes besides the stage options: the module's input normalisation, the class
# names where the dataset has no `.classes`, and the "pkg.module:factory" of the check command
RUN_ARGUMENTS = ("normalize", "class_names", "model_spec")


@dataclass(frozen=True)
class CallbackOptions:
    """`options=` sorted by where each name goes.

    capture: what the validation hooks record (sampling, samples_per_image, cap, the store, seed).
    capture_options: sampling, samples_per_image, cap as given to `analyze()`.
    run: the `RUN_ARGUMENTS` given (name -> value). analysis: every other `AnalysisConfig` option.
    """

    capture: CaptureSpec
    capture_options: dict[str, Any]
    run: dict[str, Any]
    analysis: dict[str, Any]


def _names() -> list[str]:
    return sorted({f.name for f in fields(AnalysisConfig)} | set(STORE_DEFAULTS) | set(RUN_ARGUMENTS))


def split_options(options: Mapping[str, Any] | None, seed: int) -> CallbackOptions:
    """Check `options` and sort them (see `CallbackOptions`); `seed` is the capture's.

    An unknown name and a bad value (a sampling rule, a cap) fail here, with the valid ones.
    """
    if options is not None and not isinstance(options, Mapping):
        raise DebugAtlasError(f"`AtlasCallback(options={options!r})` must be a mapping of option names to "
                              "values. HINT: e.g. `options={'render_steps': 64, 'cap': 5000}`.")
    given = dict(options or {})
    refuse_unknown(given, _names(), what="analysis option", where="`AtlasCallback(options=...)`")
    store = {k: given.pop(k, default) for k, default in STORE_DEFAULTS.items()}
    run = {k: given.pop(k) for k in RUN_ARGUMENTS if k in given}
    AnalysisConfig.from_options(dict(given))
    capture = {k: given.pop(k, default) for k, default in CAPTURE_DEFAULTS.items()}
    if not isinstance(capture["samples_per_image"], int):
        raise DebugAtlasError(
            f"`AtlasCallback(options={{'samples_per_image': {capture['samples_per_image']!r}}})` must be an integer "
            ">= 1: the validation hooks sample before the analysis could size it. HINT: pass e.g. "
            "`options={'samples_per_image': 4}`.")
    spec = CaptureSpec(capture["sampling"], capture["samples_per_image"], capture["cap"], int(seed),
                       store_dir=store["store_dir"], disk_threshold_bytes=store["disk_threshold_bytes"])
    return CallbackOptions(capture=spec, capture_options=capture, run=run, analysis=given)


def refuse_keywords(keywords: Mapping[str, Any], valid: list[str]) -> None:
    """Raise for keywords `AtlasCallback` does not take: an option is named with the `options=` it
    belongs in, any other name with the closest of the `valid` keywords."""
    if not keywords:
        return
    options = {k: v for k, v in keywords.items() if k in _names()}
    if options:
        raise DebugAtlasError(
            f"`AtlasCallback({', '.join(f'{k}={v!r}' for k, v in options.items())})`: analysis options go in "
            f"`options=`, one mapping, as a LightningCLI YAML config writes them. HINT: "
            f"`AtlasCallback(..., options={options!r})`."
        )
    close = {k: difflib.get_close_matches(k, valid + _names(), n=2) for k in keywords}
    raise DebugAtlasError(
        f"`AtlasCallback` has no keyword or analysis option {sorted(keywords)}. HINT: closest names {close} "
        f"(an analysis option goes in `options=`); the keywords are {valid}."
    )
