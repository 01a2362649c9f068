"""The run record: summary.json as typed, frozen records, and the rules every reader shares.

`RunRecord` holds one run; `PairRecord` one studied pair (a = true class, b = predicted class);
`CellRow` a ranked confusing cell; `PatchRow` one kept patch at one placement; `Finding` a
confirmed feature; `Screening` what the patch stage screened. The pipeline builds a `RunRecord`
once; `to_dict` gives summary.json's content (field order is key order, so a record loaded and
dumped again is byte-identical), `from_dict` reads it back with schema checks: another
`schema_version`, a missing field or a value of the wrong type is a `DebugAtlasError` that names
the field, never a silent gap on a page.

Schema 1 grew without renaming anything; fields added after its first release are optional on
load, with the default they stand for (each record's `_OPTIONAL`). Keys this version does not know
are kept in `extra` and written back after the known ones.

The rules that give the numbers their meaning live here and nowhere else:
- `is_confirmed`: a patch row is confirmed when its verdict is "confirmed"; a `Finding` is
  confirmed by construction (the pipeline lists only confirmed features), so a pair's confirmed
  findings are its `findings` (`PairRecord.confirmed`);
- `margin`: a rate above the stronger of its two controls (noise patch, crop of a real B);
- `rate_interval` and `gate`: the 95 % interval of a rate (the recorded one, else Wilson from the
  rate and its image count) and the interval gate that `diff` and `check` apply to two of them;
- `sentence`: the one-sentence statement of a finding (its recorded `statement`);
- `recurs_in_few`: a finding's stability too low to read it as more than one layout's.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import DebugAtlasError
from ._schema import REDO, Record as _Record

SCHEMA_VERSION = 1
CONFIRMED = "confirmed"
GATE_EPS = 1e-9  # two interval bounds closer than this count as touching
FEW_LAYOUTS = 2  # a finding found again in at most this many other layouts recurs in few


def is_confirmed(verdict: str | None) -> bool:
    """The one rule for a patch row: its held-out verdict is "confirmed"."""
    return verdict == CONFIRMED


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def margin(rate: float | None, noise: float | None, natural: float | None) -> float | None:
    """`rate` minus the stronger of the controls that were measured; None without a rate or a control."""
    rate = finite(rate)
    controls = [c for c in (finite(noise), finite(natural)) if c is not None]
    return None if rate is None or not controls else rate - max(controls)


def rate_interval(rate: float | None, n_images: int | None,
                  ci: Sequence[float] | None = None) -> tuple[float, float] | None:
    """The 95 % interval of a flip rate: `ci` when recorded, else Wilson's from `rate` and
    `n_images`, else the bare rate; None without a rate."""
    rate = finite(rate)
    if rate is None:
        return None
    if ci is not None and len(ci) == 2 and all(finite(c) is not None for c in ci):
        return float(ci[0]), float(ci[1])
    if n_images:
        from ..patches.stats import wilson_interval

        n = int(n_images)
        return wilson_interval(min(n, max(0, round(rate * n))), n)
    return rate, rate


def gate(new: tuple[float, float], reference: tuple[float, float], tolerance: float) -> str:
    """The interval gate: "above" when `new`'s lower bound exceeds `reference`'s upper bound by
    more than `tolerance`, "below" the other way round, else "within"."""
    if new[0] - reference[1] > tolerance + GATE_EPS:
        return "above"
    if reference[0] - new[1] > tolerance + GATE_EPS:
        return "below"
    return "within"


def recurs_in_few(recurred: int, of: int) -> bool:
    """Found again in at most `FEW_LAYOUTS` of `of` other layouts (and not in all of them)."""
    return recurred <= min(FEW_LAYOUTS, of - 1)


def percent(rate: float | None) -> str:
    """A rate as whole percent ("41 %"), "—" when absent."""
    rate = finite(rate)
    return "—" if rate is None else f"{100 * rate:.0f} %"


def sentence(a: str, b: str, rate: float | None, ci: Sequence[float] | None, noise: float | None,
             natural: float | None, n_images: int | None = None, placement: str | None = None) -> str:
    """E.g. "Pasting this feature on images of 2 makes the model say 3 in 41 % of them [33–49 %],
    against 2 % for noise and 9 % for a crop of a real 3 (60 held-out images, random placement).\""""
    if finite(rate) is None:
        return f"Pasting this feature on images of {a} makes the model say {b} (rate not recorded)."
    text = f"Pasting this feature on images of {a} makes the model say {b} in {percent(rate)} of them"
    if ci is not None and len(ci) == 2 and None not in (finite(ci[0]), finite(ci[1])):
        text += f" [{percent(ci[0])[:-2]}–{percent(ci[1])}]"
    controls = []
    if finite(noise) is not None:
        controls.append(f"{percent(noise)} for noise")
    if finite(natural) is not None:
        controls.append(f"{percent(natural)} for a crop of a real {b}")
    if controls:
        text += ", against " + " and ".join(controls)
    if n_images is not None and placement:
        text += f" ({n_images} held-out images, {placement} placement)"
    return text + "."


class _Rated:
    """A measured flip rate with its controls: its margin over them and its 95 % interval."""

    flip_rate: float | None
    noise_flip_rate: float | None
    natural_flip_rate: float | None
    n_images: int
    flip_rate_ci: tuple[float, float] | None

    @property
    def margin(self) -> float | None:
        return margin(self.flip_rate, self.noise_flip_rate, self.natural_flip_rate)

    @property
    def interval(self) -> tuple[float, float] | None:
        return rate_interval(self.flip_rate, self.n_images, self.flip_rate_ci)


@dataclass(frozen=True)
class CellRow(_Record):
    """A ranked confusing cell of a pair (`pairs[].confusing_cells[]`).

    cell: (i, j) of the main atlas; score: count_a x relu(attribution_b - attribution_a);
    count / count_a: samples in the cell, of them from images of A; attribution_a / _b: mean
    attribution of the cell toward A and B; exemplar_ids: dataset ids of its exemplar images;
    icon: the cell's icon file relative to the run directory, None when none was rendered.
    """

    cell: tuple[int, int]
    score: float
    count: int
    count_a: int
    attribution_a: float
    attribution_b: float
    exemplar_ids: tuple[int, ...]
    icon: str | None
    _KINDS = {"cell": "cell", "score": "num", "count": "int", "count_a": "int", "attribution_a": "num",
              "attribution_b": "num", "exemplar_ids": "ints", "icon": "str?"}


@dataclass(frozen=True)
class PatchRow(_Rated, _Record):
    """One kept patch at one placement, measured on the held-out half (`pairs[].patches[]`).

    Rates are shares of the n_images held-out images of A; None where nothing could be measured.
    verdict / flip_rate_ci / p_value: None where the rows were not judged.
    """

    id: str
    cell: tuple[int, int] | None
    file: str
    target: str
    size_frac: float | None
    placement: str
    n_images: int
    flip_rate: float | None
    noise_flip_rate: float | None
    natural_flip_rate: float | None
    source: str
    resize: bool
    best_flip_rate: float | None
    p_b_before: float | None
    p_b_after: float | None
    verdict: str | None = None
    flip_rate_ci: tuple[float, float] | None = None
    p_value: float | None = None
    _KINDS = {"id": "str", "cell": "cell?", "file": "str", "target": "str", "size_frac": "num?",
              "placement": "str", "n_images": "int", "flip_rate": "num?", "noise_flip_rate": "num?",
              "natural_flip_rate": "num?", "source": "str", "resize": "bool", "best_flip_rate": "num?",
              "p_b_before": "num?", "p_b_after": "num?", "verdict": "str?", "flip_rate_ci": "ci?",
              "p_value": "num?"}
    _OPTIONAL = ("verdict", "flip_rate_ci", "p_value")

    @property
    def confirmed(self) -> bool:
        return is_confirmed(self.verdict)


@dataclass(frozen=True)
class FeatureCell(_Rated, _Record):
    """One confirmed cell of a feature (`pairs[].findings[].cells[]`): its representative
    confirmed patch at its placement, with the rates measured on the held-out half."""

    cell: tuple[int, int]
    patch: str
    placement: str
    n_images: int
    flip_rate: float | None
    flip_rate_ci: tuple[float, float] | None
    noise_flip_rate: float | None
    natural_flip_rate: float | None
    exemplar_ids: tuple[int, ...]
    suspected_shortcut: bool
    _KINDS = {"cell": "cell", "patch": "str", "placement": "str", "n_images": "int", "flip_rate": "num?",
              "flip_rate_ci": "ci?", "noise_flip_rate": "num?", "natural_flip_rate": "num?",
              "exemplar_ids": "ints", "suspected_shortcut": "bool"}


@dataclass(frozen=True)
class Finding(_Rated, _Record):
    """A confirmed feature of a pair (`pairs[].findings[]`), best first.

    cells: the confirmed cells that show this one feature (`pipeline.features.FEATURE_RULE`),
    its leading cell first; cell: that leading cell; patch: the id of its representative confirmed patch (also a `PatchRow`
    of the pair at `placement`), `patch_file` its PNG; statement: the sentence the run wrote
    (`sentence`); rates as in `PatchRow`; exemplar_ids: the exemplar images of all its cells, the
    leading cell's first;
    confirmed_sources: sources of all its confirmed patches; real_crops_tested: crops of real
    images from the cell measured on the held-out half; synthesized_only: no crop of a real image
    confirmed; suspected_shortcut with its `shortcut_evidence` (see `shortcut.CRITERIA`);
    stability: in how many more layouts of the same vectors it recurs (`pipeline.stability`):
    {"recurred": k, "of": K, "layouts": [...]}, None when not checked; co_occurrence: the cells
    its misclassified images of A use besides it (`pipeline.composition`), None when not counted.
    """

    cell: tuple[int, int]
    statement: str
    patch: str
    source: str
    placement: str
    n_images: int
    flip_rate: float | None
    flip_rate_ci: tuple[float, float] | None
    p_value: float | None
    noise_flip_rate: float | None
    natural_flip_rate: float | None
    exemplar_ids: tuple[int, ...]
    icon: str | None
    confirmed_sources: tuple[str, ...] | None = None
    real_crops_tested: int | None = None
    synthesized_only: bool | None = None
    suspected_shortcut: bool = False
    shortcut_evidence: dict | None = None
    patch_file: str | None = None
    cells: tuple[FeatureCell, ...] = ()
    stability: dict | None = None
    co_occurrence: dict | None = None
    _KINDS = {"cell": "cell", "statement": "str", "patch": "str", "source": "str", "placement": "str",
              "n_images": "int", "flip_rate": "num?", "flip_rate_ci": "ci?", "p_value": "num?",
              "noise_flip_rate": "num?", "natural_flip_rate": "num?", "exemplar_ids": "ints", "icon": "str?",
              "confirmed_sources": "strs?", "real_crops_tested": "int?", "synthesized_only": "bool?",
              "suspected_shortcut": "bool", "shortcut_evidence": "dict?", "patch_file": "str?",
              "cells": [FeatureCell], "stability": "dict?", "co_occurrence": "dict?"}
    _OPTIONAL = ("confirmed_sources", "real_crops_tested", "synthesized_only", "cells", "stability",
                 "co_occurrence")


@dataclass(frozen=True)
class JointRow(_Record):
    """Two of a pair's strongest patches of distinct cells measured together on the held-out
    images of A (`pairs[].composition[]`, `patches.joint.JOINT_RULE`): the rate together with its
    interval, each patch's rate alone at its position, two noise patches' rate, the adjusted p and
    the verdict ("together": the two act together, more than either alone)."""

    patches: tuple[str, ...]
    first_cell: tuple[int, int] | None
    second_cell: tuple[int, int] | None
    n_images: int
    flip_rate: float | None
    flip_rate_ci: tuple[float, float] | None
    first_alone: float | None
    second_alone: float | None
    noise_flip_rate: float | None
    p_value: float
    verdict: str
    _KINDS = {"patches": "strs", "first_cell": "cell?", "second_cell": "cell?", "n_images": "int",
              "flip_rate": "num?", "flip_rate_ci": "ci?", "first_alone": "num?", "second_alone": "num?",
              "noise_flip_rate": "num?", "p_value": "num", "verdict": "str"}

    @property
    def together(self) -> bool:
        return self.verdict == "together"


@dataclass(frozen=True)
class Screening(_Record):
    """The patch stage's screen of a pair: cells screened, its seconds, full candidates measured."""

    n_screened: int
    seconds: float
    n_candidates: int
    _KINDS = {"n_screened": "int", "seconds": "num", "n_candidates": "int"}


@dataclass(frozen=True)
class PairRecord(_Record):
    """One studied pair: a = true class, b = predicted class (names); confused: images of A
    predicted B; kind: "confused", or "near_miss" when none was and the pair was studied anyway;
    composition: its strongest patches measured two at a time (`JointRow`)."""

    a: str
    b: str
    kind: str = "confused"
    confused: int = 0
    confusing_cells: tuple[CellRow, ...] = ()
    findings: tuple[Finding, ...] = ()
    patches: tuple[PatchRow, ...] = ()
    screening: Screening | None = None
    notes: tuple[str, ...] = ()
    composition: tuple[JointRow, ...] | None = field(default=None, metadata={"omit_none": True})
    extra: dict = field(default_factory=dict, compare=False)
    _KINDS = {"a": "str", "b": "str", "kind": "str", "confused": "int", "confusing_cells": [CellRow],
              "findings": [Finding], "patches": [PatchRow], "screening": Screening, "notes": "strs",
              "composition": [JointRow]}
    _OPTIONAL = ("kind", "findings", "screening", "composition")

    @property
    def name(self) -> str:
        return f"{self.a} -> {self.b}"

    @property
    def confirmed(self) -> tuple[Finding, ...]:
        """The pair's confirmed findings (all of `findings`, see `is_confirmed`)."""
        return self.findings

    def best_finding(self) -> Finding | None:
        """The confirmed finding with the highest flip rate."""
        rated = [f for f in self.findings if finite(f.flip_rate) is not None]
        return max(rated, key=lambda f: f.flip_rate, default=None)

    def patch_row(self, finding: Finding) -> PatchRow | None:
        """The patch row a finding reports: its patch at its placement."""
        return next((p for p in self.patches if p.id == finding.patch and p.placement == finding.placement), None)


@dataclass(frozen=True)
class RunRecord(_Record):
    """One run (summary.json). The top-level fields describe the analysed layer; `config` holds
    every option of the run with its rules as text; `w_s`, `budget`, `cost_w`, `forwards`: the
    run's unit of cost W and the cost per stage in W and in forwards (None in runs without them)."""

    schema_version: int
    layer: str
    num_samples: int
    num_images: int
    accuracy: float
    classes: tuple[str, ...]
    confusion_matrix: tuple[tuple[int, ...], ...]
    pairs: tuple[PairRecord, ...]
    timings_s: dict
    w_s: dict | None = field(default=None, metadata={"omit_none": True})
    budget: dict | None = field(default=None, metadata={"omit_none": True})
    cost_w: dict | None = field(default=None, metadata={"omit_none": True})
    forwards: dict | None = field(default=None, metadata={"omit_none": True})
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False)
    _KINDS = {"schema_version": "int", "layer": "str", "num_samples": "int", "num_images": "int",
              "accuracy": "num", "classes": "strs", "confusion_matrix": "matrix", "pairs": [PairRecord],
              "timings_s": "dict", "w_s": "dict?", "budget": "dict?", "cost_w": "dict?", "forwards": "dict?",
              "config": "dict", "versions": "dict", "notes": "strs"}
    _OPTIONAL = ("w_s", "budget", "cost_w", "forwards", "notes")

    @classmethod
    def from_dict(cls, raw: Any, where: str = "") -> "RunRecord":
        found = raw.get("schema_version") if isinstance(raw, Mapping) else None
        if found != SCHEMA_VERSION:
            raise DebugAtlasError(f"The summary has schema_version {found!r}; this debugatlas reads "
                                  f"{SCHEMA_VERSION}. HINT: {REDO}.")
        return super().from_dict(raw, where)

    def pair(self, a: str, b: str) -> PairRecord | None:
        """The pair (a, b) by class names, None when the run did not study it."""
        return next((p for p in self.pairs if p.a == a and p.b == b), None)

    @property
    def grid_size(self) -> int | None:
        value = self.config.get("grid_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def seed(self) -> int | None:
        value = self.config.get("seed")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def confusion_rate(self, a: str, b: str) -> tuple[float, int] | None:
        """(share of images of A predicted B, images of A) from the confusion matrix."""
        if a not in self.classes or b not in self.classes:
            return None
        row = self.confusion_matrix[self.classes.index(a)]
        total = sum(row)
        return (row[self.classes.index(b)] / total, int(total)) if total else None

