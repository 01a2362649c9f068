"""Features: the confirmed cells of a pair that show one thing, grouped into one finding.

A feature the model has learned rarely falls in exactly one atlas cell: a planted tag spreads over
two adjacent cells and a third one apart, and each confirms on its own. Read as three findings it
is three features where there is one. Two confirmed cells of one pair are the same feature when
any of these holds (`FEATURE_RULE`):

- their directions agree: the cosine of their whitened mean activations (`cell_directions`, the
  directions the icons are rendered from) is at least `SAME_DIRECTION`;
- they are largely the same images: the exemplar images they share are at least
  `SHARED_EXEMPLARS` of the smaller cell's exemplars;
- they lie on one island of the atlas with the same class mix: their exemplars' class mixes
  agree (cosine at least `SAME_MIX`), and a path of valid cells, each an 8-neighbour of the next,
  leads from one to the other on which every cell between has a class histogram within cosine
  `SAME_MIX` of both ends' exemplar mixes (`same_island`). A confirmed cell's mix is its
  exemplars' (the images its finding shows): a cell where the island meets the rest of the atlas
  holds many other samples, while its exemplars, the samples nearest its mean, are the feature's.

The island link is what holds a feature whose samples the layer represents in two ways together:
a small tag pasted at even and at odd offsets of a stride-2 layer gives two sets of vectors whose
whitened directions are nearly orthogonal, in disjoint images, yet the layout keeps them in one
patch of cells of the planted class, apart from everything else.

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
FEATURE_RULE = (
    f"Confirmed cells of one pair are one feature when their whitened mean directions have a cosine "
    f">= {SAME_DIRECTION}, or they share >= {SHARED_EXEMPLARS:.0%} of the smaller cell's exemplar images, "
    f"or their exemplars' class mixes have a cosine >= {SAME_MIX} and a path of valid 8-neighbour cells "
    f"joins them on which every cell between has a class mix with a cosine >= {SAME_MIX} to both ends' "
    "(one island of the same mix); a feature is a connected group, led by its best-ranked cell."
)

Cell = tuple[int, int]


def linked(cells: Sequence[Cell], *, means: np.ndarray, whitening: torch.Tensor | None,
           exemplars: Sequence[set], mixes: np.ndarray, grid_mixes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """[n, n] bool: which pairs of `cells` are one feature by `FEATURE_RULE`.

    means [n, C]: the cells' mean activations; whitening [C, C] or None (plain directions);
    exemplars: each cell's exemplar image ids; mixes [n, K]: the class histograms of the cells'
    exemplars; grid_mixes [G, G, K]: every cell's class histogram (of all its samples);
    valid [G, G] bool: the atlas's valid cells (the cells a path may cross).
    """
    from ..render import cell_directions

    n = len(cells)
    directions = cell_directions(torch.as_tensor(np.asarray(means, dtype=np.float32)), whitening).numpy()
    out = directions @ directions.T >= SAME_DIRECTION
    ends, grid = _unit(mixes), _unit(grid_mixes)
    for i in range(n):
        for j in range(i + 1, n):
            smaller = min(len(exemplars[i]), len(exemplars[j]))
            shared = smaller > 0 and len(exemplars[i] & exemplars[j]) >= SHARED_EXEMPLARS * smaller
            island = same_island(cells[i], cells[j], ends[i], ends[j], grid, valid)
            out[i, j] = out[j, i] = bool(out[i, j] or shared or island)
    np.fill_diagonal(out, True)
    return out


def _unit(histograms: np.ndarray) -> np.ndarray:
    """Class histograms scaled to unit length along the last axis (zeros stay zero)."""
    h = np.asarray(histograms, dtype=np.float64)
    norms = np.linalg.norm(h, axis=-1, keepdims=True)
    return np.divide(h, norms, out=np.zeros_like(h), where=norms > 0)


def same_island(a: Cell, b: Cell, mix_a: np.ndarray, mix_b: np.ndarray, grid: np.ndarray,
                valid: np.ndarray) -> bool:
    """Whether cells `a` and `b`, of unit class mixes `mix_a` and `mix_b`, lie on one island: the
    mixes agree (cosine >= `SAME_MIX`) and a path of valid 8-neighbour cells leads from `a` to `b`
    on which every cell between has a mix (`grid` [G, G, K], unit rows) within cosine `SAME_MIX` of
    both."""
    if float(mix_a @ mix_b) < SAME_MIX:
        return False
    g0, g1 = valid.shape
    seen, todo = {a}, [a]
    while todo:
        i, j = todo.pop()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                cell = (i + di, j + dj)
                if cell == b:
                    return True
                if cell in seen or not (0 <= cell[0] < g0 and 0 <= cell[1] < g1) or not valid[cell]:
                    continue
                seen.add(cell)
                if float(grid[cell] @ mix_a) >= SAME_MIX and float(grid[cell] @ mix_b) >= SAME_MIX:
                    todo.append(cell)
    return False


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
