"""Stability: does a finding survive the layout's hyperparameters?

An atlas rests on one dimensionality reduction; another seed, or other `n_neighbors` / `min_dist`,
places the vectors differently and cuts them into other cells. A finding that is a property of
the model's vectors, not of one layout, shows up again. The same vectors are laid out again
`stability_layouts` times (`variants`: other seeds, then `n_neighbors` and `min_dist` around the
run's values), each layout binned into an atlas of the run's main grid, and a finding *recurs* in
a layout when one of its valid cells (`RECUR_RULE`)

- shows the same feature: the cosine of its whitened mean activation with the finding's (the mean
  over every sample of the finding's cells, whitened as the icons are) is at least
  `SAME_DIRECTION`, or it holds at least `SHARED_EXEMPLARS` of the finding's exemplar samples (the
  very vectors, not only their images: an image gives several samples);
- and still pushes toward B: the mean over its samples of attribution to B minus attribution to A
  is above zero.

`findings[].stability` = {"recurred": k, "of": K, "layouts": [per layout: seed, n_neighbors,
min_dist, recurred, the matching cell, its cosine and share of the exemplar samples]}. A finding
that recurs in at most `FEW` of them (`artifacts.record.recurs_in_few`) is marked as such in the
report: read it as a property of one layout until another run shows it again. No patch is
measured again; the cost is one neighbour search (at the largest `n_neighbors` of the layouts,
shared by all) and K graphs and optimisations.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..artifacts.record import FEW_LAYOUTS, Finding
from ..atlas import Atlas, build_atlas
from ..capture import ActivationSet
from . import features
from .context import RunContext
from .records import PairPlan

SAME_DIRECTION = features.SAME_DIRECTION
SHARED_EXEMPLARS = 0.5
FEW = FEW_LAYOUTS
# (seed offset, n_neighbors factor, min_dist factor) of the layouts, in order; more than five repeat
# the factors with further seeds
_STEPS = ((1, 1.0, 1.0), (2, 0.6, 1.0), (3, 1.6, 1.0), (4, 1.0, 0.4), (5, 1.0, 2.5))
RECUR_RULE = (f"a finding recurs in a layout when a valid cell of that layout's atlas has a whitened mean "
              f"direction within cosine {SAME_DIRECTION} of the finding's, or holds at least {SHARED_EXEMPLARS:.0%} of "
              f"its exemplar samples, and the cell's samples still push toward B (mean attribution to B minus "
              f"attribution to A above zero)")


@dataclass(frozen=True)
class Variant:
    """One layout of the stability check."""

    seed: int
    n_neighbors: int
    min_dist: float


def variants(seed: int, n_neighbors: int, min_dist: float, k: int, n_samples: int) -> list[Variant]:
    """The `k` layouts: other seeds, `n_neighbors` and `min_dist` around the run's (see `_STEPS`)."""
    out = []
    for i in range(int(k)):
        offset, nn_factor, md_factor = _STEPS[i % len(_STEPS)]
        nn = int(min(max(2, round(n_neighbors * nn_factor)), max(2, n_samples - 1)))
        out.append(Variant(seed=int(seed) + offset + len(_STEPS) * (i // len(_STEPS)), n_neighbors=nn,
                           min_dist=float(min(0.99, max(0.0, min_dist * md_factor)))))
    return out


def check(ctx: RunContext, *, acts: ActivationSet, attributions: torch.Tensor, atlas: Atlas,
          plans: tuple[PairPlan, ...], found: list[tuple[Finding, ...]],
          whitening: torch.Tensor | None) -> list[tuple[Finding, ...]]:
    """Every finding of `found` (one tuple per pair of `plans`) with its `stability`."""
    cfg = ctx.config
    if cfg.stability_layouts == 0 or cfg.layout == "pca" or not any(found):
        return found
    from .views import layout_options

    runs = relayout(acts, attributions, atlas, whitening, layout_options(ctx),
                    variants(ctx.seed, cfg.n_neighbors, cfg.min_dist, cfg.stability_layouts, len(acts)),
                    min_count=cfg.min_count, n_exemplars=cfg.n_exemplars)
    return [tuple(replace(f, stability=stability_of(f, plan.a, plan.b, atlas, acts, whitening, runs)) for f in pair)
            for plan, pair in zip(plans, found)]


def relayout(acts: ActivationSet, attributions: torch.Tensor, atlas: Atlas, whitening: torch.Tensor | None,
             options: dict, layouts: list[Variant], *, min_count: int, n_exemplars: int) -> list[tuple]:
    """(variant, its cells) for every layout of `layouts`: the vectors laid out again with `options`
    (`layout.Layout` keywords) and that variant's seed, `n_neighbors` and `min_dist`, binned on the
    grid of `atlas`. The layouts share one neighbour search, at the largest `n_neighbors` of
    them; the others take the first of its lists (`Layout.neighbours`)."""
    from ..layout import Layout

    vectors = acts.vectors.float().numpy()
    widest = max(layouts, key=lambda v: v.n_neighbors, default=None)
    shared = None if widest is None else Layout(**{**options, "seed": widest.seed,
                                                   "n_neighbors": widest.n_neighbors}).neighbours(vectors)
    runs = []
    for v in layouts:
        settings = {**options, "seed": v.seed, "n_neighbors": v.n_neighbors, "min_dist": v.min_dist}
        fitted = Layout(**settings).fit(vectors, neighbours=shared)
        again = build_atlas(np.asarray(fitted.embedding_, dtype=np.float32), acts, attributions, atlas.grid_size,
                            min_count, n_exemplars)
        runs.append((v, _Cells(again, attributions, whitening)))
    return runs


class _Cells:
    """The valid cells of one layout's atlas: whitened directions, samples, mean attribution per class."""

    def __init__(self, atlas: Atlas, attributions: torch.Tensor, whitening: torch.Tensor | None) -> None:
        from ..render import cell_directions

        self.cells = atlas.valid_cells()
        self.members = [atlas.members(c) for c in self.cells]
        means = np.stack([atlas.mean_activation[c] for c in self.cells]) if self.cells else np.zeros((0, 1))
        self.directions = cell_directions(torch.as_tensor(means, dtype=torch.float32), whitening).numpy()
        self.samples = [set(m.tolist()) for m in self.members]
        attr = attributions.numpy() if isinstance(attributions, torch.Tensor) else np.asarray(attributions)
        self.attribution = np.stack([attr[m].mean(0) for m in self.members]) if self.cells else np.zeros((0, 1))


def stability_of(finding: Finding, a: int, b: int, atlas: Atlas, acts: ActivationSet,
                 whitening: torch.Tensor | None, runs: list[tuple]) -> dict:
    """`findings[].stability` of one finding of the pair (a, b) of `atlas`, over the layouts `runs`
    (`relayout`)."""
    from ..render import cell_directions

    own = [tuple(c.cell) for c in finding.cells] or [tuple(finding.cell)]
    samples = np.unique(np.concatenate([atlas.members(c) for c in own]))
    mean = acts.vectors[torch.as_tensor(samples)].float().mean(0, keepdim=True)
    direction = cell_directions(mean, whitening).numpy()[0]
    exemplars = {int(s) for c in own for s in atlas.exemplars.get(c, [])}
    layouts = []
    for v, cells in runs:
        best = None
        for k, cell in enumerate(cells.cells):
            push = float(cells.attribution[k, b] - cells.attribution[k, a])
            if push <= 0:
                continue
            cosine = float(cells.directions[k] @ direction)
            shared = len(exemplars & cells.samples[k]) / len(exemplars) if exemplars else 0.0
            match = cosine >= SAME_DIRECTION or shared >= SHARED_EXEMPLARS
            key = (match, cosine, shared)
            if best is None or key > best[0]:
                best = (key, cell, cosine, shared)
        recurred = bool(best and best[0][0])
        layouts.append({"seed": v.seed, "n_neighbors": v.n_neighbors, "min_dist": round(v.min_dist, 4),
                        "recurred": recurred, "cell": list(best[1]) if best else None,
                        "cosine": round(best[2], 4) if best else None, "shared": round(best[3], 4) if best else None})
    return {"recurred": sum(1 for layout in layouts if layout["recurred"]), "of": len(layouts), "layouts": layouts}
