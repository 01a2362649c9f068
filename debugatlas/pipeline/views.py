"""Attribution, the main layout and its atlases, and each pair's views of them."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..atlas import (
    Atlas, build_atlas, class_filter_mask, class_filtered_atlas, comparison_atlas, comparison_mask, filter_overlap,
    view_samples,
)
from ..attribution import MAX_ALL_CLASSES, attribute
from ..capture import ActivationSet
from ..confusion import rank_confusing_cells
from ..core.errors import DebugAtlasError
from .context import RunContext
from .records import Layout2D, PairPlan, PairViews

_OVERLAP_NOTE = 0.5  # class filters sharing at least this share of their samples get a note


def attributions(ctx: RunContext, *, acts: ActivationSet, plans: tuple[PairPlan, ...] | None,
                 return_probs: bool = False) -> torch.Tensor | tuple[torch.Tensor, np.ndarray]:
    """Attribution of every sample to every class [N, K] (see `attribution.attribute`).

    Models with more than `attribution.MAX_ALL_CLASSES` outputs are attributed to the classes of
    the studied pairs only (`plans`, needed then); the other columns are zero. `return_probs`: also
    the softmax probabilities [U, K] of the captured images from the same forward passes
    (`ActivationSet.per_image` order), which picking the pairs needs.
    """
    classes = None
    if ctx.num_classes > MAX_ALL_CLASSES:
        classes = sorted({c for plan in plans or () for c in (plan.a, plan.b)})
        if not classes:
            raise DebugAtlasError(
                f"The model has {ctx.num_classes} classes and no pair to study. HINT: pass `pairs=[(A, B)]`."
            )
    out = attribute(ctx.model, ctx.module, ctx.dataset, acts, classes=classes, batch_size=ctx.config.batch_size,
                    relaxed_maxpool=ctx.config.relaxed_maxpool, device=ctx.device, progress=ctx.bar(),
                    return_probs=return_probs)
    attr, probs = out if return_probs else (out, None)
    if classes is not None:
        full = torch.zeros(attr.shape[0], ctx.num_classes)
        full[:, classes] = attr
        attr = full
    return (attr, probs.numpy()) if return_probs else attr


def layout_options(ctx: RunContext) -> dict[str, Any]:
    """Keyword arguments for `layout.Layout` from the run's options, on the analysis device."""
    cfg = ctx.config
    options: dict[str, Any] = {"method": cfg.layout, "n_neighbors": cfg.n_neighbors, "min_dist": cfg.min_dist,
                               "metric": cfg.metric, "device": ctx.device}
    if cfg.layout in ("umap", "tsne"):
        options["pca_dims"] = cfg.layout_pca_dims
    if cfg.layout == "umap":
        options["backend"] = cfg.layout_backend
        if cfg.layout_epochs is not None:
            options["n_epochs"] = cfg.layout_epochs
    return options


def layout(ctx: RunContext, *, acts: ActivationSet) -> Layout2D:
    """The 2-D layout of all samples."""
    from ..layout import Layout

    if len(acts) <= ctx.config.n_neighbors and ctx.config.layout == "umap":
        raise DebugAtlasError(
            f"Only {len(acts)} activation samples were captured; the UMAP layout with "
            f"n_neighbors={ctx.config.n_neighbors} needs more than that. HINT: capture more "
            "(`samples_per_image`, a larger dataset) or pass a smaller `n_neighbors`."
        )
    fitted = Layout(seed=ctx.seed, **layout_options(ctx)).fit(acts.vectors.float().numpy())
    return Layout2D(np.asarray(fitted.embedding_, dtype=np.float32), dict(fitted.params_))


def atlases(ctx: RunContext, *, acts: ActivationSet, attributions: torch.Tensor,
            layout: Layout2D) -> dict[int, Atlas]:
    """An atlas of the main layout per grid size."""
    cfg = ctx.config
    return {g: build_atlas(layout.xy, acts, attributions, g, cfg.min_count, cfg.n_exemplars,
                           layout_params=layout.params) for g in cfg.grid_sizes}


def pair_views(ctx: RunContext, *, acts: ActivationSet, attributions: torch.Tensor, layout: Layout2D,
               atlas: Atlas, plan: PairPlan) -> PairViews:
    """Ranked confusing cells, class-filtered atlases and the two-class comparison for one pair.

    With `filtered_layout="shared"` (the default) the views keep the main layout's coordinates
    and grid, so a cell is the same place in every picture and its icon is rendered once;
    "own" lays each view out again, as in the paper.
    """
    cfg = ctx.config
    cells = rank_confusing_cells(atlas, acts, attributions, plan.a, plan.b, top=cfg.top_cells, min_count_a=2,
                                 n_exemplars=cfg.n_exemplars)
    notes: list[str] = []
    views: dict[str, Atlas | None] = {}
    for side, cls in (("filtered_a", plan.a), ("filtered_b", plan.b)):
        try:
            views[side] = (_shared_filtered(ctx, acts, attributions, layout, atlas.grid_size, cls)
                           if cfg.filtered_layout == "shared" else _own_filtered(ctx, acts, attributions, cls))
        except DebugAtlasError as exc:
            views[side] = None
            notes.append(f"class-filtered atlas of {ctx.class_names[cls]!r} skipped: {exc}")
    if views["filtered_a"] is not None and views["filtered_b"] is not None:
        shared = filter_overlap(attributions.numpy(), plan.a, plan.b, cfg.filter_top_n)
        if shared >= _OVERLAP_NOTE:
            notes.append(
                f"The class filters of {plan.a_name!r} and {plan.b_name!r} share {100 * shared:.0f} % of their "
                "samples (each holds the samples whose largest attribution is its class and the "
                f"{cfg.filter_top_n} most attributed to it), so the two class-filtered atlases look alike; "
                "the comparison atlas and the ranked cells tell the classes apart."
            )
    try:
        views["comparison"] = (_shared_comparison(ctx, acts, attributions, layout, atlas.grid_size, plan)
                               if cfg.filtered_layout == "shared" else _own_comparison(ctx, acts, attributions, plan))
    except DebugAtlasError as exc:
        views["comparison"] = None
        notes.append(f"comparison atlas skipped: {exc}")
    return PairViews(tuple(cells), views["filtered_a"], views["filtered_b"], views["comparison"], tuple(notes))


def _view(ctx: RunContext, acts, attributions, layout: Layout2D, grid: int, mask: np.ndarray, what: str,
          filter_params: dict) -> Atlas:
    index = view_samples(mask, what, "filter_top_n")
    params = dict(layout.params, filter=filter_params, layout="shared with the main atlas")
    return build_atlas(layout.xy[index], acts, attributions, grid, 1, ctx.config.n_exemplars, index, params)


def _shared_filtered(ctx, acts, attributions, layout, grid: int, cls: int) -> Atlas:
    mask = class_filter_mask(attributions.numpy(), cls, ctx.config.filter_top_n)
    return _view(ctx, acts, attributions, layout, grid, mask, f"The class filter for {ctx.class_names[cls]!r}",
                 {"kind": "class", "target": int(cls), "top_n": int(ctx.config.filter_top_n)})


def _shared_comparison(ctx, acts, attributions, layout, grid: int, plan: PairPlan) -> Atlas:
    top_n = ctx.config.filter_top_n
    mask = comparison_mask(acts, attributions, plan.a, plan.b, top_n)
    return _view(ctx, acts, attributions, layout, grid, mask, f"The comparison of {plan.a_name!r} and {plan.b_name!r}",
                 {"kind": "comparison", "a": int(plan.a), "b": int(plan.b), "top_n": int(top_n)})


def _own_filtered(ctx, acts, attributions, cls: int) -> Atlas:
    return class_filtered_atlas(acts, attributions, target=cls, top_n=ctx.config.filter_top_n,
                                grid_size=max(4, ctx.config.grid_size // 2), layout=layout_options(ctx), min_count=1,
                                n_exemplars=ctx.config.n_exemplars, seed=ctx.seed)


def _own_comparison(ctx, acts, attributions, plan: PairPlan) -> Atlas:
    return comparison_atlas(acts, attributions, a=plan.a, b=plan.b, top_n=ctx.config.filter_top_n,
                            grid_size=max(4, ctx.config.grid_size // 2), layout=layout_options(ctx), min_count=1,
                            n_exemplars=ctx.config.n_exemplars, seed=ctx.seed)
