"""summary.json on disk: the patch rows taken from a suite, and the one reader and writer of the file.

Its content is the run record (`artifacts.record.RunRecord`).
"""
from __future__ import annotations

import json
import platform
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Sequence

from ..core.errors import DebugAtlasError
from ..core.versions import package_versions
from .atomic import write_text
from .paths import SUMMARY_FILE
from ._schema import plain as _plain
from .record import REDO, SCHEMA_VERSION, PairRecord, PatchRow, RunRecord

TIMED_STAGES = ("capture", "attribution", "layout", "render", "patches", "total")
# the patch stage's parts, timed and costed apart in `cost_w` and `forwards`
PATCH_SUBSTAGES = ("patches.screening", "patches.synthesis", "patches.selection", "patches.confirmation",
                   "patches.composition")
LAYOUT_SUBSTAGES = ("layout.stability",)
_PACKAGES = ("debugatlas", "torch", "torchvision", "captum", "umap-learn", "numpy", "pytorch-lightning")


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages a run depends on."""
    return {"python": platform.python_version(), **package_versions(_PACKAGES)}


def patch_rows(suite, prefix: str, placements: Sequence[str] | None = None) -> tuple[PatchRow, ...]:
    """The `patches` rows of a pair: one per kept patch x placement, best first.

    `prefix`: the folder of the suite's patch PNGs relative to the run directory, ending in "/"
    (`paths.suite_patches_prefix(k)` for the k-th pair of a run). verdict, flip_rate_ci and
    p_value are None where the rows were not judged; NaN rates are None, as the file holds them.
    """
    rows = []
    for patch in suite.patches:
        for placement in placements or suite.placements:
            r = suite.baseline.get(patch.id, placement).to_dict()
            ci = r.get("flip_rate_ci")
            rows.append(PatchRow(
                id=patch.id, cell=None if patch.cell is None else tuple(patch.cell), file=f"{prefix}{patch.id}.png",
                target=suite.b, size_frac=r["size_frac"], placement=placement, n_images=r["n_images"],
                flip_rate=r["flip_rate"], noise_flip_rate=r["noise_flip_rate"],
                natural_flip_rate=r["natural_flip_rate"], source=patch.source, resize=patch.resize,
                best_flip_rate=r["best_flip_rate"], p_b_before=r["p_b_before"], p_b_after=r["p_b_after"],
                verdict=r.get("verdict"), flip_rate_ci=None if ci is None else tuple(ci), p_value=r.get("p_value"),
            ))
    return tuple(rows)


def dumps(summary: RunRecord | dict) -> str:
    """summary.json's text (strict JSON: no NaN)."""
    if isinstance(summary, RunRecord):
        summary = summary.to_dict()
    return json.dumps(_plain(summary), indent=1, allow_nan=False)


def write_summary(run_dir: str | Path, record: RunRecord) -> Path:
    """Write `run_dir/summary.json` atomically."""
    return write_text(Path(run_dir) / SUMMARY_FILE, dumps(record))


def read_versioned_json(path: Path, version: int, redo: str) -> dict:
    """The JSON object in `path`, whose `schema_version` must be `version`; `redo` says how to make a new one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DebugAtlasError(f"{str(path)!r} is not valid JSON ({exc}). HINT: {redo}.") from exc
    found = data.get("schema_version") if isinstance(data, dict) else None
    if found != version:
        raise DebugAtlasError(
            f"{str(path)!r} has schema_version {found!r}; this debugatlas reads {version}. HINT: {redo}."
        )
    return data


def read_summary(path: str | Path) -> RunRecord:
    """The run record in a summary.json (its path, or the run directory holding it), checked."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    if not path.is_file():
        raise DebugAtlasError(
            f"{str(path)!r} does not exist. HINT: pass a run directory written by `analyze()` or its summary.json."
        )
    data = read_versioned_json(path, SCHEMA_VERSION, REDO)
    try:
        return RunRecord.from_dict(data)
    except DebugAtlasError as exc:
        raise DebugAtlasError(f"{str(path)!r}: {exc}") from exc


def as_record(summary: RunRecord | Mapping | str | Path) -> RunRecord:
    """A run record from a record, the dict of a summary.json, or its path (or run directory)."""
    if isinstance(summary, RunRecord):
        return summary
    if isinstance(summary, (str, Path)):
        return read_summary(summary)
    if isinstance(summary, Mapping):
        return RunRecord.from_dict(summary)
    raise DebugAtlasError(f"Got a {type(summary).__name__} for a run record. HINT: pass a summary.json "
                          "(path, run directory or its dict) or `AnalysisResult.record`.")


def baseline_pair(baseline: RunRecord | None, a: str, b: str) -> PairRecord | None:
    """The baseline's record of the pair (a, b) (class names), or None without a baseline."""
    if baseline is None:
        return None
    pair = baseline.pair(a, b)
    if pair is None:
        found = [(p.a, p.b) for p in baseline.pairs]
        raise DebugAtlasError(
            f"The baseline has no pair ({a!r}, {b!r}); it has {found}. "
            "HINT: pass the summary.json written with this suite."
        )
    return pair
