"""The Findings section and the verdict of every patch row, as plain values for the template.

A *finding* is a confirmed feature of a pair (summary.json `pairs[].findings[]`); a patch row's
`verdict` is "confirmed", "natural" or "not_confirmed" (summary.json `pairs[].patches[]`). Values
that are missing or malformed become None and are shown as such; nothing here raises on bad data.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._values import as_float as _num, cell as _cell_key, mapping as _mapping, sequence as _sequence

VERDICTS = {
    "confirmed": ("confirmed", "beats both controls on held-out images, corrected for the patches tested there"),
    "natural": ("natural", "no better than a crop of a real image of the target class"),
    "not_confirmed": ("not confirmed", "does not beat both controls"),
}
MAX_FINDING_EXEMPLARS = 6


def interval(value: Any) -> tuple[float, float] | None:
    """`[lo, hi]` as two finite rates with lo <= hi, else None."""
    items = _sequence(value)
    if len(items) != 2:
        return None
    lo, hi = _num(items[0]), _num(items[1])
    return None if lo is None or hi is None or lo > hi else (lo, hi)


def verdict(value: Any) -> dict | None:
    """{"key", "label", "meaning"} for a known verdict, None when the row carries none."""
    key = value if isinstance(value, str) else None
    if key is None:
        return None
    label, meaning = VERDICTS.get(key, (key.replace("_", " "), "verdict as recorded"))
    return {"key": key if key in VERDICTS else "other", "label": label, "meaning": meaning}


def percent(rate: float | None) -> str:
    return "—" if rate is None else f"{100 * rate:.0f} %"


def statement(a: str, b: str, flip: float | None, ci: tuple[float, float] | None,
              noise: float | None, natural: float | None) -> str:
    """The one-sentence finding, written from the numbers when the summary gives no `statement`."""
    if flip is None:
        return f"Pasting this feature on images of {a} makes the model say {b} (rate not recorded)."
    text = f"Pasting this feature on images of {a} makes the model say {b} in {percent(flip)} of them"
    if ci is not None:
        text += f" [{100 * ci[0]:.0f}–{100 * ci[1]:.0f} %]"
    controls = []
    if noise is not None:
        controls.append(f"{percent(noise)} for noise")
    if natural is not None:
        controls.append(f"{percent(natural)} for a crop of a real {b}")
    return text + (", against " + " and ".join(controls) if controls else "") + "."


def findings(names: tuple[str, str], sm: Mapping, rd: Mapping, images, *, cell_exemplars: Mapping,
             patches_by_id: Mapping) -> list[dict]:
    """The confirmed findings of one pair, best first, with the images the page shows.

    `sm` is the pair in summary.json, `rd` the pair in report_data (its `findings` give exemplar
    crops and the patch image per cell); `cell_exemplars` maps a cell to the exemplar crops of the
    ranked-cells table, used when report_data has none for the finding; `patches_by_id` maps a
    patch id to its summary row (for the patch image when report_data names none).
    """
    a, b = names
    extra = {}
    for raw in _sequence(rd.get("findings")):
        raw = _mapping(raw)
        key = _cell_key(raw.get("cell"))
        if key is not None:
            extra.setdefault(key, raw)
    out = []
    for raw in _sequence(sm.get("findings")):
        raw = _mapping(raw)
        if raw.get("verdict") not in (None, "confirmed"):
            continue
        key = _cell_key(raw.get("cell"))
        more = extra.get(key, {}) if key is not None else {}
        flip, ci = _num(raw.get("flip_rate")), interval(raw.get("flip_rate_ci"))
        noise, natural = _num(raw.get("noise_flip_rate")), _num(raw.get("natural_flip_rate"))
        patch_ref = raw.get("patch")
        patch_row = _mapping(patch_ref) if isinstance(patch_ref, Mapping) else _mapping(
            patches_by_id.get(str(patch_ref))) if patch_ref is not None else {}
        crops = [images(p) for p in _sequence(more.get("exemplars"))[:MAX_FINDING_EXEMPLARS]]
        crops = [c for c in crops if c] or list(cell_exemplars.get(key, []))[:MAX_FINDING_EXEMPLARS]
        ids = [int(i) for i in (_num(v) for v in _sequence(raw.get("exemplar_ids"))) if i is not None]
        text = raw.get("statement")
        out.append({
            "cell": f"({key[0]}, {key[1]})" if key else "—", "key": key,
            "statement": text if isinstance(text, str) and text.strip()
            else statement(a, b, flip, ci, noise, natural),
            "flip_rate": flip, "ci": ci, "noise": noise, "natural": natural,
            "patch_id": "" if patch_ref is None or isinstance(patch_ref, Mapping) else str(patch_ref),
            "patch_image": images(more.get("patch_image")) or images(patch_row.get("file")),
            "icon": images(raw.get("icon")),
            "exemplars": crops,
            "exemplar_ids": ids[:MAX_FINDING_EXEMPLARS],
            "suspected_shortcut": raw.get("suspected_shortcut") is True,
            "synthesized_only": raw.get("synthesized_only") is True,
            "real_crops_tested": _num(raw.get("real_crops_tested")),
            "evidence": _evidence(raw.get("shortcut_evidence")),
            "gauge": gauge(flip, ci, noise, natural),
        })
    return out


def _evidence(raw: Any) -> dict | None:
    """The numbers behind a suspected-shortcut flag (`shortcut_evidence`), None when none is usable."""
    raw = _mapping(raw)
    keys = ("exemplar_b_share", "field_fraction", "purity", "neighbour_purity")
    values = {k: _num(raw.get(k)) for k in keys}
    return values if any(v is not None for v in values.values()) else None


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
    return [(f["key"], f"{p['a']} → {p['b']}") for p in pairs for f in p["findings"] if f["key"]]


def headline(pairs: Sequence[Mapping]) -> dict:
    """What the Findings section says first: counts, and the suspected shortcuts of every pair."""
    confirmed = sum(len(p["findings"]) for p in pairs)
    with_findings = sum(1 for p in pairs if p["findings"])
    suspects = [dict(f, a=p["a"], b=p["b"], anchor=p["anchor"])
                for p in pairs for f in p["findings"] if f["suspected_shortcut"]]
    return {"confirmed": confirmed, "pairs_with_findings": with_findings, "pairs": len(pairs),
            "tested": sum(len(p["patch_entries"]) for p in pairs),
            "near_misses": sum(1 for p in pairs if p["near_miss"]), "suspects": suspects}
