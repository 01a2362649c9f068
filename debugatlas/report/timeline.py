"""The run timeline: one offline `index.html` beside the `epoch_<n>/` reports of a training run.

Per confused pair it plots, over the analysed epochs, how many images of A the model took for B
and the flip rate of the best confirmed finding (with the best patch of any verdict, dashed), so a
reader sees *when* the model picked up a shortcut; a table links each epoch's report.

It reads each epoch's run record (`artifacts.record`, `pair_outcomes`): its confirmed findings and
their margins over the controls by the record's own rules. Any rate may be `None` (no image of A
was classified correctly, so nothing could flip): a missing value is a gap in the plot and "—" in
the table, never a zero. An epoch whose analysis failed inside training (`failed_entry`) is listed as
failed, with its one-line cause and hint, and is a gap in every plot.

The page has no script: a Content-Security-Policy meta tag allows inline styles and images of the
page's own origin and `file:` only; every class name and path is escaped (Jinja2 autoescape).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts.record import RunRecord, finite

__all__ = ["PairOutcome", "pair_outcomes", "epoch_entry", "failed_entry", "render_timeline", "write_timeline"]

CSP = "; ".join(["default-src 'none'", "img-src 'self' file:", "style-src 'unsafe-inline'",
                 "base-uri 'none'", "form-action 'none'"])


@dataclass(frozen=True)
class PairOutcome:
    """What one analysis found for a pair A→B, as plain numbers (None: not measured).

    confused: images of A predicted as B. confirmed: confirmed findings. best_flip_rate: the highest
    flip rate of any patch of the pair; confirmed_flip_rate: the highest of a confirmed finding;
    confirmed_margin: that finding's flip rate minus the larger of its two controls (noise patch,
    natural crop of B).
    """

    a: str
    b: str
    confused: int | None
    confirmed: int
    best_flip_rate: float | None
    confirmed_flip_rate: float | None
    confirmed_margin: float | None

    @property
    def name(self) -> str:
        return f"{self.a}→{self.b}"




def _best(values) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def pair_outcomes(record: RunRecord) -> list[PairOutcome]:
    """One `PairOutcome` per studied pair of a run, in its order."""
    out = []
    for pair in record.pairs:
        best = pair.best_finding()
        out.append(PairOutcome(
            a=pair.a, b=pair.b, confused=pair.confused, confirmed=len(pair.confirmed),
            best_flip_rate=_best(finite(p.flip_rate) for p in pair.patches),
            confirmed_flip_rate=None if best is None else finite(best.flip_rate),
            confirmed_margin=None if best is None else best.margin,
        ))
    return out


def epoch_entry(record: RunRecord, epoch: int, href: str | None) -> dict[str, Any]:
    """The timeline's record of one analysed epoch, in plain values (kept in checkpoint state).

    href: the epoch's report relative to the timeline (e.g. "epoch_3/index.html"), or None.
    """
    return {"epoch": int(epoch), "href": href, "accuracy": finite(record.accuracy),
            "pairs": [asdict(o) for o in pair_outcomes(record)]}


def failed_entry(epoch: int, cause: str, hint: str | None = None) -> dict[str, Any]:
    """The timeline's record of an epoch whose analysis failed: no report, no pairs, the cause
    ("TypeError: ...", one line) and the hint, in plain values (kept in checkpoint state)."""
    return {"epoch": int(epoch), "href": None, "accuracy": None, "pairs": [], "failed": str(cause),
            "hint": None if hint is None else str(hint)}


# -- the page -------------------------------------------------------------------------------------
_W, _H, _PAD = 340, 150, 46


def _chart(epochs: list[int], values: list[float | None], top: float | None) -> dict[str, Any]:
    """Coordinates of one line over the epochs: segments broken at missing values, and points."""
    present = [v for v in values if v is not None]
    top = top if top is not None else float(max([1.0] + present))
    lo, hi = min(epochs), max(epochs)

    def xy(epoch: int, value: float) -> tuple[float, float]:
        x = _PAD + (0.5 if hi == lo else (epoch - lo) / (hi - lo)) * (_W - _PAD - 14)
        y = 10 + (1 - value / top) * (_H - 36) if top > 0 else _H - 26
        return round(x, 1), round(y, 1)

    segments, current, points = [], [], []
    for epoch, value in zip(epochs, values):
        if value is None:
            if current:
                segments.append(current)
            current = []
            continue
        point = xy(epoch, value)
        current.append(point)
        points.append({"x": point[0], "y": point[1], "epoch": epoch, "value": value})
    if current:
        segments.append(current)
    step = max(1, math.ceil(len(epochs) / 10))
    ticks = [{"x": xy(e, 0.0)[0], "label": e} for e in epochs[::step]]
    return {"ticks": ticks, "segments": [" ".join(f"{x},{y}" for x, y in s) for s in segments], "points": points, "top": top,
            "missing": len(values) - len(present)}


def _pair_views(entries: Sequence[Mapping]) -> list[dict[str, Any]]:
    order: dict[tuple[str, str], None] = {}
    for entry in entries:
        for pair in entry.get("pairs") or []:
            order.setdefault((str(pair["a"]), str(pair["b"])), None)
    epochs = [int(e["epoch"]) for e in entries]
    views = []
    for a, b in order:
        rows = []
        for entry in entries:
            match = next((p for p in entry.get("pairs") or [] if (str(p["a"]), str(p["b"])) == (a, b)), None)
            rows.append({"epoch": int(entry["epoch"]), "href": entry.get("href"), "present": match is not None,
                         "failed": entry.get("failed"),
                         **{k: (match or {}).get(k) for k in ("confused", "confirmed", "best_flip_rate",
                                                               "confirmed_flip_rate", "confirmed_margin")}})
        views.append({
            "a": a, "b": b, "rows": rows,
            "confused": _chart(epochs, [r["confused"] for r in rows], None),
            "confirmed": _chart(epochs, [r["confirmed_flip_rate"] for r in rows], 1.0),
            "best": _chart(epochs, [r["best_flip_rate"] for r in rows], 1.0),
        })
    return views


def render_timeline(entries: Sequence[Mapping], title: str = "debugatlas run") -> str:
    """The timeline page for `entries` (see `epoch_entry`), sorted by epoch, as an HTML string."""
    import jinja2

    entries = [{**e, "href": _safe_href(e.get("href")), "failed": e.get("failed") or None, "hint": e.get("hint")}
               for e in sorted(entries, key=lambda e: int(e["epoch"]))]
    env = jinja2.Environment(loader=jinja2.PackageLoader(__package__, "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "—" if v is None else f"{100 * v:.1f} %"
    env.filters["pts"] = lambda v: "—" if v is None else f"{100 * v:+.1f} pts"
    env.filters["count"] = lambda v: "—" if v is None else f"{v:,}"
    return env.get_template("timeline.html").render(
        title=title, csp=CSP, entries=entries, pairs=_pair_views(entries), width=_W, height=_H, pad=_PAD,
        epochs=[int(e["epoch"]) for e in entries], failed=sum(1 for e in entries if e["failed"]))


def _safe_href(href: Any) -> str | None:
    """A relative link inside the run folder, or None (absolute, with a scheme, or leaving it)."""
    if not isinstance(href, str) or not href or ":" in href or href.startswith(("/", "\\")):
        return None
    return None if ".." in Path(href).parts else href


def relative_href(report_dir: str | os.PathLike, timeline_dir: str | os.PathLike) -> str | None:
    """`<report_dir>/index.html` relative to the timeline's folder, or None when it is not below it."""
    rel = os.path.relpath(Path(report_dir) / "index.html", Path(timeline_dir))
    return None if rel.startswith("..") or os.path.isabs(rel) else Path(rel).as_posix()


def write_timeline(dirpath: str | os.PathLike, entries: Sequence[Mapping], title: str = "debugatlas run") -> Path:
    """Write `<dirpath>/index.html` atomically; returns its path."""
    from ..artifacts.atomic import write_text

    return write_text(Path(dirpath) / "index.html", render_timeline(entries, title))
