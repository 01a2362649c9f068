"""A `Manifest` from the plain dict a caller may pass as `report_data` (shape: `report.writer`).

Pictures are optional on a page: a value that is missing or of the wrong type becomes None (or
is left out), and the page names the gap, where a run record would raise.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..artifacts.manifest import AtlasCell, AtlasPictures, Example, Manifest, PairPictures
from ._values import as_float, as_int, as_text, cell as as_cell, mapping, sequence


def _path(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _paths(value: Any) -> tuple[str, ...]:
    return tuple(p for p in (_path(v) for v in sequence(value)) if p)


def _by_cell(entries: Any) -> dict:
    out: dict = {}
    for entry in sequence(entries):
        entry = mapping(entry)
        key = as_cell(entry.get("cell"))
        if key is not None and key not in out:
            out[key] = _paths(entry.get("exemplars"))
    return out


def _atlas(raw: Mapping) -> AtlasPictures | None:
    size = as_int(raw.get("grid_size"))
    if size is None or size <= 0:
        return None
    cells = []
    for entry in sequence(raw.get("cells")):
        entry = mapping(entry)
        ij = as_cell(entry.get("cell"))
        if ij is None or not (0 <= ij[0] < size and 0 <= ij[1] < size):
            continue
        classes = {as_text(k): as_int(v) or 0 for k, v in mapping(entry.get("classes")).items()}
        attribution = {as_text(k): v for k, v in ((k, as_float(v)) for k, v in mapping(entry.get("attribution")).items())
                       if v is not None}
        cells.append(AtlasCell(ij, as_int(entry.get("count")) or 0, classes, attribution,
                               _paths(entry.get("exemplars")), _path(entry.get("icon"))))
    return AtlasPictures(size, _path(raw.get("image")), _path(raw.get("grid_image")), _path(raw.get("icon_image")),
                         tuple(cells))


def _pair(raw: Mapping) -> PairPictures:
    examples = tuple(Example(as_int(m.get("id")), _path(m.get("image")), _path(m.get("heatmap")), as_float(m.get("p_b")))
                     for m in map(mapping, sequence(raw.get("misclassified"))))
    return PairPictures(as_text(raw.get("a")), as_text(raw.get("b")), _path(raw.get("filtered_a")),
                        _path(raw.get("filtered_b")), _path(raw.get("comparison")), _by_cell(raw.get("cells")),
                        _by_cell(raw.get("findings")), examples,
                        tuple(as_text(n) for n in sequence(raw.get("notes")) if n))


def manifest(report_data: Manifest | Mapping | None) -> Manifest:
    """`report_data` as a Manifest (a Manifest is returned as it is)."""
    if isinstance(report_data, Manifest):
        return report_data
    raw = mapping(report_data)
    suite = mapping(raw.get("suite"))
    atlases = [a for a in (_atlas(mapping(x)) for x in sequence(raw.get("atlases"))) if a is not None]
    return Manifest(
        title=as_text(raw.get("title")) or "debugatlas report", model=as_text(raw.get("model")) or None,
        data=as_text(raw.get("data")) or None, score_description=as_text(raw.get("score_description")) or None,
        icon_atlas=_path(raw.get("icon_atlas")), atlases=tuple(atlases),
        pairs=tuple(_pair(mapping(p)) for p in sequence(raw.get("pairs"))),
        suite_dir=as_text(suite.get("dir")) or None, check_command=as_text(suite.get("check_command")) or None,
    )
