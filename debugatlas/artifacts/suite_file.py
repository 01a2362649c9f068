"""suite.json and the patch PNGs of a saved `PatchSuite`: writing, reading and checking them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DebugAtlasError
from .atomic import staged_dir
from .images import from_uint8, to_uint8
from .paths import SUITE_FILE, SUITE_ROOT, SUMMARY_FILE
from .summary import read_versioned_json

SUITE_SCHEMA_VERSION = 1


def suite_dict(suite) -> dict:
    """The `suite.json` content of a `PatchSuite` (plain values)."""
    def entry(p, folder: str) -> dict:
        return {"id": p.id, "cell": None if p.cell is None else list(p.cell), "source": p.source,
                "resize": p.resize, "file": f"{folder}/{p.id}.png", "shape": list(p.image.shape)}

    return {
        "schema_version": SUITE_SCHEMA_VERSION, "a": suite.a, "b": suite.b,
        "a_index": suite.a_index, "b_index": suite.b_index, "class_names": list(suite.class_names),
        "image_shape": list(suite.image_shape), "sizes": list(suite.sizes),
        "placements": list(suite.placements), "n_random": suite.n_random, "seed": suite.seed,
        "batch_size": suite.batch_size, "selection": suite.selection,
        "patches": [entry(p, "patches") for p in suite.patches],
        "controls": [entry(p, "controls") for p in suite.controls],
        "baseline": suite.baseline.to_dict(), "metadata": suite.metadata,
    }


def write_suite(suite, directory: str | Path) -> Path:
    """Write `directory/suite.json` and the PNGs, built in a staging folder and swapped in whole."""
    from PIL import Image

    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or
                               (any(directory.iterdir()) and not (directory / SUITE_FILE).is_file())):
        raise DebugAtlasError(
            f"`{str(directory)!r}` exists and is not a patch suite. HINT: choose a new or empty folder."
        )
    for p in suite.patches + suite.controls:
        if p.image.shape[0] not in (1, 3):
            raise DebugAtlasError(f"Patch {p.id!r} has {p.image.shape[0]} channels; PNG suites take 1 or 3.")
    with staged_dir(directory) as tmp:
        for folder, items in (("patches", suite.patches), ("controls", suite.controls)):
            (tmp / folder).mkdir()
            for p in items:
                array = to_uint8(p.image)
                Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(tmp / folder / f"{p.id}.png")
        (tmp / SUITE_FILE).write_text(json.dumps(suite_dict(suite), indent=1))
    return directory


def suite_dirs(path: str | Path) -> list[Path]:
    """The suite folders at `path`: `path` itself when it holds a suite.json (or none of its
    sub-folders does), else every sub-folder that holds one, sorted by name."""
    path = Path(path)
    if path.is_dir() and not (path / SUITE_FILE).is_file():
        subdirs = sorted(d for d in path.iterdir() if (d / SUITE_FILE).is_file())
        if subdirs:
            return subdirs
    return [path]


def read_suite(directory: str | Path) -> dict[str, Any]:
    """The plain fields of a suite saved in `directory`, every file checked: patches and controls as
    {id, cell, source, resize, image [C, h, w] float32}, the baseline as its dict, selection or None."""
    directory = Path(directory)
    path = directory / SUITE_FILE
    if not directory.is_dir():
        raise DebugAtlasError(
            f"Suite folder {str(directory)!r} does not exist. HINT: pass the folder written by "
            "`PatchSuite.save` or `analyze()` (it contains suite.json)."
        )
    if not path.is_file():
        raise DebugAtlasError(f"{str(path)!r} is missing. HINT: {_suite_hint(directory)}")
    data = read_versioned_json(path, SUITE_SCHEMA_VERSION, "save the suite again with this version of debugatlas")
    try:
        return {
            "a": str(data["a"]), "b": str(data["b"]), "a_index": int(data["a_index"]),
            "b_index": int(data["b_index"]),
            "patches": [_load_patch(directory, e) for e in data["patches"]],
            "controls": [_load_patch(directory, e) for e in data["controls"]],
            "sizes": tuple(float(s) for s in data["sizes"]), "placements": tuple(str(p) for p in data["placements"]),
            "n_random": int(data["n_random"]), "seed": int(data["seed"]),
            "baseline": dict(data["baseline"]),
            "class_names": [str(c) for c in data["class_names"]],
            "image_shape": tuple(int(v) for v in data["image_shape"]),
            "batch_size": int(data.get("batch_size", 256)), "selection": data.get("selection"),
            "metadata": dict(data.get("metadata", {})),
        }
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DebugAtlasError):
            raise
        raise DebugAtlasError(
            f"{str(path)!r} is incomplete or malformed ({type(exc).__name__}: {exc}). HINT: save the suite again."
        ) from exc


def _suite_hint(directory: Path) -> str:
    """What to pass instead of a folder without suite.json: its `suite/` folder when it is a run directory."""
    found = sorted(p.parent for p in (*directory.glob(f"*/{SUITE_FILE}"), *directory.glob(f"*/*/{SUITE_FILE}")))
    if (directory / SUITE_ROOT).is_dir() or (directory / SUMMARY_FILE).is_file():
        where = directory / SUITE_ROOT
        inside = ", ".join(str(p.relative_to(where)) for p in found if where in p.parents) or "none found"
        return (f"{str(directory)!r} looks like a run directory of `analyze()`; its patch suites are in "
                f"{str(where)!r} (suites: {inside}). Pass `--suite {where}` (or `PatchSuite.load` one of them).")
    if found:
        return f"suite.json files were found in sub-folders: {[str(p) for p in found[:5]]}; pass one of those."
    return "pass a folder written by `PatchSuite.save` (or the `suite/` folder of a run directory)."


def _load_patch(directory: Path, entry: dict) -> dict:
    from PIL import Image, UnidentifiedImageError

    file = directory / entry["file"]
    if not file.is_file():
        raise DebugAtlasError(f"Patch file {str(file)!r} is missing. HINT: copy the whole suite folder.")
    try:
        with Image.open(file) as image:
            image.load()
            array = np.asarray(image.convert("L" if image.mode in ("L", "1", "I;16", "I") else "RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise DebugAtlasError(
            f"Patch file {str(file)!r} is not a readable PNG ({exc}). HINT: save the suite again."
        ) from exc
    pixels = from_uint8(array)
    if list(pixels.shape) != list(entry["shape"]):
        raise DebugAtlasError(
            f"Patch file {str(file)!r} has shape {list(pixels.shape)}; suite.json says {entry['shape']}. "
            "HINT: the file was replaced; save the suite again."
        )
    return {"id": entry["id"], "cell": entry.get("cell"), "source": entry["source"], "image": pixels,
            "resize": bool(entry["resize"])}
