"""The patch stage: attribution nominates, a wide screen narrows, a held-out experiment confirms.

Per pair (A, B), on images of A split by id into a selection and a confirmation half:
1. screen: every valid cell whose attribution pushes toward B (over A), and every confusing cell,
   pasted as its icon and as a crop of its first exemplar (`screening_crops`), at one size and
   half of `n_random` (at least 4) random positions on up to `SCREEN_IMAGES` images of the
   selection half; a race (`patches.race`: successive halving, first chunk `SCREEN_RACE_IMAGES`)
   until `3 * patch_cells` patches, or a quarter of the cells, are left; a cell scores the better
   of its two patches;
2. select: the `patch_cells` best-screened cells, and the `ISLAND_CELLS` cells most purely of B
   among their neighbours (`shortcut.shortcut_candidates`), become full candidates (icon, icon
   crops, capped exemplar crops, and for the islands and the best-screened cells, `IN_CONTEXT_CELLS`
   in all, an in-context patch when asked); they race with their controls on the selection half
   (at most `selection_images`, first chunk `SELECTION_RACE_IMAGES`) until `KEEP` are left, at
   least half of them synthesized (not real exemplar crops) and `MIN_REAL` real crops when there
   are enough;
3. confirm: the kept patches and their controls are measured again on the confirmation half only
   (at most `max_patch_images` images, every placement, all `n_random` positions, at the sizes the
   selection found strongest), look by look (`patches.sequential`): a patch leaves once its verdict
   is settled. Each gets a Wilson interval and a verdict, Holm-corrected over the kept patches
   with the looks accounted for: the confirmation half took no part in choosing them, so the
   screened and selected candidates do not enter its family. The suite's baseline is this
   measurement.

Screening and selection only choose, so they use fewer images and positions than the
confirmation that reports, and run at `choosing_precision` (bfloat16 where the device has it
natively: 1.7-2.7x faster forwards on a CPU with AVX512-BF16); the confirmation runs the model at
its own precision. No part grows with the number of images analysed, and the races and looks
spend forwards only on what is still undecided, which is what a converged model, with all its
correctly classified images of A, needs. The stage's parts are timed and costed apart
(`patches.screening`, `.synthesis`, `.selection`, `.confirmation`).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from ..atlas import Atlas
from ..capture import ActivationSet
from ..patches import PLACEMENTS, REAL_SOURCES, Patch, PatchSuite, candidate_patches, control_patches
from ..patches.race import race
from ..patches.sequential import confirm
from ..patches.split import Split
from ..patches.suite import _keep
from ..patches.trials import Experiment, TrialLog
from ..patches.types import patch_side
from ..shortcut import MIN_PURITY_GAP, shortcut_candidates
from .context import RunContext
from .records import Cell, PairPlan, PairTest, PairViews, Rendered

SCREEN_PLACEMENT = "random"
ISLAND_CELLS = 4  # B-purity islands that go to the full test whatever their screening rate
IN_CONTEXT_CELLS = 8  # cells that also get an in-context patch: the islands, then the best screened
SCREEN_IMAGES = 24  # selection-half images of A each screened cell is pasted on
SCREEN_RACE_IMAGES = 8  # the screening race's first chunk; each next one is twice as large
MIN_CHOOSING_POSITIONS = 4  # fewer left small patches ranked on too few placements per image
KEEP = 6  # patches confirmed on the held-out half; half of the places go to synthesized ones
MIN_REAL = 2  # ... and two to the best crops of real images, so real images are measured too
SELECTION_RACE_IMAGES = 4  # the selection race's first chunk; each next one is twice as large


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

    A race (`patches.race`, no controls: only the flip rate ranks) on up to `SCREEN_IMAGES` images,
    first chunk `SCREEN_RACE_IMAGES`, until `3 * patch_cells` patches (or a quarter of the cells)
    are left; a cell's rate is taken on the images its best patch was measured on.
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
    log = TrialLog(ctx.model, _experiment(ctx, plan, sizes=ctx.config.patch_sizes[:1], placements=(SCREEN_PLACEMENT,),
                                          precision=ctx.config.choosing_precision), images.shape[1:])
    result = race(log, patches, [], images, keep=keep, first=SCREEN_RACE_IMAGES)
    best: dict[Cell, tuple[int, float]] = {}
    for rank, r in enumerate(result.ranked):
        rate = r.flip_rate if r.flip_rate == r.flip_rate else -1.0
        if r.cell not in best:
            best[r.cell] = (rank, rate)
    return [(cell, rate) for cell, (_, rate) in sorted(best.items(), key=lambda cr: (cr[1][0], order[cr[0]]))]


def _experiment(ctx: RunContext, plan: PairPlan, **changes) -> Experiment:
    """The run's patch experiment for `plan`, with `changes` (sizes, placements, precision, ...)."""
    cfg = ctx.config
    base = Experiment(plan.a, plan.b, sizes=cfg.patch_sizes, placements=PLACEMENTS,
                      n_random=_choosing_positions(cfg.n_random), seed=ctx.seed, batch_size=cfg.patch_batch_size,
                      device=ctx.device, precision=cfg.choosing_precision)
    return base.with_(**changes)


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
    side = patch_side(cfg.patch_sizes[0], min(images_sel.shape[-2:]))
    with ctx.timer.stage("patches.screening"):
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
    with ctx.timer.stage("patches.synthesis"):
        candidates += in_context(ctx, plan=plan, atlas=atlas, acts=acts, cells=context_cells, images_a=images_sel,
                                 whitening=rendered.whitening)
    if not candidates:
        return PairTest(n_screened=len(screen), screen_seconds=screen_seconds,
                        notes=("patch tests skipped: no cell pushes toward B",))
    images_b = ctx.images(ids_b) if ids_b.size else None
    n_candidates = len(candidates)
    shape = tuple(int(v) for v in images_sel.shape[1:])
    candidates = [p.quantized() for p in candidates]
    with ctx.timer.stage("patches.selection"):
        controls = [p.quantized() for p in control_patches(candidates, images_b, shape, cfg.patch_sizes, ctx.seed)]
        chooser = TrialLog(ctx.model, _experiment(ctx, plan, placements=(SCREEN_PLACEMENT,)), shape,
                           progress=ctx.bar(f"patches {plan.a_name}->{plan.b_name}"))
        synthesized = {p.id for p in candidates if p.source not in REAL_SOURCES}
        ranked = race(chooser, candidates, controls, images_sel, keep=KEEP, first=SELECTION_RACE_IMAGES,
                      reserve=lambda rs: _reserved(rs, synthesized)).ranked
        kept_ids = _keep([r.patch_id for r in ranked], KEEP, KEEP // 2, synthesized, MIN_REAL)
        by_id = {p.id: p for p in candidates}
        kept = [by_id[i] for i in kept_ids]
        sizes = _confirmation_sizes(chooser, kept, cfg.patch_sizes)
        kept_controls = [c for c in controls if c.resize or any(_same_geometry(c, k, shape) for k in kept)]
    with ctx.timer.stage("patches.confirmation"):
        experiment = _experiment(ctx, plan, sizes=sizes, n_random=cfg.n_random, precision="float32")
        confirmer = TrialLog(ctx.model, experiment, shape)
        confirmed = confirm(confirmer, kept, kept_controls, ctx.images(conf_a), alpha=cfg.confirm_alpha)
    # Held out: the confirmation half took no part in choosing these patches, so the family the
    # correction must cover is the patches tested on it (per placement), not every screened one.
    n_screened = len(screen) + n_candidates
    judged = confirmed.evaluation
    cm_row = np.bincount(preds[labels == plan.a], minlength=ctx.num_classes)
    used_controls = [c for c in kept_controls if confirmer.chunks_of(c.id)]
    suite = PatchSuite(plan.a_name, plan.b_name, plan.a, plan.b, kept, used_controls, tuple(sizes), PLACEMENTS,
                       cfg.n_random, ctx.seed, judged, list(ctx.class_names), shape, cfg.patch_batch_size,
                       metadata={
        "layer": ctx.layer, "accuracy": float((labels == preds).mean()),
        "num_images": int(uid.size), "num_a": int(cm_row.sum()),
        "confusion_rate": float(cm_row[plan.b] / max(1, cm_row.sum())), "screened_cells": [list(c) for c, _ in screen],
        "candidate_cells": [list(c) for c in chosen], "n_screened": n_screened, "alpha": cfg.confirm_alpha,
        "sequential": confirmed.design.to_dict(), "stopped_at": dict(confirmed.stopped_at),
        "forwards": {"selection": chooser.forwards, "confirmation": confirmer.forwards},
        "selection_image_ids": [int(i) for i in sel_a], "confirmation_image_ids": [int(i) for i in conf_a],
    })
    return PairTest(suite=suite, n_screened=len(screen), screen_seconds=round(screen_seconds, 3),
                    n_candidates=n_candidates)


def _reserved(ranked, synthesized: set[str]) -> set[str]:
    """Ids that stay in the selection race whatever their rank: the best `KEEP // 2` synthesized
    candidates and the best `MIN_REAL` crops of real images (the places `_keep` reserves)."""
    synth = [r.patch_id for r in ranked if r.patch_id in synthesized][:KEEP // 2]
    real = [r.patch_id for r in ranked if r.patch_id not in synthesized][:MIN_REAL]
    return set(synth) | set(real)


def _same_geometry(control: Patch, patch: Patch, shape) -> bool:
    from ..patches.candidates import _geometry

    return _geometry(control, *shape[-2:]) == _geometry(patch, *shape[-2:])


def _confirmation_sizes(log: TrialLog, kept: list[Patch], sizes) -> tuple[float, ...]:
    """The paste sizes the held-out half measures: for each kept resized patch, the size at which
    it flipped most in the selection (all sizes when none is resized)."""
    best = {log.best_size(p.id) for p in kept if p.resize}
    best.discard(None)
    return tuple(sorted(best)) if best else tuple(sizes)


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
    side = patch_side(min(ctx.config.patch_sizes), min(images_a.shape[-2:]))
    patches, _ = in_context_patches(ctx.model, ctx.module, images_a, cells, directions, side,
                                    steps=ctx.config.render_steps, seed=ctx.seed,
                                    precision=ctx.config.choosing_precision)
    return patches
