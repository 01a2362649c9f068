"""summary.json's content for one run (schema 1, see `artifacts.summary`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..artifacts.paths import icon_path, suite_patches_prefix
from ..artifacts.summary import SCHEMA_VERSION, TIMED_STAGES, patch_entries, versions
from ..capture import ActivationSet
from ..confusion import SCORE_DESCRIPTION
from .context import RunContext
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
          layout_params: dict, normalize, model_spec: str | None = None) -> dict:
    """The summary.json dict of a finished run."""
    _, labels, preds = acts.per_image()
    pairs = []
    for index, finding in enumerate(findings):
        pairs.append({
            "a": finding.a_name, "b": finding.b_name, "kind": finding.kind, "confused": finding.confused,
            "confusing_cells": _cells(finding, acts),
            "patches": patch_entries(finding.patches, suite_patches_prefix(index)) if finding.patches is not None else [],
            "notes": list(finding.notes),
        })
    config = ctx.config.to_dict()
    config.update({"seed": ctx.seed, "normalize": [list(map(float, v)) for v in normalize] if normalize else None,
                   "layout_params": layout_params, "score": SCORE_DESCRIPTION, "model_spec": model_spec})
    timings = {k: ctx.timer.times.get(k, 0.0) for k in TIMED_STAGES}
    return {
        "schema_version": SCHEMA_VERSION, "layer": ctx.layer, "num_samples": len(acts),
        "num_images": int(labels.size), "accuracy": float((labels == preds).mean()) if labels.size else 0.0,
        "classes": list(ctx.class_names), "confusion_matrix": confusion.tolist(), "pairs": pairs,
        "timings_s": timings, "config": config, "versions": versions(),
    }
