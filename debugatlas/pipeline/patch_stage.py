"""The patch stage: candidates from atlas cells, measured against controls, kept as one suite per pair."""
from __future__ import annotations

import numpy as np
import torch

from ..atlas import Atlas
from ..capture import ActivationSet
from ..patches import PLACEMENTS, PatchSuite, build_suite, candidate_patches
from .context import RunContext
from .records import Cell, PairPlan, PairViews, Rendered


def candidate_cells(ctx: RunContext, *, plan: PairPlan, views: PairViews, atlas: Atlas) -> list[Cell]:
    """Cells to try as patches for (a, b): the confusing cells, then the cells with the most
    attribution toward b over a among all their samples, alternating, up to `patch_cells`.

    The second list matters: a feature planted in images of b (a trigger) is not found in images
    of a, yet pasting it is exactly what flips a to b.
    """
    confusing = [c.cell for c in views.cells]
    push = atlas.mean_attribution[..., plan.b] - atlas.mean_attribution[..., plan.a]
    push = np.where(atlas.valid, push, -np.inf)
    order = np.argsort(-push, axis=None, kind="stable")
    by_push = [(int(f // atlas.grid_size), int(f % atlas.grid_size)) for f in order if np.isfinite(push.flat[f])]
    chosen: list[Cell] = []
    for pair in zip(confusing + [None] * len(by_push), by_push + [None] * len(confusing)):
        for cell in pair:
            if cell is not None and cell not in chosen and len(chosen) < ctx.config.patch_cells:
                chosen.append(cell)
    return chosen


def images_of(ctx: RunContext, *, acts: ActivationSet, cls: int, seed: int) -> torch.Tensor | None:
    """The patch tests' images of `cls`: up to `max_patch_images` of its captured images, a seeded
    choice in id order (None when the class has none)."""
    uid, labels, _ = acts.per_image()
    ids = uid[labels == cls]
    if ids.size == 0:
        return None
    rng = np.random.default_rng(seed)
    return ctx.images(np.sort(rng.permutation(ids)[:ctx.config.max_patch_images]))


def test_pair(ctx: RunContext, *, acts: ActivationSet, atlas: Atlas, plan: PairPlan, views: PairViews,
              rendered: Rendered) -> tuple[PatchSuite | None, tuple[str, ...]]:
    """Measure the pair's candidate patches; returns its suite (None when nothing could be tested) and notes."""
    from ..render import exemplar_crops

    cfg = ctx.config
    cells = candidate_cells(ctx, plan=plan, views=views, atlas=atlas)
    entries = []
    for cell in cells:
        samples = atlas.exemplars.get(cell, [])[:4]
        crops = list(exemplar_crops(ctx.model, ctx.module, ctx.dataset, acts, samples)) if samples else []
        entries.append((cell, rendered.icons.get(cell), crops))
    kwargs = {"crop_sizes": cfg.crop_sizes} if cfg.crop_sizes else {}
    # Exemplar crops are tried at native pixels and resized; a receptive field covering most of
    # a small image flips by occlusion alone, which the same-geometry controls then discount.
    candidates = candidate_patches(entries, resize_exemplars=None, **kwargs)
    images_a = images_of(ctx, acts=acts, cls=plan.a, seed=ctx.seed)
    images_b = images_of(ctx, acts=acts, cls=plan.b, seed=ctx.seed + 1)
    if images_a is None or not candidates:
        return None, ("patch tests skipped: no images of A or no candidate patches",)
    suite = build_suite(
        ctx.model, images_a, images_b, plan.a, plan.b, candidates, list(ctx.class_names), sizes=cfg.patch_sizes,
        placements=PLACEMENTS, n_random=cfg.n_random, seed=ctx.seed, keep=10, device=ctx.device,
        progress=ctx.bar(f"patches {plan.a_name}->{plan.b_name}"),
        metadata={"candidate_cells": [list(c) for c in cells], "layer": ctx.layer},
    )
    return suite, ()
