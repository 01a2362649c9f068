"""The render stage: feature-inversion icons for the cells a page shows or a patch test needs, each once."""
from __future__ import annotations

import numpy as np
import torch

from ..atlas import Atlas
from ..capture import ActivationSet
from ..core.errors import DebugAtlasError
from .context import RunContext
from .records import Cell, PairViews, Rendered

_SIDES = ("filtered_a", "filtered_b", "comparison")


def render(ctx: RunContext, *, acts: ActivationSet, atlas: Atlas, views: tuple[PairViews, ...]) -> Rendered:
    """Icons of every valid cell of the main atlas (the icon atlas shows them all), in one batched run.

    Pair views laid out on the main grid reuse the main icons of the cells they show; views laid
    out on their own (`filtered_layout="own"`) have cells of their own, inverted in the same batch.
    Receptive-field crops of the exemplars are made for the top `render_cells` confusing cells of
    each pair.
    """
    from ..render import FeatureInversion, cell_directions, draw_icon_atlas, exemplar_crops

    cfg = ctx.config
    cells: list[Cell] = []
    for view in views:
        cells += [c.cell for c in view.cells[:cfg.render_cells] if c.cell not in cells]
    cells += [c for c in atlas.valid_cells() if c not in cells]
    if not cells:
        raise DebugAtlasError(
            f"No atlas cell holds at least min_count={atlas.min_count} samples, so there is nothing to "
            "render. HINT: lower `min_count` or `grid_size`, or capture more samples."
        )
    own = cfg.filtered_layout == "own"
    others = [(k, side, getattr(view, side)) for k, view in enumerate(views) for side in _SIDES
              if getattr(view, side) is not None]
    groups = [(atlas, cells)] + ([(other, other.valid_cells()) for _, _, other in others] if own else [])
    means = torch.from_numpy(np.stack([a.mean_activation[i, j] for a, cs in groups for i, j in cs]))
    inverter = FeatureInversion(ctx.model, ctx.module, tuple(ctx.images([0]).shape[1:]), steps=cfg.render_steps,
                                attempts=cfg.render_attempts, batch_size=cfg.render_batch_size, seed=ctx.seed,
                                precision=cfg.choosing_precision)
    whitening = run_whitening(acts)
    result = inverter.invert(cell_directions(means, whitening))
    icons = {cell: result.icons[k] for k, cell in enumerate(cells)}
    view_atlases = {}
    start = len(cells)
    for k, side, other in others:
        if own:
            drawn = {cell: result.icons[start + n] for n, cell in enumerate(other.valid_cells())}
            start += len(drawn)
        else:
            drawn = {cell: icons[cell] for cell in other.valid_cells() if cell in icons}
        view_atlases[(k, side)] = draw_icon_atlas(drawn, other.counts, other.grid_size)
    crops = {}
    for k, view in enumerate(views):
        for cell in view.cells[:cfg.render_cells]:
            if cell.exemplars:
                crops[(k, cell.cell)] = exemplar_crops(ctx.model, ctx.module, ctx.dataset, acts,
                                                  cell.exemplars[:cfg.n_exemplars])
    objective = {cell: float(result.objective[k]) for k, cell in enumerate(cells)}
    return Rendered(icons, objective, draw_icon_atlas(icons, atlas.counts, atlas.grid_size), view_atlases, crops,
                    whitening)


def run_whitening(acts: ActivationSet) -> torch.Tensor:
    """The whitening of the run's directions, from the uniformly random samples.

    Guided sampling puts many vectors where attribution is high, a small trigger among them; a
    whitening from all vectors would count that direction as common and shrink it in every cell
    direction, the very feature the guided samples were drawn to find. With fewer random vectors
    than twice the channels, all vectors are used.
    """
    from ..render import whitening_matrix

    random = acts.random_mask()
    vectors = acts.vectors[random] if int(random.sum()) >= 2 * acts.vectors.shape[1] else acts.vectors
    return whitening_matrix(vectors.float())
