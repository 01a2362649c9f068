"""Patch tests inside `analyze()`: candidates from atlas cells, measured against controls, kept as suites."""
from __future__ import annotations

import numpy as np
import torch

from ..atlas import Atlas
from ..capture import ActivationSet
from ..core.datasets import load_images
from .config import AnalysisConfig

PLACEMENTS = ("static", "dynamic", "random")


def candidate_cells(finding, atlas: Atlas, config: AnalysisConfig) -> list[tuple[int, int]]:
    """Cells to try as patches for (a, b): the confusing cells, then the cells with the most
    attribution toward b over a among all their samples, alternating, up to `patch_cells`.

    The second list matters: a feature planted in images of b (a trigger) is not found in images
    of a, yet pasting it is exactly what flips a to b.
    """
    confusing = [c.cell for c in finding.cells]
    push = atlas.mean_attribution[..., finding.b] - atlas.mean_attribution[..., finding.a]
    push = np.where(atlas.valid, push, -np.inf)
    order = np.argsort(-push, axis=None, kind="stable")
    by_push = [(int(f // atlas.grid_size), int(f % atlas.grid_size)) for f in order if np.isfinite(push.flat[f])]
    chosen: list[tuple[int, int]] = []
    for pair in zip(confusing + [None] * len(by_push), by_push + [None] * len(confusing)):
        for cell in pair:
            if cell is not None and cell not in chosen and len(chosen) < config.patch_cells:
                chosen.append(cell)
    return chosen


def images_of(dataset, acts: ActivationSet, cls: int, limit: int, seed: int) -> torch.Tensor | None:
    """The patch tests' images of `cls`: up to `limit` of its captured images, a seeded choice
    in id order (None when the class has none)."""
    uid, labels, _ = acts.per_image()
    ids = uid[labels == cls]
    if ids.size == 0:
        return None
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.permutation(ids)[:limit])
    return load_images(dataset, ids)


def run_patch_tests(model, module, dataset, acts: ActivationSet, atlas: Atlas, findings: list,
                    icons: dict, names: list[str], config: AnalysisConfig, seed: int, device, progress: bool):
    """Measure patches for every finding; sets `finding.patches` to its `PatchSuite`; returns the suites."""
    from ..core.progress import progress_bar
    from ..patches import build_suite, candidate_patches
    from ..render import exemplar_crops

    suites = []
    for finding in findings:
        cells = candidate_cells(finding, atlas, config)
        entries = []
        for cell in cells:
            samples = atlas.exemplars.get(cell, [])[:4]
            crops = list(exemplar_crops(model, module, dataset, acts, samples)) if samples else []
            entries.append((cell, icons.get(cell), crops))
        kwargs = {"crop_sizes": config.crop_sizes} if config.crop_sizes else {}
        # Exemplar crops are tried at native pixels and resized; a receptive field covering most of
        # a small image flips by occlusion alone, which the same-geometry controls then discount.
        candidates = candidate_patches(entries, resize_exemplars=None, **kwargs)
        images_a = images_of(dataset, acts, finding.a, config.max_patch_images, seed)
        images_b = images_of(dataset, acts, finding.b, config.max_patch_images, seed + 1)
        if images_a is None or not candidates:
            finding.notes.append("patch tests skipped: no images of A or no candidate patches")
            continue
        finding.patches = build_suite(
            model, images_a, images_b, finding.a, finding.b, candidates, names, sizes=config.patch_sizes,
            placements=PLACEMENTS, n_random=config.n_random, seed=seed, keep=10, device=device,
            progress=progress_bar(progress, f"patches {finding.a_name}->{finding.b_name}"),
            metadata={"candidate_cells": [list(c) for c in cells], "layer": acts.layer},
        )
        suites.append(finding.patches)
    return suites
