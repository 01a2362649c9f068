"""summary.json's content for one run (schema 1, see `artifacts.summary`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..artifacts.paths import icon_path, suite_patches_prefix
from ..artifacts.summary import PATCH_SUBSTAGES, SCHEMA_VERSION, TIMED_STAGES, patch_entries, versions
from ..capture import ActivationSet
from ..confusion import SCORE_DESCRIPTION
from ..patches.stats import DECISION_RULE
from ..shortcut import CRITERIA
from .context import RunContext
from .cost import ForwardCost
from .records import PairFinding


def _cells(finding: PairFinding, acts: ActivationSet) -> list[dict]:
    cells = []
    for cell in finding.cells:
        ids = acts.image_ids[cell.exemplars].tolist() if cell.exemplars else []
        cells.append({
            "cell": list(cell.cell), "score": float(cell.score), "count": int(cell.count),
            "count_a": int(cell.count_a), "attribution_a": float(cell.attribution_a),
            "attribution_b": float(cell.attribution_b), "exemplar_ids": [int(i) for i in ids],
            "icon": icon_path(cell.cell) if cell.cell in finding.icons else None,
        })
    return cells


def build(ctx: RunContext, *, acts: ActivationSet, findings: Sequence[PairFinding], confusion: np.ndarray,
          layout_params: dict, normalize, layer: str, model_spec: str | None = None, split=None,
          sparse: str | None = None, w: ForwardCost | None = None) -> dict:
    """The summary.json dict of a finished run.

    `layer`: the layer's name in the user's model; `w`: the run's unit of cost (`cost.ForwardCost`),
    which gives `cost_w` (seconds per stage and patch sub-stage in W) beside `forwards` (images
    passed through the model per stage); `split`: the selection/confirmation split of the images (`patches.split.Split`), recorded in
    config.split; `sparse`: why the grid was shrunk, when it was (also a top-level note).
    """
    _, labels, preds = acts.per_image()
    pairs = []
    for index, finding in enumerate(findings):
        prefix = suite_patches_prefix(index)
        pairs.append({
            "a": finding.a_name, "b": finding.b_name, "kind": finding.kind, "confused": finding.confused,
            "confusing_cells": _cells(finding, acts),
            "findings": [dict(f, patch_file=f"{prefix}{f['patch']}.png") for f in finding.findings],
            "patches": patch_entries(finding.patches, prefix) if finding.patches is not None else [],
            "screening": dict(finding.screening), "notes": list(finding.notes),
        })
    config = ctx.config.to_dict()
    config.update({"seed": ctx.seed, "normalize": [list(map(float, v)) for v in normalize] if normalize else None,
                   "layout_params": layout_params, "score": SCORE_DESCRIPTION, "model_spec": model_spec,
                   "decision_rule": DECISION_RULE.format(alpha=ctx.config.confirm_alpha),
                   "shortcut_rule": CRITERIA, "sampling_rules": _sampling(acts)})
    if split is not None:
        config["split"] = split.to_dict(list(ctx.class_names), include_ids=False)
    timings = {k: ctx.timer.times.get(k, 0.0) for k in TIMED_STAGES}
    costed = TIMED_STAGES[:-1] + PATCH_SUBSTAGES + TIMED_STAGES[-1:]
    forwards = {k: int(ctx.timer.forwards.get(k, 0)) for k in costed if k != "total"}
    forwards["total"] = int(sum(forwards[k] for k in TIMED_STAGES[:-1]))
    cost = {}
    if w is not None:
        cut = [f"{f.a_name}->{f.b_name}" for f in findings if any(n.startswith("patch tests cut") for n in f.notes)]
        cost = {"w_s": w.to_dict(), "budget": {"budget_w": ctx.config.budget_w, "cut_pairs": cut},
                "cost_w": {k: round(w.in_w(ctx.timer.times.get(k, 0.0)), 3) for k in costed},
                "forwards": forwards}
    return {
        "schema_version": SCHEMA_VERSION, "layer": layer, "num_samples": len(acts),
        "num_images": int(labels.size), "accuracy": float((labels == preds).mean()) if labels.size else 0.0,
        "classes": list(ctx.class_names), "confusion_matrix": confusion.tolist(), "pairs": pairs,
        "timings_s": timings, **cost, "config": config, "versions": versions(),
        "notes": [sparse] if sparse else [],
    }


def _sampling(acts: ActivationSet) -> dict:
    """How many vectors each sampling rule chose (uniformly random, or by attribution)."""
    rule = getattr(acts, "rule", None)
    if rule is None:
        return {"random": len(acts)}
    counts = np.bincount(rule.numpy().astype(np.int64), minlength=2)
    return {"random": int(counts[0]), "attribution": int(counts[1:].sum())}
