"""Features: the confirmed cells of a pair that show one thing, grouped into one finding.

A feature the model has learned rarely falls in exactly one atlas cell: a planted tag spreads over
two adjacent cells and a third one apart, and each confirms on its own. Read as three findings it
is three features where there is one. Two confirmed cells of one pair are the same feature when
any of these holds (`FEATURE_RULE`):

- their directions agree: the cosine of their whitened mean activations (`cell_directions`, the
  directions the icons are rendered from) is at least `SAME_DIRECTION`;
- they are largely the same images: the exemplar images they share are at least
  `SHARED_EXEMPLARS` of the smaller cell's exemplars;
- they touch in the atlas (8-neighbours) with the same class mix (cosine of their class
  histograms at least `SAME_MIX`) and directions that do not disagree (cosine at least
  `NEIGHBOUR_DIRECTION`).

Features are the connected groups under these links, each led by its best cell in the order the
findings are ranked; a feature's order is its leader's.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

SAME_DIRECTION = 0.8
SHARED_EXEMPLARS = 0.5
SAME_MIX = 0.9
NEIGHBOUR_DIRECTION = 0.5
FEATURE_RULE = (
    f"Confirmed cells of one pair are one feature when their whitened mean directions have a cosine "
    f">= {SAME_DIRECTION}, or they share >= {SHARED_EXEMPLARS:.0%} of the smaller cell's exemplar images, "
    f"or they are 8-neighbours in the atlas whose class mixes have a cosine >= {SAME_MIX} and whose "
    f"directions have a cosine >= {NEIGHBOUR_DIRECTION}; a feature is a connected group, led by its "
    "best-ranked cell."
)

Cell = tuple[int, int]


def _cosines(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return unit @ unit.T


def linked(cells: Sequence[Cell], *, means: np.ndarray, whitening: torch.Tensor | None,
           mixes: np.ndarray, exemplars: Sequence[set]) -> np.ndarray:
    """[n, n] bool: which pairs of `cells` are one feature by `FEATURE_RULE`.

    means [n, C]: the cells' mean activations; whitening [C, C] or None (plain directions);
    mixes [n, K]: their class histograms; exemplars: each cell's exemplar image ids.
    """
    from ..render import cell_directions

    n = len(cells)
    directions = cell_directions(torch.as_tensor(np.asarray(means, dtype=np.float32)), whitening).numpy()
    direction = directions @ directions.T
    mix = _cosines(np.asarray(mixes, dtype=np.float64))
    out = direction >= SAME_DIRECTION
    for i in range(n):
        for j in range(i + 1, n):
            smaller = min(len(exemplars[i]), len(exemplars[j]))
            shared = smaller > 0 and len(exemplars[i] & exemplars[j]) >= SHARED_EXEMPLARS * smaller
            touching = max(abs(cells[i][0] - cells[j][0]), abs(cells[i][1] - cells[j][1])) == 1
            neighbours = touching and mix[i, j] >= SAME_MIX and direction[i, j] >= NEIGHBOUR_DIRECTION
            out[i, j] = out[j, i] = bool(out[i, j] or shared or neighbours)
    np.fill_diagonal(out, True)
    return out


def groups(links: np.ndarray) -> list[list[int]]:
    """Connected groups of indices 0..n-1 under `links`, each in index order, ordered by their first."""
    n = len(links)
    seen: set[int] = set()
    out = []
    for start in range(n):
        if start in seen:
            continue
        group, todo = [], [start]
        seen.add(start)
        while todo:
            k = todo.pop()
            group.append(k)
            for j in np.flatnonzero(links[k]):
                if int(j) not in seen:
                    seen.add(int(j))
                    todo.append(int(j))
        out.append(sorted(group))
    return out
