"""summary.json: its schema version, the patch rows taken from a suite, reading and writing it."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any, Sequence

from ..core.errors import DebugAtlasError
from .atomic import write_text
from .paths import SUMMARY_FILE

SCHEMA_VERSION = 1
TIMED_STAGES = ("capture", "attribution", "layout", "render", "patches", "total")
# the patch stage's parts, timed and costed apart in `cost_w` and `forwards`
PATCH_SUBSTAGES = ("patches.screening", "patches.synthesis", "patches.selection", "patches.confirmation")
_PACKAGES = ("debugatlas", "torch", "torchvision", "captum", "umap-learn", "numpy", "pytorch-lightning")


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages a run depends on."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def patch_entries(suite, prefix: str, placements: Sequence[str] | None = None) -> list[dict]:
    """The `patches` list of a pair: one row per kept patch x placement, best first.

    `prefix`: the folder of the suite's patch PNGs relative to the run directory, ending in "/"
    (`paths.suite_dir(k) + "/patches/"` for the k-th pair of a run).
    Keys: id, cell, file, target, size_frac, placement, n_images, flip_rate, noise_flip_rate,
    natural_flip_rate, plus source, resize, best_flip_rate, p_b_before, p_b_after, verdict,
    flip_rate_ci, p_value (None where the rows were not judged).
    """
    entries = []
    for patch in suite.patches:
        for placement in placements or suite.placements:
            r = suite.baseline.get(patch.id, placement).to_dict()
            entries.append({
                "id": patch.id, "cell": None if patch.cell is None else list(patch.cell),
                "file": f"{prefix}{patch.id}.png", "target": suite.b, "size_frac": r["size_frac"],
                "placement": placement, "n_images": r["n_images"], "flip_rate": r["flip_rate"],
                "noise_flip_rate": r["noise_flip_rate"], "natural_flip_rate": r["natural_flip_rate"],
                "source": patch.source, "resize": patch.resize, "best_flip_rate": r["best_flip_rate"],
                "p_b_before": r["p_b_before"], "p_b_after": r["p_b_after"],
                "verdict": r.get("verdict"), "flip_rate_ci": r.get("flip_rate_ci"), "p_value": r.get("p_value"),
            })
    return entries


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, tuples lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dumps(summary: dict) -> str:
    """summary.json's text (strict JSON: no NaN)."""
    return json.dumps(_plain(summary), indent=1, allow_nan=False)


def write_summary(run_dir: str | Path, summary: dict) -> Path:
    """Write `run_dir/summary.json` atomically."""
    return write_text(Path(run_dir) / SUMMARY_FILE, dumps(summary))


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


def read_summary(path: str | Path) -> dict:
    """A summary.json (its path, or the run directory holding it), checked for its schema version."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    if not path.is_file():
        raise DebugAtlasError(
            f"{str(path)!r} does not exist. HINT: pass a run directory written by `analyze()` or its summary.json."
        )
    return read_versioned_json(path, SCHEMA_VERSION, "rerun the analysis with this version of debugatlas")


def baseline_pair(baseline: dict | None, a: str, b: str) -> dict | None:
    """The summary.json entry of the pair (a, b) (class names), a bare {"patches": [...]}, or None."""
    if baseline is None:
        return None
    if not isinstance(baseline, dict):
        raise DebugAtlasError(f"`baseline` is a {type(baseline).__name__}; expected the dict of a summary.json.")
    if "pairs" in baseline:
        pairs = [p for p in baseline["pairs"] if str(p.get("a")) == a and str(p.get("b")) == b]
        if not pairs:
            found = [(p.get("a"), p.get("b")) for p in baseline["pairs"]]
            raise DebugAtlasError(
                f"The baseline has no pair ({a!r}, {b!r}); it has {found}. "
                "HINT: pass the summary.json written with this suite."
            )
        return pairs[0]
    if not isinstance(baseline.get("patches"), list):
        raise DebugAtlasError(
            "The baseline has neither `pairs` nor a `patches` list. HINT: pass a summary.json written by analyze()."
        )
    return baseline


def baseline_patch_rates(pair: dict | None) -> dict[tuple[str, str], tuple]:
    """(patch id, placement) -> (flip rate, n_images, flip_rate_ci, verdict) of a summary.json pair entry."""
    if pair is None:
        return {}
    entries = pair.get("patches", [])
    if not isinstance(entries, list):
        raise DebugAtlasError(
            "The baseline pair's `patches` is not a list. HINT: pass a summary.json written by analyze()."
        )
    try:
        return {(str(e["id"]), str(e.get("placement", "static"))):
                (float(e["flip_rate"]), e.get("n_images"), e.get("flip_rate_ci"), e.get("verdict"))
                for e in entries if e.get("flip_rate") is not None}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DebugAtlasError(
            f"A baseline patch entry is malformed ({exc}). HINT: each needs id and flip_rate."
        ) from exc
