"""The Findings section and the verdict of every patch row, as plain values for the template.

A *finding* is a confirmed feature of a pair (`artifacts.record.Finding`, the pair's `confirmed`);
a patch row's `verdict` is "confirmed", "natural" or "not_confirmed" (`PatchRow.verdict`). Numbers
and sentences come from the run record; report_data adds the pictures, matched by cell.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..artifacts.record import PairRecord, recurs_in_few
from ._values import as_float as _num, as_int as _int, mapping as _mapping, sequence as _sequence

VERDICTS = {
    "confirmed": ("confirmed", "beats both controls on held-out images, corrected for the patches tested there"),
    "natural": ("natural", "no better than a crop of a real image of the target class"),
    "not_confirmed": ("not confirmed", "does not beat both controls"),
}
MAX_FINDING_EXEMPLARS = 6
ONE_PLACE = 0.8  # a shortcut whose densest spot holds this share of its samples "sits at one place"


def verdict(value: Any) -> dict | None:
    """{"key", "label", "meaning"} for a known verdict, None when the row carries none."""
    key = value if isinstance(value, str) else None
    if key is None:
        return None
    label, meaning = VERDICTS.get(key, (key.replace("_", " "), "verdict as recorded"))
    return {"key": key if key in VERDICTS else "other", "label": label, "meaning": meaning}


def findings(pair: PairRecord, pictures: Mapping, images, *, cell_exemplars: Mapping,
             classes: Sequence[str] = ()) -> list[dict]:
    """The confirmed findings of one pair, best first, with the images the page shows.

    `pictures` maps a cell to the exemplar crops written for that finding (crops of real images,
    best first); `cell_exemplars` maps a cell to the exemplar crops of the ranked-cells table,
    used when none were written for the finding. The patch image is the finding's `patch_file`.
    `classes`: the run's class names, to name the other class in a shortcut's evidence.
    """
    out = []
    for f in pair.confirmed:
        row = pair.patch_row(f)
        crops = [images(p) for p in pictures.get(f.cell, ())[:MAX_FINDING_EXEMPLARS]]
        crops = [c for c in crops if c] or list(cell_exemplars.get(f.cell, []))[:MAX_FINDING_EXEMPLARS]
        flip, noise, natural = _num(f.flip_rate), _num(f.noise_flip_rate), _num(f.natural_flip_rate)
        out.append({
            "cell": f"({f.cell[0]}, {f.cell[1]})", "key": f.cell, "statement": f.statement,
            "keys": [m.cell for m in f.cells] or [f.cell],
            "feature_cells": [f"({m.cell[0]}, {m.cell[1]})" for m in f.cells] if len(f.cells) > 1 else [],
            "flip_rate": flip, "ci": f.flip_rate_ci, "noise": noise, "natural": natural,
            "patch_id": f.patch,
            "patch_image": images(f.patch_file) or (images(row.file) if row is not None else None),
            "icon": images(f.icon),
            "exemplars": crops,
            "exemplar_ids": list(f.exemplar_ids[:MAX_FINDING_EXEMPLARS]),
            "suspected_shortcut": f.suspected_shortcut,
            "synthesized_only": f.synthesized_only is True,
            "real_crops_tested": f.real_crops_tested,
            "evidence": _evidence(f.shortcut_evidence, classes),
            "stability": _stability(f.stability),
            "co_occurring": _co_occurring(f.co_occurrence, pair.confused),
            "gauge": gauge(flip, f.flip_rate_ci, noise, natural),
        })
    return out


def _evidence(raw: Any, classes: Sequence[str] = ()) -> dict | None:
    """The numbers behind a suspected-shortcut flag (`shortcut.ShortcutEvidence.to_dict`) as the page
    says them, with the map of where the feature sits; None when none is usable."""
    raw = _mapping(raw)
    if not raw:
        return None
    other = _int(raw.get("other_class"))
    real = _mapping(raw.get("real_crop"))
    ci = _sequence(real.get("flip_rate_ci"))
    return {
        "b_share": _num(raw.get("exemplar_b_share")),
        "real_beats_noise": _int(raw.get("real_beats_noise")), "real_confirmed": _int(raw.get("real_confirmed")),
        "real_tested": _int(raw.get("real_tested")),
        "real": {"patch": real.get("patch"), "flip": _num(real.get("flip_rate")), "n": _int(real.get("n_images")),
                 "ci": (_num(ci[0]), _num(ci[1])) if len(ci) == 2 and None not in (_num(ci[0]), _num(ci[1])) else None,
                 "noise": _num(real.get("noise_flip_rate")), "natural": _num(real.get("natural_flip_rate")),
                 "confirmed": real.get("verdict") == "confirmed"} if real else None,
        "images_b": _int(raw.get("images_b")), "n_images_b": _int(raw.get("n_images_b")),
        "other": None if other is None else (classes[other] if 0 <= other < len(classes) else str(other)),
        "other_images": _int(raw.get("other_images")), "n_images_other": _int(raw.get("n_images_other")),
        "enrichment": _num(raw.get("enrichment")), "spot": _num(raw.get("spot")),
        "one_place": (_num(raw.get("spot")) or 0.0) >= ONE_PLACE,
        "map": position_map(raw.get("positions")),
    }


def _stability(raw: Any) -> dict | None:
    """{"recurred", "of", "few"} from `findings[].stability`; None when it was not checked."""
    raw = _mapping(raw)
    recurred, of = _int(raw.get("recurred")), _int(raw.get("of"))
    if recurred is None or not of:
        return None
    return {"recurred": recurred, "of": of, "few": recurs_in_few(recurred, of)}


def _co_occurring(raw: Any, confused: int = 0) -> dict | None:
    """{"images", "images_correct", "confused", "cells": [{"cell", "images", "share", "share_correct",
    "finding"}]} (confused: the pair's images of A called B)
    from `findings[].co_occurrence`, the cells as "(i, j)"; None when it was not counted."""
    raw = _mapping(raw)
    if _int(raw.get("images")) is None:
        return None
    cells = []
    for c in _sequence(raw.get("cells")):
        c = _mapping(c)
        at = _sequence(c.get("cell"))
        if len(at) != 2 or _int(c.get("images")) is None:
            continue
        cells.append({"cell": f"({_int(at[0])}, {_int(at[1])})", "images": _int(c.get("images")),
                      "share": _num(c.get("share")), "share_correct": _num(c.get("share_correct")),
                      "finding": _int(c.get("finding"))})
    return {"images": _int(raw.get("images")), "images_correct": _int(raw.get("images_correct")),
            "confused": _int(confused) or 0, "cells": cells}


def position_map(raw: Any) -> dict | None:
    """[H][W] sample counts as the squares of a small heat map: {"h", "w", "squares": [(x, y, shade)]},
    shade in (0, 1] relative to the busiest position; None when there is nothing to draw."""
    rows = [[_int(v) or 0 for v in _sequence(r)] for r in _sequence(raw)]
    if not rows or not rows[0] or any(len(r) != len(rows[0]) for r in rows):
        return None
    top = max(max(r) for r in rows)
    if top <= 0:
        return None
    squares = [(x, y, round(v / top, 3)) for y, r in enumerate(rows) for x, v in enumerate(r) if v > 0]
    return {"h": len(rows), "w": len(rows[0]), "squares": squares}


def gauge(flip: float | None, ci: tuple[float, float] | None, noise: float | None,
          natural: float | None) -> dict:
    """Percent positions on a 0–100 % track: the rate, its interval and both controls."""
    def pos(v: float | None) -> float | None:
        return None if v is None else round(100.0 * min(max(v, 0.0), 1.0), 1)

    lo, hi = (pos(ci[0]), pos(ci[1])) if ci else (None, None)
    return {"flip": pos(flip), "lo": lo, "width": None if lo is None else round(hi - lo, 1),
            "noise": pos(noise), "natural": pos(natural)}


def verdict_counts(rows: Sequence[Mapping]) -> list[tuple[str, int]]:
    """(label, number of rows) per verdict present, confirmed first; rows without one as 'no verdict'."""
    counts: dict[str, int] = {}
    for row in rows:
        v = row.get("verdict")
        label = v["label"] if v else "no verdict"
        counts[label] = counts.get(label, 0) + 1
    order = [label for label, _ in VERDICTS.values()]
    return sorted(counts.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))


def atlas_marks(pairs: Sequence[Mapping]) -> list[tuple[tuple[int, int], str]]:
    """(cell, "A → B") for every confirmed finding, to outline on the interactive atlas."""
    return [(key, f"{p['a']} → {p['b']}") for p in pairs for f in p["findings"] for key in f["keys"]]


def headline(pairs: Sequence[Mapping]) -> dict:
    """What the Findings section says first: counts, and the suspected shortcuts of every pair."""
    confirmed = sum(len(p["findings"]) for p in pairs)
    with_findings = sum(1 for p in pairs if p["findings"])
    suspects = [dict(f, a=p["a"], b=p["b"], anchor=p["anchor"])
                for p in pairs for f in p["findings"] if f["suspected_shortcut"]]
    return {"confirmed": confirmed, "pairs_with_findings": with_findings, "pairs": len(pairs),
            "tested": sum(len(p["patch_entries"]) for p in pairs),
            "near_misses": sum(1 for p in pairs if p["near_miss"]), "suspects": suspects}
