"""The patch stage: attribution nominates, a wide screen narrows, a held-out experiment confirms.

Per pair (A, B), on images of A split by id into a selection and a confirmation half:
1. screen: every valid cell whose attribution pushes toward B (over A), and every confusing cell,
   pasted as its icon and as a crop of its first exemplar (`screening_crops`), at one size and
   half of `n_random` (at least 4) random positions on `SCREEN_IMAGES` images of the selection
   half, in large batches; a cell scores the better of the two (with many cells, a first round on
   `SCREEN_RACE_IMAGES` images keeps the best `3 * patch_cells`, or a quarter, for the full screen);
2. select: the `patch_cells` best-screened cells, and the `ISLAND_CELLS` cells most purely of B
   among their neighbours (`shortcut.shortcut_candidates`), become full candidates (icon, icon
   crops, capped exemplar crops, and for the islands and the best-screened cells, `IN_CONTEXT_CELLS`
   in all, an in-context patch when asked), measured with controls at half of `n_random` (at
   least 4) random positions on the selection half (at most `selection_images`; when it holds
   more than `2 * RACE_IMAGES`, only the best third of many candidates after a first round on
   `RACE_IMAGES` of them); the `KEEP` best by flip rate above the stronger control are kept, at
   least half of them synthesized (not real exemplar crops) and `MIN_REAL` real crops when
   there are enough;
3. confirm: the kept patches and their controls are measured again on the confirmation half only,
   and each gets a Wilson interval and a verdict from `patches.stats`, Holm-corrected over the kept
   patches: the confirmation half took no part in choosing them, so the screened and selected
   candidates do not enter its family. The suite's baseline is this confirmation measurement,
   at every placement and all `n_random` positions, on at most `max_patch_images` images.

Screening and selection only choose, so they use fewer images and positions than the
confirmation that reports, and run at `choosing_precision` (bfloat16 where the device has it
natively: 1.7-2.7x faster forwards on a CPU with AVX512-BF16); the confirmation runs the model at
its own precision. Every stage is a batch of forward passes whose size does not grow
with the number of images analysed.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ..atlas import Atlas
from ..capture import ActivationSet
from ..patches import PLACEMENTS, Patch, build_suite, candidate_patches, evaluate_patches
from ..patches.split import Split
from ..patches.stats import judge_evaluation
from ..shortcut import MIN_PURITY_GAP, shortcut_candidates
from .context import RunContext
from .records import Cell, PairPlan, PairTest, PairViews, Rendered

SCREEN_PLACEMENT = "random"
ISLAND_CELLS = 4  # B-purity islands that go to the full test whatever their screening rate
IN_CONTEXT_CELLS = 8  # cells that also get an in-context patch: the islands, then the best screened
SCREEN_IMAGES = 24  # selection-half images of A each screened cell is pasted on
SCREEN_RACE_IMAGES = 8  # with many cells, a first screening round on this many keeps the best
MIN_CHOOSING_POSITIONS = 4  # fewer left small patches ranked on too few placements per image
KEEP = 10  # patches confirmed on the held-out half; half of the places go to synthesized ones
MIN_REAL = 2  # ... and two to the best crops of real images, so real images are measured too
RACE_IMAGES = 16  # a first selection round on this many images keeps the best third of many candidates


def screened_cells(*, plan: PairPlan, views: PairViews, atlas: Atlas) -> list[Cell]:
    """Cells to screen for (a, b): the confusing cells with a positive score, then every valid cell
    whose mean attribution pushes toward b over a, most first.

    The second list matters: a feature planted in images of b (a trigger) is not found in images
    of a, yet pasting it is exactly what flips a to b.
    """
    cells = [c.cell for c in views.cells if c.score > 0]
    push = atlas.mean_attribution[..., plan.b] - atlas.mean_attribution[..., plan.a]
    push = np.where(atlas.valid & (push > 0), push, -np.inf)
    for flat in np.argsort(-push, axis=None, kind="stable"):
        if not np.isfinite(push.flat[flat]):
            break
        cell = (int(flat // atlas.grid_size), int(flat % atlas.grid_size))
        if cell not in cells:
            cells.append(cell)
    return cells


def _sample(ids: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Up to `limit` of `ids`, a seeded choice, in id order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(ids)[:limit])


def _choosing_positions(n_random: int) -> int:
    """Random positions per image while screening and selecting: half of the confirmation's, at
    least `MIN_CHOOSING_POSITIONS` (or all of them when there are fewer)."""
    return min(int(n_random), max(MIN_CHOOSING_POSITIONS, int(n_random) // 2))


def _screen(ctx: RunContext, plan: PairPlan, cells: list[Cell], rendered: Rendered, images_a: torch.Tensor,
            crops: dict[Cell, torch.Tensor]) -> list[tuple[Cell, float]]:
    """(cell, screening flip rate) of every cell with an icon or an exemplar crop, best first (stable
    on ties); a cell's rate is the better of its icon's and its crop's.

    With more than `3 * patch_cells` such cells, a first round on `SCREEN_RACE_IMAGES` images keeps
    the best of them (that many, or a quarter of all), which are screened again on all
    `SCREEN_IMAGES`; the others follow, in the first round's order, with its rates.
    """
    patches = [Patch(f"s{i}-{j}", (i, j), "icon", rendered.icons[(i, j)]).quantized()
               for i, j in cells if (i, j) in rendered.icons]
    patches += [Patch(f"s{i}-{j}-x", (i, j), "exemplar", crops[(i, j)], resize=False).quantized()
                for i, j in cells if (i, j) in crops]
    if not patches:
        return []
    order = {cell: k for k, cell in enumerate(cells)}
    images = images_a[:SCREEN_IMAGES]
    screened = len({p.cell for p in patches})
    keep = max(3 * ctx.config.patch_cells, screened // 4)
    if screened <= keep or len(images) < 2 * SCREEN_RACE_IMAGES:
        return _screen_rates(ctx, plan, patches, images, order)
    first = _screen_rates(ctx, plan, patches, images[:SCREEN_RACE_IMAGES], order)
    going_on = {cell for cell, _ in first[:keep]}
    second = _screen_rates(ctx, plan, [p for p in patches if p.cell in going_on], images, order)
    return second + first[keep:]


def _screen_rates(ctx: RunContext, plan: PairPlan, patches: list[Patch], images: torch.Tensor,
                  order: dict[Cell, int]) -> list[tuple[Cell, float]]:
    """(cell, best flip rate of its patches) on `images`, at one size and random positions, best first."""
    evaluation = evaluate_patches(ctx.model, images, plan.a, plan.b, patches,
                                  sizes=ctx.config.patch_sizes[:1], placements=(SCREEN_PLACEMENT,),
                                  n_random=_choosing_positions(ctx.config.n_random), seed=ctx.seed,
                                  batch_size=ctx.config.patch_batch_size, device=ctx.device, controls=[],
                                  batched=ctx.config.patch_batching == "batched",
                                  precision=ctx.config.choosing_precision)
    best: dict[Cell, float] = {}
    for p in patches:
        rate = evaluation.get(p.id, SCREEN_PLACEMENT).flip_rate
        rate = rate if rate == rate else -1.0
        best[p.cell] = max(best.get(p.cell, -1.0), rate)
    return sorted(best.items(), key=lambda cr: (-cr[1], order[cr[0]]))


def screening_crops(ctx: RunContext, acts: ActivationSet, atlas: Atlas, cells: list[Cell],
                    side: int) -> dict[Cell, torch.Tensor]:
    """Per cell, the receptive-field crop of its first exemplar cut to its centre `side` x `side`:
    the cell as it looks in real data. A trigger's rendered icon often does not flip at all where a
    crop of a real image holding it flips nearly every image, so both are screened."""
    from ..patches.candidates import cut_to_side
    from ..render import exemplar_crops

    first = [(cell, atlas.exemplars[cell][0]) for cell in cells if atlas.exemplars.get(cell)]
    if not first:
        return {}
    crops = exemplar_crops(ctx.model, ctx.module, ctx.dataset, acts, [s for _, s in first])
    return {cell: cut_to_side(crop, side).contiguous() for (cell, _), crop in zip(first, crops)}


def test_pair(ctx: RunContext, *, acts: ActivationSet, atlas: Atlas, plan: PairPlan, views: PairViews,
              rendered: Rendered, split: Split) -> PairTest:
    """Screen, select and confirm the patches of one pair (see the module docstring)."""
    from ..render import exemplar_crops

    cfg = ctx.config
    sel_a = _sample(split.ids("selection", plan.a), cfg.selection_images, ctx.seed)
    conf_a = _sample(split.ids("confirmation", plan.a), cfg.max_patch_images, ctx.seed)
    uid, labels, preds = acts.per_image()
    ids_b = _sample(uid[labels == plan.b], cfg.max_patch_images, ctx.seed + 1)
    if sel_a.size == 0 or conf_a.size == 0:
        return PairTest(notes=(f"patch tests skipped: {plan.a_name!r} has {sel_a.size + conf_a.size} image(s); "
                               "a selection and a confirmation half need at least two",))
    started = time.perf_counter()
    images_sel = ctx.images(sel_a)
    cells = screened_cells(plan=plan, views=views, atlas=atlas)
    side = max(1, round(cfg.patch_sizes[0] * min(images_sel.shape[-2:])))
    screen = _screen(ctx, plan, cells, rendered, images_sel, screening_crops(ctx, acts, atlas, cells, side))
    chosen = [cell for cell, _ in screen[:cfg.patch_cells]]
    # A feature planted in B is an island of B's samples in the atlas; its icon alone may screen
    # poorly, so the purest islands always get the full test (and an in-context patch).
    islands = shortcut_candidates(atlas, acts.labels, plan.b, min_gap=MIN_PURITY_GAP)
    chosen += [cell for cell, _ in islands[:ISLAND_CELLS] if cell not in chosen]
    screen_seconds = time.perf_counter() - started
    entries = []
    for cell in chosen:
        samples = atlas.exemplars.get(cell, [])[:4]
        crops = list(exemplar_crops(ctx.model, ctx.module, ctx.dataset, acts, samples)) if samples else []
        entries.append((cell, rendered.icons.get(cell), crops))
    kwargs = {"crop_sizes": cfg.crop_sizes} if cfg.crop_sizes else {}
    candidates = candidate_patches(entries, resize_exemplars=None, image_shape=tuple(images_sel.shape[1:]),
                                   sizes=cfg.patch_sizes, **kwargs)
    island_cells = [cell for cell, _ in islands[:ISLAND_CELLS]]
    context_cells = (island_cells + [c for c in chosen if c not in island_cells])[:IN_CONTEXT_CELLS]
    candidates += in_context(ctx, plan=plan, atlas=atlas, acts=acts, cells=context_cells, images_a=images_sel,
                             whitening=rendered.whitening)
    if not candidates:
        return PairTest(n_screened=len(screen), screen_seconds=screen_seconds,
                        notes=("patch tests skipped: no cell pushes toward B",))
    images_b = ctx.images(ids_b) if ids_b.size else None
    n_candidates = len(candidates)
    racing = max(3 * KEEP, n_candidates // 3)
    if len(images_sel) > 2 * RACE_IMAGES and n_candidates > racing:
        # many candidates: a first round on RACE_IMAGES images; the best third goes on, in order
        first = _rank(ctx, plan, candidates, images_sel[:RACE_IMAGES], images_b, keep=racing)
        ids = {p.id for p in first.patches}
        candidates = [p for p in candidates if p.id in ids]
    selected = _rank(ctx, plan, candidates, images_sel, images_b, keep=KEEP,
                     progress=ctx.bar(f"patches {plan.a_name}->{plan.b_name}"))
    confirmation = evaluate_patches(
        ctx.model, ctx.images(conf_a), plan.a, plan.b, selected.patches, sizes=selected.sizes,
        placements=PLACEMENTS, n_random=cfg.n_random, seed=ctx.seed, device=ctx.device,
        batch_size=cfg.patch_batch_size, controls=selected.controls, batched=cfg.patch_batching == "batched",
    )
    # Held out: the confirmation half took no part in choosing these patches, so the family the
    # correction must cover is the patches tested on it (per placement), not every screened one.
    n_screened = len(screen) + n_candidates
    judged = judge_evaluation(confirmation, n_screened=len(selected.patches), alpha=cfg.confirm_alpha)
    cm_row = np.bincount(preds[labels == plan.a], minlength=ctx.num_classes)
    suite = dataclasses.replace(selected, placements=PLACEMENTS, n_random=cfg.n_random, baseline=judged, metadata={
        "layer": ctx.layer, "accuracy": float((labels == preds).mean()),
        "num_images": int(uid.size), "num_a": int(cm_row.sum()),
        "confusion_rate": float(cm_row[plan.b] / max(1, cm_row.sum())), "screened_cells": [list(c) for c, _ in screen], "candidate_cells": [list(c) for c in chosen],
        "n_screened": n_screened, "alpha": cfg.confirm_alpha,
        "selection_image_ids": [int(i) for i in sel_a], "confirmation_image_ids": [int(i) for i in conf_a],
    })
    return PairTest(suite=suite, n_screened=len(screen), screen_seconds=round(screen_seconds, 3),
                    n_candidates=n_candidates)


def _rank(ctx: RunContext, plan: PairPlan, candidates: list[Patch], images: torch.Tensor,
          images_b: torch.Tensor | None, keep: int, progress=None):
    """`build_suite` on selection images: the flip rate above the stronger control at random
    positions ranks, so only that placement is measured (the held-out half measures every one);
    `keep` best, half of them synthesized and `MIN_REAL` real crops when there are enough."""
    cfg = ctx.config
    return build_suite(
        ctx.model, images, images_b, plan.a, plan.b, candidates, list(ctx.class_names), sizes=cfg.patch_sizes,
        placements=(SCREEN_PLACEMENT,), n_random=_choosing_positions(cfg.n_random), seed=ctx.seed, keep=keep,
        device=ctx.device, batch_size=cfg.patch_batch_size, progress=progress,
        batched=cfg.patch_batching == "batched", min_synthesized=keep // 2, precision=cfg.choosing_precision,
        min_real=MIN_REAL,
    )


def in_context(ctx: RunContext, *, plan: PairPlan, atlas: Atlas, acts: ActivationSet, cells: list[Cell],
               images_a: torch.Tensor, whitening: torch.Tensor | None = None) -> list[Patch]:
    """In-context patches of `cells` (see `render.in_context`), when `in_context_patches` is on;
    `whitening`: the run's (`Rendered.whitening`), made here from `acts` when None."""
    if not ctx.config.in_context_patches or not cells:
        return []
    from ..render import cell_directions
    from ..render.in_context import in_context_patches
    from .icons import run_whitening

    means = torch.from_numpy(np.stack([atlas.mean_activation[i, j] for i, j in cells]))
    directions = cell_directions(means, whitening if whitening is not None else run_whitening(acts))
    side = max(1, round(min(ctx.config.patch_sizes) * min(images_a.shape[-2:])))
    patches, _ = in_context_patches(ctx.model, ctx.module, images_a, cells, directions, side,
                                    steps=ctx.config.render_steps, seed=ctx.seed,
                                    precision=ctx.config.choosing_precision)
    return patches
