"""The run record of one run (summary.json, schema 1: `artifacts.record`), built once from the stages' records."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import json

import numpy as np

from ..artifacts.paths import icon_path, suite_patches_prefix
from ..artifacts.record import CellRow, PairRecord, RunRecord, Screening
from ..artifacts.summary import LAYOUT_SUBSTAGES, PATCH_SUBSTAGES, SCHEMA_VERSION, TIMED_STAGES, dumps, patch_rows, versions
from ..capture import ActivationSet
from ..confusion import SCORE_DESCRIPTION
from ..patches.stats import DECISION_RULE
from ..shortcut import CRITERIA
from .context import RunContext
from .cost import ForwardCost
from .records import PairFinding
from ..patches.joint import JOINT_RULE
from .composition import CO_OCCURRENCE_RULE
from .stability import RECUR_RULE


@dataclass(frozen=True)
class RunFacts:
    """What the run record says about how the run was set up, beside `AnalysisConfig`.

    layer: the layer's name in the user's model; layout_params: the layout's parameters as used;
    normalize: (mean, std) per channel or None; model_spec: "pkg.module:factory" when known;
    split: the selection/confirmation split of the images (`patches.split.Split`), recorded in
    config.split; sparse: why the grid was shrunk, when it was (also a top-level note).
    """

    layer: str
    layout_params: dict
    normalize: Any = None
    model_spec: str | None = None
    split: Any = None
    sparse: str | None = None


def _cells(finding: PairFinding, acts: ActivationSet) -> tuple[CellRow, ...]:
    cells = []
    for cell in finding.cells:
        ids = acts.image_ids[cell.exemplars].tolist() if cell.exemplars else []
        cells.append(CellRow(
            cell=tuple(cell.cell), score=float(cell.score), count=int(cell.count), count_a=int(cell.count_a),
            attribution_a=float(cell.attribution_a), attribution_b=float(cell.attribution_b),
            exemplar_ids=tuple(int(i) for i in ids),
            icon=icon_path(cell.cell) if cell.cell in finding.icons else None,
        ))
    return tuple(cells)


def _pair(index: int, finding: PairFinding, acts: ActivationSet) -> PairRecord:
    prefix = suite_patches_prefix(index)
    screening = finding.screening
    return PairRecord(
        a=finding.a_name, b=finding.b_name, kind=finding.kind, confused=int(finding.confused),
        confusing_cells=_cells(finding, acts),
        findings=tuple(replace(f, patch_file=f"{prefix}{f.patch}.png") for f in finding.findings),
        patches=patch_rows(finding.patches, prefix) if finding.patches is not None else (),
        screening=Screening.from_dict(screening, "screening") if screening else None,
        notes=tuple(finding.notes), composition=tuple(finding.composition),
    )


def build(ctx: RunContext, *, acts: ActivationSet, findings: Sequence[PairFinding], confusion: np.ndarray,
          facts: RunFacts, w: ForwardCost | None = None) -> RunRecord:
    """The run record of a finished run.

    `w`: the run's unit of cost (`cost.ForwardCost`), which gives `cost_w` (seconds per stage and
    patch sub-stage in W) beside `forwards` (images passed through the model per stage).
    """
    _, labels, preds = acts.per_image()
    normalize = facts.normalize
    config = ctx.config.to_dict()
    config.update({"seed": ctx.seed, "normalize": [list(map(float, v)) for v in normalize] if normalize else None,
                   "layout_params": facts.layout_params, "score": SCORE_DESCRIPTION, "model_spec": facts.model_spec,
                   "decision_rule": DECISION_RULE.format(alpha=ctx.config.confirm_alpha),
                   "shortcut_rule": CRITERIA, "stability_rule": RECUR_RULE,
                   "co_occurrence_rule": CO_OCCURRENCE_RULE, "joint_rule": JOINT_RULE, "sampling_rules": _sampling(acts)})
    if facts.split is not None:
        config["split"] = facts.split.to_dict(list(ctx.class_names), include_ids=False)
    timings = {k: ctx.timer.times.get(k, 0.0) for k in TIMED_STAGES}
    costed = TIMED_STAGES[:-1] + LAYOUT_SUBSTAGES + PATCH_SUBSTAGES + TIMED_STAGES[-1:]
    forwards = {k: int(ctx.timer.forwards.get(k, 0)) for k in costed if k != "total"}
    forwards["total"] = int(sum(forwards[k] for k in TIMED_STAGES[:-1]))
    cost = {}
    if w is not None:
        cut = [f"{f.a_name}->{f.b_name}" for f in findings if any(n.startswith("patch tests cut") for n in f.notes)]
        cost = {"w_s": w.to_dict(), "budget": {"budget_w": ctx.config.budget_w, "cut_pairs": cut},
                "cost_w": {k: round(w.in_w(ctx.timer.times.get(k, 0.0)), 3) for k in costed},
                "forwards": forwards}
    return RunRecord(
        schema_version=SCHEMA_VERSION, layer=facts.layer, num_samples=len(acts), num_images=int(labels.size),
        accuracy=float((labels == preds).mean()) if labels.size else 0.0, classes=tuple(ctx.class_names),
        confusion_matrix=tuple(tuple(row) for row in confusion.tolist()),
        pairs=tuple(_pair(k, f, acts) for k, f in enumerate(findings)), timings_s=timings, **cost,
        config=_json_values(config), versions=versions(), notes=(facts.sparse,) if facts.sparse else (),
    )


def _json_values(value: Any) -> Any:
    """The config as summary.json holds it (tuples as lists, NaN as None), so that the record
    equals the file it is read back from."""
    return json.loads(dumps(value))


def _sampling(acts: ActivationSet) -> dict:
    """How many vectors each sampling rule chose (uniformly random, or by attribution)."""
    rule = getattr(acts, "rule", None)
    if rule is None:
        return {"random": len(acts)}
    counts = np.bincount(rule.numpy().astype(np.int64), minlength=2)
    return {"random": int(counts[0]), "attribution": int(counts[1:].sum())}
