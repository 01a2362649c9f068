"""Turn the run record and the manifest into the plain values the template shows.

The numbers come from the run record (`artifacts.record.RunRecord`), checked when it was read;
the manifest (`artifacts.manifest.Manifest`) names the pictures written beside the page (per
pair: views, exemplar crops by cell, misclassified examples; the atlases' cells). A picture that
is absent or outside the folder becomes `None` (or an empty list), and the page names the gap in
its header and in the section concerned.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..artifacts.manifest import AtlasPictures, Manifest, PairPictures
from ..artifacts.record import CellRow, PairRecord, PatchRow, RunRecord
from . import _findings
from ._values import as_float, as_int, as_text, mapping, sequence
from ._values import cell as as_cell

PATCH_ROWS_SHOWN = 8
MATRIX_MAX_CLASSES = 40
TOP_PAIRS = 10
MAX_EXEMPLARS = 8
MAX_MISCLASSIFIED = 32
_CELL_TOP_CLASSES = 12


class Images:
    """Checks image paths given relative to the report folder and turns them into `src` values.

    A path is accepted only when it is relative, stays inside the folder and (when the folder is
    known) names an existing file; anything else is shown as a labelled gap on the page.
    """

    def __init__(self, base: Path | None) -> None:
        self.base = base
        self._seen: dict[str, dict] = {}

    def __call__(self, path: Any) -> dict | None:
        """{"src", "path", "missing", "reason"} for a path, or None when no path was given."""
        if path is None or path == "":
            return None
        text = str(path)
        if text not in self._seen:
            reason = self._problem(text)
            src = None if reason else quote(text.replace("\\", "/"), safe="/")
            self._seen[text] = {"src": src, "path": text, "missing": reason is not None,
                                "reason": reason or ""}
        return dict(self._seen[text])

    def _problem(self, text: str) -> str | None:
        posix = text.replace("\\", "/")
        if ":" in posix.split("/")[0] or posix.startswith("/"):
            return "not a path relative to the report folder"
        if ".." in posix.split("/"):
            return "points outside the report folder"
        if self.base is not None and not os.path.isfile(os.path.join(self.base, posix)):
            return "file not found"
        return None

    def src(self, path: Any) -> str | None:
        """Only the `src` of an accepted image, else None."""
        image = self(path)
        return image["src"] if image else None


def _colour(rate: float, hue: str) -> tuple[str, str]:
    """Background and text colour for a value in [0, 1] on a white-to-`hue` scale."""
    rate = min(max(rate, 0.0), 1.0)
    ends = {"blue": (33, 102, 172), "red": (178, 24, 43)}[hue]
    rgb = [round(255 + (end - 255) * rate) for end in ends]
    text = "#fff" if rate > 0.55 else "#1b1f24"
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})", text


def confusion(record: RunRecord, classes: list[str]) -> dict | None:
    """Rows of coloured cells, or None when the matrix is empty or not K×K."""
    rows = record.confusion_matrix
    k = len(rows)
    matrix = [[as_int(v) for v in row] for row in rows]
    if k == 0 or any(len(row) != k or None in row for row in matrix):
        return None
    names = classes if len(classes) == k else [str(i) for i in range(k)]
    off = [matrix[r][c] for r in range(k) for c in range(k) if r != c]
    max_off = max(off, default=0) or 1
    table = []
    for r, row in enumerate(matrix):
        total = sum(row)
        cells = []
        for c, count in enumerate(row):
            rate = count / total if total else 0.0
            bg, fg = _colour(rate, "blue") if r == c else _colour(count / max_off, "red")
            cells.append({"count": count, "rate": rate, "bg": bg, "fg": fg, "col": names[c]})
        table.append({"label": names[r], "cells": cells, "total": total})
    pairs = sorted(
        ((matrix[r][c], matrix[r][c] / max(sum(matrix[r]), 1), names[r], names[c])
         for r in range(k) for c in range(k) if r != c and matrix[r][c] > 0),
        key=lambda t: (-t[0], -t[1]),
    )[:TOP_PAIRS]
    return {
        "labels": names,
        "rows": table,
        "too_large": k > MATRIX_MAX_CLASSES,
        "top_pairs": [{"count": n, "rate": rate, "a": a, "b": b} for n, rate, a, b in pairs],
        "lookup": {(names[r], names[c]): matrix[r][c] for r in range(k) for c in range(k)},
    }


def _patch_entry(row: PatchRow, images: Images) -> dict:
    ci = row.flip_rate_ci
    return {
        "candidate": row.id, "source": row.source, "placement": row.placement,
        "flip_rate": as_float(row.flip_rate), "noise_flip_rate": as_float(row.noise_flip_rate),
        "natural_flip_rate": as_float(row.natural_flip_rate), "ci": ci, "p_value": as_float(row.p_value),
        "verdict": _findings.verdict(row.verdict),
        "gauge": _findings.gauge(as_float(row.flip_rate), ci, as_float(row.noise_flip_rate),
                                 as_float(row.natural_flip_rate)),
        "p_b_before": as_float(row.p_b_before), "p_b_after": as_float(row.p_b_after),
        "n_images": row.n_images, "size_frac": as_float(row.size_frac), "file": images(row.file),
    }


def _patch_rows(entries: list[dict]) -> tuple[list[dict], list[dict]]:
    """(rows shown, rows folded away): confirmed first, then natural, not confirmed, no verdict.

    Within a verdict the order of the summary is kept. Every confirmed row is shown, and at least
    `PATCH_ROWS_SHOWN` rows in all; the rest go into a collapsed list.
    """
    order = [*_findings.VERDICTS, "other"]
    rank = {key: n for n, key in enumerate(order)}
    ordered = sorted(entries, key=lambda e: rank[e["verdict"]["key"]] if e["verdict"] else len(order))
    confirmed = sum(1 for e in entries if e["verdict"] and e["verdict"]["key"] == "confirmed")
    shown = max(PATCH_ROWS_SHOWN, confirmed)
    return ordered[:shown], ordered[shown:]


def _ranked_cells(rows: Sequence[CellRow], crops: Mapping, images: Images) -> list[dict]:
    """The pair's ranked cells with their exemplar crops (`crops`: cell -> paths written)."""
    cells = []
    for rank, row in enumerate(rows, start=1):
        exemplars = [images(p) for p in sequence(crops.get(row.cell))[:MAX_EXEMPLARS]]
        cells.append({
            "rank": rank, "key": row.cell, "cell": f"({row.cell[0]}, {row.cell[1]})",
            "score": as_float(row.score), "count": row.count, "count_a": row.count_a,
            "attribution_a": as_float(row.attribution_a), "attribution_b": as_float(row.attribution_b),
            "icon": images(row.icon), "exemplars": [e for e in exemplars if e],
            "exemplar_ids": list(row.exemplar_ids[:MAX_EXEMPLARS]),
        })
    scale = max((abs(v) for c in cells for v in (c["attribution_a"], c["attribution_b"])
                 if v is not None), default=0.0) or 1.0
    for c in cells:
        for side in ("a", "b"):
            value = c[f"attribution_{side}"]
            c[f"bar_{side}"] = 0.0 if value is None else 50.0 * abs(value) / scale
            c[f"neg_{side}"] = value is not None and value < 0
    return cells


def _listed_cells(cells: list[dict]) -> tuple[list[dict], int]:
    """Cells that push toward B (score > 0), renumbered; and how many were dropped."""
    listed = [c for c in cells if c["score"] is not None and c["score"] > 0]
    for rank, c in enumerate(listed, start=1):
        c["rank"] = rank
    return listed, len(cells) - len(listed)


def pair_view(index: int, pair: PairRecord, pics: PairPictures, images: Images, classes: Sequence[str] = ()) -> dict:
    """Everything the page shows about one studied pair: numbers from its record, pictures from `pics`."""
    cells = _ranked_cells(pair.confusing_cells, pics.cell_crops, images)
    crops_by_cell = {c["key"]: c["exemplars"] for c in cells}
    cells, dropped = _listed_cells(cells)
    entries = [_patch_entry(p, images) for p in pair.patches]
    shown, folded = _patch_rows(entries)
    notes = [n for n in [*pics.notes, *pair.notes] if n]
    misclassified = [{"id": m.id, "p_b": as_float(m.p_b), "image": images(m.image), "heatmap": images(m.heatmap)}
                     for m in pics.misclassified[:MAX_MISCLASSIFIED]]
    found = _findings.findings(pair, pics.finding_crops, images, cell_exemplars=crops_by_cell, classes=classes)
    # said once for the pair, not under every finding, when no misclassified image holds any of them
    none_hold = bool(found) and bool(pair.confused) and all(
        f["co_occurring"] is not None and f["co_occurring"]["images"] == 0 for f in found)
    if none_hold:
        found = [{**f, "co_occurring": None} for f in found]
    return {
        "none_hold": none_hold,
        "anchor": f"pair-{index}", "a": pair.a, "b": pair.b, "confused": pair.confused,
        "kind": pair.kind, "near_miss": pair.kind == "near_miss",
        "notes": list(dict.fromkeys(notes)),
        "findings": found, "finding_cells": [f["cell"] for f in found],
        "verdict_counts": _findings.verdict_counts(entries),
        "filtered_a": images(pics.filtered_a), "filtered_b": images(pics.filtered_b),
        "comparison": images(pics.comparison),
        "cells": cells, "cells_dropped": dropped, "cells_from_summary": not pics.cell_crops and bool(cells),
        "misclassified": misclassified, "misclassified_total": len(pics.misclassified),
        "patch_rows": shown, "patch_rows_folded": folded, "patch_entries": entries,
        "together": _together(pair.composition or ()),
    }


def _together(rows) -> list[dict]:
    """The pair's patches measured two at a time (`pairs[].composition`), those that act together first."""
    out = []
    for r in sorted(rows, key=lambda r: (not r.together, r.p_value)):
        cells = [f"({c[0]}, {c[1]})" if c is not None else "—" for c in (r.first_cell, r.second_cell)]
        out.append({"patches": list(r.patches), "cells": cells, "n_images": r.n_images,
                    "flip_rate": as_float(r.flip_rate), "ci": r.flip_rate_ci, "first": as_float(r.first_alone),
                    "second": as_float(r.second_alone), "noise": as_float(r.noise_flip_rate),
                    "p_value": as_float(r.p_value), "together": r.together})
    return out


def pairs(record: RunRecord, manifest: Manifest, images: Images) -> list[dict]:
    """The run's pairs in its order, each with the pictures the manifest gives for it."""
    return [pair_view(k, pair, manifest.pair(pair.a, pair.b), images, record.classes)
            for k, pair in enumerate(record.pairs, start=1)]


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def _atlas_entries(manifest: Manifest, main_grid: int | None) -> list[tuple[AtlasPictures, str | None]]:
    """(grid, icon image path) per grid, smallest first.

    The icon image is the grid's `icon_image`, else the manifest's `icon_atlas` for the grid whose
    size is `main_grid` (the grid the icons were rendered for). A grid's `grid_image` is never
    taken for icons: it is a picture of class colours, which the interactive atlas draws itself.
    """
    entries = []
    for grid in manifest.atlases:
        icon_image = grid.icon_image
        if not icon_image and grid.grid_size == main_grid:
            icon_image = manifest.icon_atlas
        entries.append((grid, icon_image))
    return sorted(entries, key=lambda e: e[0].grid_size)


def atlas_blob(manifest: Manifest, classes: list[str], images: Images, main_grid: int | None,
               marks: Sequence[tuple[tuple[int, int], str]] = ()) -> dict:
    """The compact JSON the interactive atlas reads.

    {"classes": [name], "grids": [{"grid_size", "icon_image" (src or null), "icon_image_problem",
    "cells": [[i, j, count, [[class index, count]], [[class index, mean attribution]],
    [exemplar src], icon src]], "marks": [[i, j, label]]}], "initial": index of the grid shown
    first (`main_grid` when present, else the size nearest 20)}; class index -1 stands for "other
    classes" in the class mix. `marks` (cells of confirmed findings, e.g. "3 → 8") are placed on
    the main grid only, the grid the ranked cells refer to.
    """
    names = list(classes)
    index = {name: k for k, name in enumerate(names)}

    def class_index(name: Any) -> int:
        name = as_text(name)
        if name not in index:
            index[name] = len(names)
            names.append(name)
        return index[name]

    grids = []
    for grid, icon_image in _atlas_entries(manifest, main_grid):
        size = grid.grid_size
        cells = []
        for cell in grid.cells:
            mix = sorted(((class_index(k), v) for k, v in cell.classes.items()), key=lambda kv: -kv[1])
            mix = [list(kv) for kv in mix if kv[1] > 0]
            if len(mix) > _CELL_TOP_CLASSES:
                mix = mix[:_CELL_TOP_CLASSES] + [[-1, sum(n for _, n in mix[_CELL_TOP_CLASSES:])]]
            attr = sorted(((class_index(k), v) for k, v in cell.attribution.items()), key=lambda kv: -abs(kv[1]))
            attr = sorted(([k, _round(v)] for k, v in attr[:_CELL_TOP_CLASSES]), key=lambda kv: -kv[1])
            exemplars = [images.src(p) for p in cell.exemplars[:MAX_EXEMPLARS]]
            cells.append([cell.cell[0], cell.cell[1], cell.count, mix, attr,
                          [e for e in exemplars if e], images.src(cell.icon)])
        image = images(icon_image)
        if image:
            problem = image["reason"]
        elif main_grid is not None and size != main_grid:
            problem = f"icons are rendered for the {main_grid}×{main_grid} grid only"
        else:
            problem = "no icon atlas was rendered"
        grid_marks = [[i, j, as_text(label)] for (i, j), label in marks
                      if size == main_grid and 0 <= i < size and 0 <= j < size]
        grids.append({"grid_size": size, "icon_image": image["src"] if image else None,
                      "icon_image_problem": problem, "cells": cells, "marks": grid_marks})
    sizes = [g["grid_size"] for g in grids]
    initial = (sizes.index(main_grid) if main_grid in sizes
               else min(range(len(grids)), key=lambda k: abs(sizes[k] - 20), default=0))
    return {"classes": names, "grids": grids, "initial": initial}


def atlas_gallery(manifest: Manifest, images: Images, main_grid: int | None) -> list[dict]:
    """One picture per grid size for the static gallery: the grid's `image`, `grid_image` or icons."""
    gallery = []
    for grid, icon_image in _atlas_entries(manifest, main_grid):
        picture = images(grid.image) or images(grid.grid_image) or images(icon_image)
        gallery.append({"size": grid.grid_size, "image": picture, "cells": len(grid.cells)})
    return gallery


def overview(record: RunRecord, manifest: Manifest) -> dict:
    """Header rows (versions included), timings with bar widths and the config as pretty JSON."""
    accuracy = as_float(record.accuracy)
    samples = record.num_samples
    seed = record.seed
    rows = [
        ("Model", manifest.model),
        ("Layer", record.layer or None),
        ("Data", manifest.data),
        ("Samples", f"{samples:,}" if samples is not None else None),
        ("Accuracy", f"{100 * accuracy:.2f} %" if accuracy is not None else None),
        ("Seed", str(seed) if seed is not None else None),
        ("Held-out split", held_out(record)),
        ("Schema version", str(record.schema_version)),
    ]
    timings = [(as_text(k), as_float(v)) for k, v in record.timings_s.items()]
    timings = [(k, v) for k, v in timings if v is not None]
    total = next((v for k, v in timings if k == "total"), None)
    stages = [(k, v) for k, v in timings if k != "total"]
    longest = max([v for _, v in stages] + [total or 0.0, 1e-9])
    versions = sorted((as_text(k), as_text(v)) for k, v in record.versions.items())
    rows.append(("Versions", " · ".join(f"{k} {v}" for k, v in versions) or None))
    config = record.config
    cost = mapping(record.cost_w)
    forwards = mapping(record.forwards)
    w = as_float(mapping(record.w_s).get("seconds"))
    parts = {stage: [(k, as_float(cost.get(k))) for k in cost if k.startswith(stage + ".")]
             for stage in ("layout", "patches")}

    def row(stage: str, seconds: float | None, label: str | None = None) -> dict:
        return {"stage": label or stage, "seconds": seconds, "width": 100.0 * (seconds or 0.0) / longest,
                "w": as_float(cost.get(stage)), "forwards": as_int(forwards.get(stage))}

    timed = []
    for k, v in stages:
        timed.append(row(k, v))
        timed += [row(p, c * w if c is not None and w else None, "· " + p.split(".", 1)[1])
                  for p, c in parts.get(k, ())]
    return {
        "rows": rows,
        "timings": timed,
        "w_seconds": w,
        "total_time": total,
        "total_w": as_float(cost.get("total")),
        "config": json.dumps(config, indent=2, sort_keys=True, default=str) if config else "",
    }


def suite(manifest: Manifest) -> dict | None:
    """{"dir", "check_command"} when a suite was saved, else None."""
    if not (manifest.suite_dir or manifest.check_command):
        return None
    return {"dir": manifest.suite_dir or "", "check_command": manifest.check_command or ""}


def held_out(record: RunRecord) -> str | None:
    """The recorded selection/confirmation split (`config.split`) in a few words, else None.

    A part given as a mapping with `n_images` is said as its image count; per-class counts and the
    rule's wording stay in the configuration shown under the Run section.
    """
    split = record.config.get("split")
    if isinstance(split, Mapping) and split:
        parts = []
        for key, value in split.items():
            if key == "rule":
                continue
            if isinstance(value, Mapping):
                count = as_int(value.get("n_images"))
                if count is None:
                    continue
                value = f"{count:,} images"
            elif isinstance(value, (list, tuple)):
                value = f"{len(value):,} images"
            parts.append(f"{as_text(key)} {as_text(value)}")
        return " · ".join(parts) or None
    text = as_text(split) if isinstance(split, (str, int, float)) and not isinstance(split, bool) else ""
    return text or None
