"""Write the HTML debugging report: one offline `index.html` beside the images it shows.

Images are **relative files beside index.html**, not inlined: the caller writes them (icons/,
patches/, exemplars/, examples/, atlas PNGs) into `out_dir` and passes their paths relative to it
in `report_data`. The page references them by relative URL, so the folder can be moved, zipped or
served as a whole, and opened straight from disk (a `file://` URL). A path that is absolute, has a
URL scheme, leaves the folder or names no file is not linked; the page shows it as a labelled gap.
The CSS and the script are inlined; nothing is fetched from the network.

Safety: the template escapes every user-provided string (Jinja2 autoescape); the data for the
interactive atlas travels as JSON inside `<script type="application/json">` with `<`, `>`, `&`
written as `\\u003c`, `\\u003e`, `\\u0026`, so no value can close the element. A
Content-Security-Policy meta tag allows images from the page's own origin and `file:` only, inline
styles, and exactly one script (by its SHA-256 hash); everything else, network included, is denied.

`summary` is the run record (`artifacts.record.RunRecord`, or the dict of a summary.json, read
with its checks); every number on the page comes from it. `report_data` is the manifest of the
pictures written beside the page (`artifacts.manifest.Manifest`, as a run directory writes it), or
a dict of the same content (every key optional; a missing or empty one is named on the page as
absent, a malformed one is a labelled gap)::

    {"title", "model", "data", "seed", "score_description",
     "icon_atlas": path,          # icon atlas of the main grid (summary config["grid_size"])
     "atlases": [{"grid_size", "image": path, "grid_image": path, "icon_image": path,
                  "cells": [{"cell": [i, j], "count", "classes": {name: int},
                             "attribution": {name: float}, "exemplars": [path], "icon": path}]}],
     "pairs": [{"a", "b", "notes": [str], "filtered_a", "filtered_b", "comparison",
                "findings": [{"cell": [i, j], "exemplars": [path]}],
                "cells": [{"cell": [i, j], "exemplars": [path]}],
                "misclassified": [{"id", "image", "heatmap", "p_b"}]}],
     "suite": {"dir", "check_command"} | None}

Pairs are the record's, in its order, matched to report_data's by (a, b). A pair's ranked cells
are its `confusing_cells` with a score > 0, with the exemplar crops report_data's `cells` give
by cell (else the record's exemplar image ids). Patch rows are its `patches` (with `verdict`,
`flip_rate_ci`, `p_value`). Findings (the page opens with them) are its confirmed findings, each
with its recorded `statement` and its `patch_file`; report_data's `pairs[].findings` adds the
exemplar crops (of real images, best first), matched by `cell`; a finding without them takes
the exemplar crops of the same cell in the pair's `cells`. `kind: "near_miss"` marks a pair that was studied although no image of A was
classified as B.

Atlas images: `icon_image` (or, for the main grid, the top-level `icon_atlas`) must cover exactly
the G×G grid with cell `[i, j]` at column i (left to right) and row j (row 0 at the top), as
`render.draw_icon_atlas` draws it; it is the background of the interactive grid's "feature icons"
view, which is drawn in the same orientation. `image` (else `grid_image`) is any picture of that
atlas (a figure with title and legend is fine); it is shown in the gallery of grid sizes. A
misclassified example's `heatmap` is drawn on top of its `image`: give it transparency, or make it
a finished overlay.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from ..artifacts.atomic import write_text
from ..artifacts.manifest import Manifest
from ..artifacts.record import RunRecord
from ..artifacts.summary import as_record
from ..core.errors import DebugAtlasError
from . import _findings, _manifest, _view

__all__ = ["render_report", "write_report", "script_json"]

_STATIC = ("report.css", "report.js")


def script_json(value: Any) -> Markup:
    """`value` as JSON that is safe inside a `<script type="application/json">` element.

    `<`, `>` and `&` become JSON unicode escapes (still valid JSON, parsed back unchanged), and all
    non-ASCII is escaped, so neither `</script>` nor `<!--` nor U+2028 can appear in the text.
    """
    text = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    text = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return Markup(text)


def _static(name: str) -> str:
    text = resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")
    if "</" in text:
        raise DebugAtlasError(
            f"The report asset {name!r} contains '</', which would end its inline element early. "
            "HINT: write '<\\/' in the asset instead."
        )
    return text


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return "; ".join([
        "default-src 'none'",
        "img-src 'self' file:",
        "style-src 'unsafe-inline'",
        f"script-src 'sha256-{digest}'",
        "base-uri 'none'",
        "form-action 'none'",
    ])


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v, digits=1: "—" if v is None else f"{100 * v:.{digits}f} %"
    env.filters["num"] = lambda v: "—" if v is None else f"{v:.3g}"
    env.filters["signed"] = lambda v: "—" if v is None else f"{v:+.3g}"
    env.filters["seconds"] = lambda v: "—" if v is None else (f"{v:.2f} s" if v < 100 else f"{v:,.0f} s")
    env.filters["count"] = lambda v: "—" if v is None else f"{v:,}"
    env.filters["interval"] = lambda ci: "" if ci is None else f"[{100 * ci[0]:.0f}–{100 * ci[1]:.0f} %]"
    env.filters["pvalue"] = lambda v: "—" if v is None else ("< 0.001" if v < 0.001 else f"{v:.3f}")
    return env


def render_report(summary: RunRecord | Mapping, report_data: Manifest | Mapping | None = None,
                  out_dir: str | os.PathLike | None = None) -> str:
    """The report as an HTML string; image paths are checked against `out_dir` when given.

    `summary`: the run record, or the dict of a summary.json (read with the record's checks: a
    missing field or another schema version is a `DebugAtlasError`).
    """
    if not isinstance(summary, (RunRecord, Mapping)):
        raise DebugAtlasError(
            f"`write_report(summary={type(summary).__name__})` needs the run record. "
            "HINT: pass `AnalysisResult.record` or the dict written to summary.json."
        )
    record = as_record(summary)
    if report_data is not None and not isinstance(report_data, (Manifest, Mapping)):
        raise DebugAtlasError(
            f"`write_report(report_data={type(report_data).__name__})` needs a Manifest or a dict. "
            "HINT: pass {} when there is nothing beyond the summary to show."
        )
    shown = _manifest.manifest(report_data)
    images = _view.Images(Path(out_dir) if out_dir is not None else None)
    classes = list(record.classes)
    matrix = _view.confusion(record, classes)
    pairs = _view.pairs(record, shown, images)
    main_grid = record.grid_size
    blob = _view.atlas_blob(shown, classes, images, main_grid, _findings.atlas_marks(pairs))
    suite = _view.suite(shown)
    headline = _findings.headline(pairs)
    anchors = {(p["a"], p["b"]): p["anchor"] for p in pairs}
    if matrix is not None:
        for top in matrix["top_pairs"]:
            top["anchor"] = anchors.get((top["a"], top["b"]))

    absent = []
    if matrix is None:
        absent.append("confusion matrix (missing from the summary or not square)")
    if not pairs:
        absent.append("pairs of classes (none analysed)")
    if not blob["grids"]:
        absent.append("activation atlas (no atlas was rendered)")
    if suite is None:
        absent.append("saved patch suite and check command")

    css, script = _static("report.css"), _static("report.js")
    context = {
        "title": shown.title,
        "overview": _view.overview(record, shown),
        "classes": classes,
        "matrix": matrix,
        "pairs": pairs,
        "headline": headline,
        "held_out": _view.held_out(record),
        "atlas_grids": [g["grid_size"] for g in blob["grids"]],
        "atlas_gallery": _view.atlas_gallery(shown, images, main_grid),
        "atlas_initial": blob["initial"],
        "atlas_json": script_json(blob),
        "atlas_marked": any(g["marks"] for g in blob["grids"]),
        "score_description": shown.score_description or "",
        "suite": suite,
        "absent_parts": absent,
        "css": Markup(css),
        "script": Markup(script),
        "csp": Markup(_csp(script)),
    }
    return _environment().get_template("index.html").render(**context)


def write_report(out_dir: str | os.PathLike, summary: RunRecord | Mapping,
                 report_data: Manifest | Mapping | None = None) -> Path:
    """Render the report and write `out_dir/index.html` atomically; return its path.

    The page is rendered in full before anything is written, then written to a temporary file in
    `out_dir` and moved over `index.html`: a failure at any point leaves an earlier report intact.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = render_report(summary, report_data, out)
    target = out / "index.html"
    write_text(target, html)
    return target
