"""The steps of `analyze()`, one function each; `api.py` times and orders them."""
from __future__ import annotations

import platform
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atlas import Atlas, build_atlas, class_filtered_atlas, comparison_atlas
from ..capture import ActivationSet
from ..confusion import SCORE_DESCRIPTION, confusion_matrix, most_confused_pairs, rank_confusing_cells
from ..core.datasets import load_images
from ..core.errors import DebugAtlasError
from ..core.model import preserved_model_state
from ..core.progress import progress_bar
from .config import AnalysisConfig

SCHEMA_VERSION = 1


def num_classes(model: nn.Module, dataset, device: torch.device) -> int:
    """Number of model outputs, from one forward pass on the first image."""
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        out = model(load_images(dataset, [0]).to(device))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise DebugAtlasError(
            f"The model returned {type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}; "
            "expected logits [B, K]. HINT: wrap the model so that forward returns the logits tensor."
        )
    return int(out.shape[1])


def attributions(model, module, dataset, acts: ActivationSet, config: AnalysisConfig, device,
                 progress: bool, num_classes: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Attribution of every sample to every class [N, K] (see `attribution.attribute`).

    Models with more than `attribution.MAX_ALL_CLASSES` outputs are attributed to the classes of
    the studied pairs only; the other columns are zero.
    """
    from ..attribution import MAX_ALL_CLASSES, attribute

    classes = None
    if num_classes > MAX_ALL_CLASSES:
        classes = sorted({c for pair in pairs for c in pair})
        if not classes:
            raise DebugAtlasError(
                f"The model has {num_classes} classes and no pair to study. HINT: pass `pairs=[(A, B)]`."
            )
    attr = attribute(model, module, dataset, acts, classes=classes, batch_size=config.batch_size,
                     relaxed_maxpool=config.relaxed_maxpool, device=device,
                     progress=progress_bar(progress, "attribution"))
    if classes is None:
        return attr
    full = torch.zeros(attr.shape[0], num_classes)
    full[:, classes] = attr
    return full


def layout_options(config: AnalysisConfig, device=None) -> dict[str, Any]:
    """Keyword arguments for `layout.Layout` from the run's options (laid out on `device`)."""
    options = {"method": config.layout, "n_neighbors": config.n_neighbors, "min_dist": config.min_dist,
               "metric": config.metric, "device": device}
    if config.layout in ("umap", "tsne"):
        options["pca_dims"] = config.layout_pca_dims
    if config.layout == "umap":
        options["backend"] = config.layout_backend
        if config.layout_epochs is not None:
            options["n_epochs"] = config.layout_epochs
    return options


def atlases(acts: ActivationSet, attr: torch.Tensor, config: AnalysisConfig,
            seed: int, device=None) -> tuple[np.ndarray, dict[int, Atlas], dict]:
    """The 2-D layout of all samples and an atlas per grid size."""
    from ..layout import Layout

    if len(acts) <= config.n_neighbors and config.layout == "umap":
        raise DebugAtlasError(
            f"Only {len(acts)} activation samples were captured; the UMAP layout with "
            f"n_neighbors={config.n_neighbors} needs more than that. HINT: capture more "
            "(`samples_per_image`, a larger dataset) or pass a smaller `n_neighbors`."
        )
    fitted = Layout(seed=seed, **layout_options(config, device)).fit(acts.vectors.float().numpy())
    xy = np.asarray(fitted.embedding_, dtype=np.float32)
    params = dict(fitted.params_)
    built = {g: build_atlas(xy, acts, attr, g, config.min_count, config.n_exemplars, layout_params=params)
             for g in config.grid_sizes}
    return xy, built, params


def confusion(labels: np.ndarray, preds: np.ndarray, k: int, wanted, config: AnalysisConfig):
    """Confusion matrix over the captured images and the pairs to study."""
    cm = confusion_matrix(labels, preds, k)
    if wanted is None:
        wanted = most_confused_pairs(cm, config.n_pairs)
    for a, b in wanted:
        if not (labels == a).any():
            raise DebugAtlasError(
                f"Class {a} of pair ({a}, {b}) has no images among the {len(labels)} captured. "
                "HINT: pick a pair whose first class occurs in the dataset."
            )
    return cm, list(wanted)


def pair_finding(acts, attr, atlas: Atlas, a: int, b: int, names: list[str], cm: np.ndarray,
                 config: AnalysisConfig, seed: int, device=None):
    """Ranked confusing cells, class-filtered atlases and the two-class comparison for (a, b)."""
    from .analyze import PairFinding

    finding = PairFinding(a, b, names[a], names[b], int(cm[a, b]))
    finding.cells = rank_confusing_cells(atlas, acts, attr, a, b, top=config.top_cells,
                                         min_count_a=2, n_exemplars=config.n_exemplars)
    layout = layout_options(config, device)
    grid = max(4, config.grid_size // 2)
    for side, cls in (("filtered_a", a), ("filtered_b", b)):
        try:
            setattr(finding, side, class_filtered_atlas(
                acts, attr, cls, config.filter_top_n, grid, layout, 1, config.n_exemplars, seed))
        except DebugAtlasError as exc:
            finding.notes.append(f"class-filtered atlas of {names[cls]!r} skipped: {exc}")
    try:
        finding.comparison = comparison_atlas(acts, attr, a, b, grid, seed, config.filter_top_n, layout,
                                              1, config.n_exemplars)
    except DebugAtlasError as exc:
        finding.notes.append(f"comparison atlas skipped: {exc}")
    return finding


def _input_shape(dataset) -> tuple[int, int, int]:
    return tuple(int(s) for s in load_images(dataset, [0]).shape[1:])


def render(model, module, dataset, acts: ActivationSet, atlas: Atlas, findings: list,
           config: AnalysisConfig, seed: int, device) -> tuple[np.ndarray, dict]:
    """Icons for the valid cells of the main atlas and of the pairs' atlases, in one batched run.

    Fills each finding's `icons`, `icon_objective`, `exemplar_crops` and `icon_atlases`; returns
    the main icon atlas image and every main cell's icon.
    """
    from ..render import FeatureInversion, cell_directions, draw_icon_atlas, exemplar_crops, whitening_matrix

    cells: list[tuple[int, int]] = []
    for finding in findings:
        cells += [c.cell for c in finding.cells[:config.render_cells] if c.cell not in cells]
    cells += [c for c in atlas.valid_cells() if c not in cells]
    if not cells:
        raise DebugAtlasError(
            f"No atlas cell holds at least min_count={atlas.min_count} samples, so there is nothing to "
            "render. HINT: lower `min_count` or `grid_size`, or capture more samples."
        )
    # The pairs' class-filtered and comparison atlases are rendered in the same batch.
    others = [(finding, side, getattr(finding, side)) for finding in findings
              for side in ("filtered_a", "filtered_b", "comparison") if getattr(finding, side) is not None]
    groups = [(atlas, cells)] + [(other, other.valid_cells()) for _, _, other in others]
    means = torch.from_numpy(np.stack([a.mean_activation[i, j] for a, cs in groups for i, j in cs]))
    whiten = whitening_matrix(acts.vectors.float())
    inverter = FeatureInversion(model, module, _input_shape(dataset), steps=config.render_steps,
                                attempts=config.render_attempts, batch_size=config.render_batch_size,
                                seed=seed)
    result = inverter.invert(cell_directions(means, whiten))
    icons = {cell: result.icons[k] for k, cell in enumerate(cells)}
    start = len(cells)
    for (finding, side, other), (_, other_cells) in zip(others, groups[1:]):
        drawn = {cell: result.icons[start + k] for k, cell in enumerate(other_cells)}
        finding.icon_atlases[side] = draw_icon_atlas(drawn, other.counts, other.grid_size)
        start += len(other_cells)
    for finding in findings:
        for cell in finding.cells[:config.render_cells]:
            finding.icons[cell.cell] = icons[cell.cell]
            finding.icon_objective[cell.cell] = float(result.objective[cells.index(cell.cell)])
            if cell.exemplars:
                finding.exemplar_crops[cell.cell] = exemplar_crops(
                    model, module, dataset, acts, cell.exemplars[:config.n_exemplars])
    return draw_icon_atlas(icons, atlas.counts, atlas.grid_size), icons


def examples(model, dataset, acts: ActivationSet, findings: list, config: AnalysisConfig, device) -> None:
    """Misclassified a→b images with pixel attributions toward b, for each finding."""
    from ..attribution import pixel_attribution

    uid, labels, preds = acts.per_image()
    for finding in findings:
        chosen = uid[(labels == finding.a) & (preds == finding.b)][:config.n_examples]
        if chosen.size == 0:
            continue
        images = load_images(dataset, chosen)
        target = torch.full((len(chosen),), finding.b, dtype=torch.long)
        heat = pixel_attribution(model, images.to(device), target.to(device))
        with preserved_model_state(model), torch.no_grad():
            model.eval()
            p_b = torch.softmax(model(images.to(device)), -1)[:, finding.b].cpu()
        finding.examples = [{"id": int(i), "image": images[k], "heatmap": heat[k].cpu(), "p_b": float(p_b[k])}
                            for k, i in enumerate(chosen)]


def patches(model, module, dataset, acts, attr, atlas, findings, icons, names, config, seed, device, progress):
    """Patch tests for every finding (see `patch_stage.py`); returns the pairs' suites."""
    from .patch_stage import run_patch_tests

    return run_patch_tests(model, module, dataset, acts, atlas, findings, icons, names, config, seed, device,
                           progress)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("debugatlas", "torch", "torchvision", "captum", "umap-learn", "numpy", "pytorch-lightning"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def summary(result, layer: str, labels: np.ndarray, preds: np.ndarray, timings: dict, layout_params: dict,
            seed: int, normalize) -> dict:
    """The summary.json dict (schema_version 1, see DESIGN.md)."""
    pairs = []
    for finding in result.pairs:
        cells = []
        for cell in finding.cells:
            ids = result.activations.image_ids[cell.exemplars].tolist() if cell.exemplars else []
            cells.append({
                "cell": list(cell.cell), "score": float(cell.score), "count": int(cell.count),
                "count_a": int(cell.count_a), "attribution_a": float(cell.attribution_a),
                "attribution_b": float(cell.attribution_b), "exemplar_ids": [int(i) for i in ids],
                "icon": icon_path(cell.cell) if cell.cell in finding.icons else None,
            })
        pairs.append({"a": finding.a_name, "b": finding.b_name, "confused": finding.confused,
                      "confusing_cells": cells, "patches": patch_rows(finding, len(pairs)),
                      "notes": list(finding.notes)})
    timings = {k: timings.get(k, 0.0) for k in ("capture", "attribution", "layout", "render", "patches", "total")}
    config = result.config.to_dict()
    config.update({"seed": seed, "normalize": [list(map(float, v)) for v in normalize] if normalize else None,
                   "layout_params": layout_params, "score": SCORE_DESCRIPTION})
    return {
        "schema_version": SCHEMA_VERSION, "layer": layer, "num_samples": len(result.activations),
        "num_images": int(labels.size), "accuracy": float((labels == preds).mean()) if labels.size else 0.0,
        "classes": list(result.class_names), "confusion_matrix": result.confusion.tolist(), "pairs": pairs,
        "timings_s": timings, "config": config, "versions": _versions(),
    }


def icon_path(cell: tuple[int, int]) -> str:
    """Where a main-atlas cell's icon is written, relative to the run directory."""
    return f"icons/cell_{cell[0]:02d}_{cell[1]:02d}.png"


def suite_dir(index: int) -> str:
    """Where the suite of the `index`-th pair is written, relative to the run directory."""
    return f"suite/pair{index}"


def patch_rows(finding, index: int) -> list[dict]:
    """The `patches` list of a pair in summary.json (kept patches x placements, best first)."""
    from ..patches.suite import summary_patch_entries

    if finding.patches is None:
        return []
    return summary_patch_entries(finding.patches, prefix=f"{suite_dir(index)}/patches/")
