"""Composition: the cells a finding's misclassified images use besides it.

An atlas samples one vector per position and treats every cell alone, so a confusion that needs
two features together shows as two weak findings, or as none. Guided sampling takes several
positions per image, so the images themselves say which cells come together: for a finding of the
pair A -> B, take the images of A that the model calls B and that hold a sample in one of the
finding's cells; every other valid cell their samples fall in *co-occurs* with it. The same count
over the images of A that the model gets right and that hold the finding is the comparison: a cell
that the misclassified images share far more often than the correctly classified ones is a
candidate partner of the feature (`findings[].co_occurrence`, `CO_OCCURRENCE_RULE`).

That count measures no patch: it says where to look. `joint_tests` measures: the pair's strongest
kept patches of distinct cells (`joint_patches`, in the selection half's order, confirmed or not:
two halves that flip only together are confirmed neither alone) are pasted two at a time on the
held-out images of A, against each alone and two noise patches (`patches.joint.JOINT_RULE`), the
family of the correction being every pair of patches tested in the run.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..artifacts.record import Finding, JointRow
from ..atlas import Atlas
from ..capture import ActivationSet
from ..patches.joint import judge_all, measure_pairs
from .context import RunContext
from .records import PairPlan, PairTest

LISTED = 3  # co-occurring cells kept per finding
MIN_IMAGES = 2  # a cell listed co-occurs in at least this many misclassified images
CO_OCCURRENCE_RULE = (
    f"a cell co-occurs with a finding when samples of at least {MIN_IMAGES} of the images of A the model calls B "
    "that hold a sample in one of the finding's cells fall in it; listed by those images, at most "
    f"{LISTED}, each with the share of the same among the images of A the model gets right that hold the finding"
)


def annotate(*, acts: ActivationSet, atlas: Atlas, plans: tuple[PairPlan, ...],
             found: list[tuple[Finding, ...]]) -> list[tuple[Finding, ...]]:
    """Every finding of `found` (one tuple per pair of `plans`) with its `co_occurrence`."""
    image_cells, per_image = _image_cells(acts, atlas), acts.per_image()
    return [tuple(replace(f, co_occurrence=co_occurrence(f, plan.a, plan.b, image_cells, per_image, atlas.grid_size,
                                                         pair))
                  for f in pair) for plan, pair in zip(plans, found)]


def _image_cells(acts: ActivationSet, atlas: Atlas) -> np.ndarray:
    """[M, 2] int64 unique (image id, flat cell) of the samples in valid cells of `atlas`."""
    g = atlas.grid_size
    flat = atlas.cells[:, 0].astype(np.int64) * g + atlas.cells[:, 1]
    keep = atlas.valid.ravel()[flat]
    ids = acts.image_ids.numpy()[atlas.sample_index[keep]]
    return np.unique(np.stack([ids, flat[keep]], axis=1), axis=0) if keep.any() else np.zeros((0, 2), np.int64)


def co_occurrence(finding: Finding, a: int, b: int, image_cells: np.ndarray,
                  per_image: tuple[np.ndarray, np.ndarray, np.ndarray], grid_size: int,
                  pair: tuple[Finding, ...] = ()) -> dict:
    """`findings[].co_occurrence` of one finding of the pair (a, b): {"images": the images of A called
    B that hold it, "images_correct": those of A called A that hold it, "cells": [{"cell", "images",
    "share", "share_correct", "finding"}]}; "finding" is the 1-based rank of the pair's finding that
    holds the cell, None when none does. `image_cells`: `_image_cells` of the run's atlas;
    `per_image`: `ActivationSet.per_image()` of its samples."""
    g = int(grid_size)
    own = {int(i) * g + int(j) for i, j in ([m.cell for m in finding.cells] or [finding.cell])}
    uid, labels, preds = per_image
    with_feature = np.unique(image_cells[np.isin(image_cells[:, 1], list(own)), 0])
    at = np.searchsorted(uid, with_feature)
    groups = {}
    for name, predicted in (("mis", b), ("ok", a)):
        chosen = with_feature[(labels[at] == a) & (preds[at] == predicted)]
        rows = image_cells[np.isin(image_cells[:, 0], chosen) & ~np.isin(image_cells[:, 1], list(own))]
        cells, counts = np.unique(rows[:, 1], return_counts=True)
        groups[name] = (len(chosen), dict(zip(cells.tolist(), counts.tolist())))
    (n_mis, mis), (n_ok, ok) = groups["mis"], groups["ok"]
    holder = {int(i) * g + int(j): k + 1 for k, f in enumerate(pair) if f is not finding
              for i, j in ([m.cell for m in f.cells] or [f.cell])}
    ranked = sorted((c for c, n in mis.items() if n >= MIN_IMAGES),
                    key=lambda c: (-mis[c], ok.get(c, 0) / max(n_ok, 1), c))[:LISTED]
    return {"images": int(n_mis), "images_correct": int(n_ok),
            "cells": [{"cell": [c // g, c % g], "images": int(mis[c]), "share": round(mis[c] / n_mis, 4),
                       "share_correct": round(ok.get(c, 0) / n_ok, 4) if n_ok else None,
                       "finding": holder.get(c)} for c in ranked]}


def joint_tests(ctx: RunContext, *, plans: tuple[PairPlan, ...], tested: list[PairTest]) -> list[tuple[JointRow, ...]]:
    """Per pair of `plans`, its strongest kept patches of distinct cells measured two at a time on
    the pair's held-out images (see the module docstring); () where the pair has fewer than two."""
    from .patch_stage import choosing_positions, pair_experiment

    cfg = ctx.config
    measured, owner = [], []
    for k, (plan, test) in enumerate(zip(plans, tested)):
        if cfg.joint_patches < 2 or test.suite is None:
            continue
        firsts = {}
        for patch in test.suite.patches:  # the selection half's order
            if patch.cell is not None and len(firsts) < cfg.joint_patches:
                firsts.setdefault(tuple(patch.cell), patch)
        ids = test.suite.metadata.get("confirmation_image_ids") or []
        if len(firsts) < 2 or not ids:
            continue
        experiment = pair_experiment(ctx, plan, sizes=tuple(test.suite.sizes[:1]) or cfg.patch_sizes[:1],
                                     placements=("random",), n_random=choosing_positions(cfg.n_random),
                                     precision="float32")
        pairs = measure_pairs(ctx.model, ctx.images(np.asarray(ids, dtype=np.int64)), list(firsts.values()), experiment)
        measured += pairs
        owner += [k] * len(pairs)
    out: list[list[JointRow]] = [[] for _ in plans]
    for k, row in zip(owner, judge_all(measured, alpha=cfg.confirm_alpha)):
        out[k].append(row)
    return [tuple(rows) for rows in out]
