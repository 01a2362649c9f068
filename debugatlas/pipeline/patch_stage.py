"""The patch stage: attribution nominates, a wide screen narrows, a held-out experiment confirms.

Per pair (A, B), on images of A split by id into a selection and a confirmation half:
1. screen: every valid cell whose attribution pushes toward B (over A), and every confusing cell,
   pasted as its icon and as a crop of its first exemplar (`screening_crops`), at one size and
   half of `n_random` (at least `DESIGN.min_choosing_positions`) random positions on up to
   `DESIGN.screen_images` images of the selection half; a race (`patches.race`: successive
   halving, first chunk `DESIGN.screen_race_images`) until `3 * patch_cells` patches, or a
   quarter of the cells, are left; a cell scores the better of its two patches;
2. select: the `patch_cells` best-screened cells, and the `DESIGN.island_cells` cells most purely
   of B among their neighbours (`shortcut.shortcut_candidates`), become full candidates (icon,
   icon crops, capped exemplar crops, and for the islands and the best-screened cells,
   `DESIGN.in_context_cells` in all, an in-context patch when asked); they race with their
   controls on the selection half (at most `selection_images`, first chunk
   `DESIGN.selection_race_images`) until `DESIGN.keep` are left, kept by `DESIGN.keep_rule`: at
   least half of them synthesized (not real exemplar crops) and `DESIGN.min_real` real crops when
   there are enough;
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

The user's options are `AnalysisConfig`'s (patch_cells, patch_sizes, crop_sizes, n_random,
selection_images, max_patch_images, patch_batch_size, patch_batching, choosing_precision,
in_context_patches, confirm_alpha); the stage's fixed design choices are `StageDesign`, each with
the reason for its value.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..atlas import Atlas
from ..capture import ActivationSet
from ..patches import PLACEMENTS, REAL_SOURCES, Experiment, KeepRule, Patch, PatchSuite, candidate_patches
from ..patches import control_patches
from ..patches.race import RACE_PLACEMENT, race
from ..patches.sequential import confirm
from ..patches.split import Split
from ..patches.trials import TrialLog
from ..patches.types import patch_side
from ..shortcut import MIN_PURITY_GAP, shortcut_candidates
from .context import RunContext
from .records import Cell, PairPlan, PairTest, PairViews, Rendered


@dataclass(frozen=True)
class StageDesign:
    """The patch stage's fixed design choices, with the reason for each value.

    They belong to the method rather than to a run: a run is described by its `AnalysisConfig`
    (recorded in summary.json's `config`), and these values were chosen by measuring the stage's
    cost in W together with whether planted triggers and strong findings stayed found
    (reports/PERFORMANCE.md, the planted benchmark `experiments/planted_shortcut.py`).

    screen_images (24): selection-half images of A each screened cell is pasted on. The screen only
        orders cells; on all selection images at every position the stage grew with the data
        (PERFORMANCE.md, "What made the patch stage affordable").
    screen_race_images (8): the screening race's first chunk (each next one twice as large). From
        2 images a planted checker trigger left the screen; from 8 it stayed the top finding.
    screen_keep_per_cell (3), screen_keep_one_in (4): the screening race stops once
        `3 * patch_cells` patches, or one in four of the screened cells, are left, so a wide screen
        is narrowed by the race and the full screen decides among the rest.
    min_choosing_positions (4): random positions per image while choosing at least (otherwise half
        of `n_random`); fewer left small patches ranked on too few placements per image.
    island_cells (4): the purest B islands (`shortcut.shortcut_candidates`) go to the full test
        whatever their screening rate: a feature planted in B is such an island, and its icon
        alone may screen poorly.
    in_context_cells (8): cells that also get an in-context patch (the islands, then the best
        screened); each is an optimisation, and 36 cells made the stage grow with the data.
    exemplars_per_cell (4): exemplar crops per full candidate cell (as `candidate_patches`).
    keep (6): patches confirmed on the held-out half. On a converged CIFAR-10 VGG the patch stage
        cost 9.2 W with 6 and 16.4 W with 10, with the same pairs and strong findings; a small
        family also keeps the Holm correction mild.
    min_real (2): of the `keep` places half go to synthesized patches and two to the best crops of
        real images, so that a feature is also measured as real images show it (`keep_rule`).
    selection_race_images (4): the selection race's first chunk (each next one twice as large).
        From 2 images the in-context patch of a planted checker trigger left the race (the best
        synthesized patch left flipped 28 %); from 4 it stayed and flipped 100 %.
    """

    screen_images: int = 24
    screen_race_images: int = 8
    screen_keep_per_cell: int = 3
    screen_keep_one_in: int = 4
    min_choosing_positions: int = 4
    island_cells: int = 4
    in_context_cells: int = 8
    exemplars_per_cell: int = 4
    keep: int = 6
    min_real: int = 2
    selection_race_images: int = 4

    @property
    def keep_rule(self) -> KeepRule:
        """The selection's `KeepRule`: `keep` patches, half synthesized, `min_real` real crops."""
        return KeepRule(keep=self.keep, min_synthesized=self.keep // 2, min_real=self.min_real)


DESIGN = StageDesign()


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


def choosing_positions(n_random: int) -> int:
    """Random positions per image while screening and selecting: half of the confirmation's, at
    least `DESIGN.min_choosing_positions` (or all of them when there are fewer)."""
    return min(int(n_random), max(DESIGN.min_choosing_positions, int(n_random) // 2))


def _screen(ctx: RunContext, plan: PairPlan, cells: list[Cell], rendered: Rendered, images_a: torch.Tensor,
            crops: dict[Cell, torch.Tensor]) -> list[tuple[Cell, float]]:
    """(cell, screening flip rate) of every cell with an icon or an exemplar crop, best first (stable
    on ties); a cell's rate is the better of its icon's and its crop's.

    A race (`patches.race`, no controls: only the flip rate ranks) on up to `DESIGN.screen_images`
    images, first chunk `DESIGN.screen_race_images`, until `3 * patch_cells` patches (or a quarter
    of the cells) are left; a cell's rate is taken on the images its best patch was measured on.
    """
    patches = [Patch(f"s{i}-{j}", (i, j), "icon", rendered.icons[(i, j)]).quantized()
               for i, j in cells if (i, j) in rendered.icons]
    patches += [Patch(f"s{i}-{j}-x", (i, j), "exemplar", crops[(i, j)], resize=False).quantized()
                for i, j in cells if (i, j) in crops]
    if not patches:
        return []
    order = {cell: k for k, cell in enumerate(cells)}
    images = images_a[:DESIGN.screen_images]
    screened = len({p.cell for p in patches})
    keep = max(DESIGN.screen_keep_per_cell * ctx.config.patch_cells, screened // DESIGN.screen_keep_one_in)
    experiment = pair_experiment(ctx, plan, sizes=ctx.config.patch_sizes[:1], placements=(RACE_PLACEMENT,),
                             precision=ctx.config.choosing_precision)
    log = TrialLog(ctx.model, experiment, images.shape[1:])
    result = race(log, patches, [], images, keep=keep, first=DESIGN.screen_race_images)
    best: dict[Cell, tuple[int, float]] = {}
    for rank, r in enumerate(result.ranked):
        rate = r.flip_rate if r.flip_rate == r.flip_rate else -1.0
        if r.cell not in best:
            best[r.cell] = (rank, rate)
    return [(cell, rate) for cell, (_, rate) in sorted(best.items(), key=lambda cr: (cr[1][0], order[cr[0]]))]


def pair_experiment(ctx: RunContext, plan: PairPlan, **changes) -> Experiment:
    """The run's patch experiment for `plan`, with `changes` (sizes, placements, precision, ...)."""
    cfg = ctx.config
    base = Experiment(plan.a, plan.b, sizes=cfg.patch_sizes, placements=PLACEMENTS,
                      n_random=choosing_positions(cfg.n_random), seed=ctx.seed, batch_size=cfg.patch_batch_size,
                      batched=cfg.patch_batching == "batched", device=ctx.device, precision=cfg.choosing_precision)
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


@dataclass(frozen=True)
class _Chosen:
    """What screening chose for the full test: `screen` (cell, rate) best first, the `cells` that
    become full candidates, the B-purity `islands` among them, and the screen's seconds."""

    screen: list[tuple[Cell, float]]
    cells: list[Cell]
    islands: list[Cell]
    seconds: float


def _choose_cells(ctx: RunContext, *, acts: ActivationSet, atlas: Atlas, plan: PairPlan, views: PairViews,
                  rendered: Rendered, images_sel: torch.Tensor, started: float) -> _Chosen:
    """Screen the pair's cells on the selection images; the best `patch_cells` and the purest
    `DESIGN.island_cells` B islands go to the full test."""
    cells = screened_cells(plan=plan, views=views, atlas=atlas)
    side = patch_side(ctx.config.patch_sizes[0], min(images_sel.shape[-2:]))
    with ctx.timer.stage("patches.screening"):
        screen = _screen(ctx, plan, cells, rendered, images_sel, screening_crops(ctx, acts, atlas, cells, side))
    chosen = [cell for cell, _ in screen[:ctx.config.patch_cells]]
    # A feature planted in B is an island of B's samples in the atlas; its icon alone may screen
    # poorly, so the purest islands always get the full test (and an in-context patch).
    islands = [cell for cell, _ in shortcut_candidates(atlas, acts.labels, plan.b, min_gap=MIN_PURITY_GAP)
               [:DESIGN.island_cells]]
    chosen += [cell for cell in islands if cell not in chosen]
    return _Chosen(screen, chosen, islands, time.perf_counter() - started)


def _full_candidates(ctx: RunContext, *, acts: ActivationSet, atlas: Atlas, plan: PairPlan, rendered: Rendered,
                     images_sel: torch.Tensor, chosen: _Chosen) -> list[Patch]:
    """The chosen cells' candidates: icon, icon crops, capped exemplar crops, and in-context patches
    for the islands and then the best screened (`DESIGN.in_context_cells` in all)."""
    from ..render import exemplar_crops

    cfg = ctx.config
    entries = []
    for cell in chosen.cells:
        samples = atlas.exemplars.get(cell, [])[:DESIGN.exemplars_per_cell]
        crops = list(exemplar_crops(ctx.model, ctx.module, ctx.dataset, acts, samples)) if samples else []
        entries.append((cell, rendered.icons.get(cell), crops))
    kwargs = {"crop_sizes": cfg.crop_sizes} if cfg.crop_sizes else {}
    candidates = candidate_patches(entries, resize_exemplars=None, image_shape=tuple(images_sel.shape[1:]),
                                   sizes=cfg.patch_sizes, **kwargs)
    context_cells = (chosen.islands + [c for c in chosen.cells if c not in chosen.islands])[:DESIGN.in_context_cells]
    with ctx.timer.stage("patches.synthesis"):
        candidates += in_context(ctx, plan=plan, atlas=atlas, acts=acts, cells=context_cells, images_a=images_sel,
                                 whitening=rendered.whitening)
    return candidates


@dataclass(frozen=True)
class _Selection:
    """The selection race's outcome: the `kept` patches, their controls, the confirmation's `sizes`,
    and the forwards the race spent."""

    kept: list[Patch]
    controls: list[Patch]
    sizes: tuple[float, ...]
    forwards: int


def _select(ctx: RunContext, plan: PairPlan, candidates: list[Patch], images_sel: torch.Tensor,
            images_b: torch.Tensor | None) -> _Selection:
    """Race the (quantised) candidates with their controls on the selection images; keep
    `DESIGN.keep_rule`'s best."""
    cfg = ctx.config
    shape = tuple(int(v) for v in images_sel.shape[1:])
    controls = [p.quantized() for p in control_patches(candidates, images_b, shape, cfg.patch_sizes, ctx.seed)]
    chooser = TrialLog(ctx.model, pair_experiment(ctx, plan, placements=(RACE_PLACEMENT,)), shape,
                       progress=ctx.bar(f"{plan.a_name}->{plan.b_name}"))
    synthesized = {p.id for p in candidates if p.source not in REAL_SOURCES}
    rule = DESIGN.keep_rule
    ranked = race(chooser, candidates, controls, images_sel, keep=rule.keep, first=DESIGN.selection_race_images,
                  reserve=lambda rs: rule.reserved([r.patch_id for r in rs], synthesized)).ranked
    by_id = {p.id: p for p in candidates}
    kept = [by_id[i] for i in rule.kept([r.patch_id for r in ranked], synthesized)]
    sizes = _confirmation_sizes(chooser, kept, cfg.patch_sizes)
    kept_controls = [c for c in controls if c.resize or any(_same_geometry(c, k, shape) for k in kept)]
    return _Selection(kept, kept_controls, sizes, chooser.forwards)


def run_pair(ctx: RunContext, *, acts: ActivationSet, atlas: Atlas, plan: PairPlan, views: PairViews,
             rendered: Rendered, split: Split) -> PairTest:
    """Screen, select and confirm the patches of one pair (see the module docstring)."""
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
    chosen = _choose_cells(ctx, acts=acts, atlas=atlas, plan=plan, views=views, rendered=rendered,
                           images_sel=images_sel, started=started)
    candidates = _full_candidates(ctx, acts=acts, atlas=atlas, plan=plan, rendered=rendered, images_sel=images_sel,
                                  chosen=chosen)
    if not candidates:
        return PairTest(cells_screened=len(chosen.screen), screen_seconds=chosen.seconds,
                        notes=("patch tests skipped: no cell pushes toward B",))
    images_b = ctx.images(ids_b) if ids_b.size else None
    shape = tuple(int(v) for v in images_sel.shape[1:])
    with ctx.timer.stage("patches.selection"):
        selection = _select(ctx, plan, [p.quantized() for p in candidates], images_sel, images_b)
    with ctx.timer.stage("patches.confirmation"):
        experiment = pair_experiment(ctx, plan, sizes=selection.sizes, n_random=cfg.n_random, precision="float32")
        confirmer = TrialLog(ctx.model, experiment, shape)
        confirmed = confirm(confirmer, selection.kept, selection.controls, ctx.images(conf_a),
                            alpha=cfg.confirm_alpha)
    # Held out: the confirmation half took no part in choosing these patches, so the family the
    # correction covers is the patches tested on it (per placement), not every screened one;
    # `tried` (screened cells and full candidates) is recorded beside it.
    tried = len(chosen.screen) + len(candidates)
    cm_row = np.bincount(preds[labels == plan.a], minlength=ctx.num_classes)
    used_controls = [c for c in selection.controls if confirmer.chunks_of(c.id)]
    suite = PatchSuite(plan.a_name, plan.b_name, plan.a, plan.b, selection.kept, used_controls, selection.sizes,
                       PLACEMENTS, cfg.n_random, ctx.seed, confirmed.evaluation, list(ctx.class_names), shape,
                       cfg.patch_batch_size, metadata={
        "layer": ctx.layer, "accuracy": float((labels == preds).mean()),
        "num_images": int(uid.size), "num_a": int(cm_row.sum()),
        "confusion_rate": float(cm_row[plan.b] / max(1, cm_row.sum())),
        "screened_cells": [list(c) for c, _ in chosen.screen], "candidate_cells": [list(c) for c in chosen.cells],
        "n_screened": tried, "alpha": cfg.confirm_alpha,
        "sequential": confirmed.design.to_dict(), "stopped_at": dict(confirmed.stopped_at),
        "forwards": {"selection": selection.forwards, "confirmation": confirmer.forwards},
        "selection_image_ids": [int(i) for i in sel_a], "confirmation_image_ids": [int(i) for i in conf_a],
    })
    return PairTest(suite=suite, cells_screened=len(chosen.screen), screen_seconds=round(chosen.seconds, 3),
                    n_candidates=len(candidates))


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
