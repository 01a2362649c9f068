"""Atlas: bin a 2-D layout of activation vectors into a grid and summarise every cell.

A cell holds the samples whose layout point falls inside it. Per cell the atlas keeps the count,
the mean activation vector (the direction a renderer turns into an icon), the histogram of true
labels, the mean attribution to every class, and exemplars: the real samples closest to the mean.

Class filters keep the samples that matter for one class ("winner" ∪ top-N by attribution) and
lay them out again; the two-class comparison puts the attribution difference on the x axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .core.errors import DebugAtlasError
from .capture import ActivationSet

MIN_FILTER_SAMPLES = 5
_CHUNK = 65536


def _as_numpy(values: Any, name: str, dtype=np.float32) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DebugAtlasError(f"`{name}` could not be read as a {np.dtype(dtype).name} array: {exc}.") from exc


def _check_grid_size(grid_size: Any) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)) or grid_size < 1:
        raise DebugAtlasError(
            f"`grid_size={grid_size!r}` must be an int >= 1. HINT: typical sizes are 20, 40 or 80."
        )
    return int(grid_size)


def _check_class(index: Any, num_classes: int, name: str) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < num_classes:
        raise DebugAtlasError(
            f"`{name}={index!r}` is not a class index of the attributions (0 .. {num_classes - 1}). "
            f"HINT: pass an int in range(0, {num_classes}); column c of the attributions is class c."
        )
    return int(index)


def _attribution_matrix(attributions: Any, n: int) -> np.ndarray:
    attr = _as_numpy(attributions, "attributions")
    if attr.ndim != 2 or attr.shape[0] != n or attr.shape[1] < 1:
        raise DebugAtlasError(
            f"`attributions` has shape {attr.shape}; expected [{n}, K] (one row per sample). "
            "HINT: pass the output of `attribute(...)` for the same ActivationSet."
        )
    if not np.isfinite(attr).all():
        raise DebugAtlasError("`attributions` contains NaN or Inf. HINT: check the model and the layer.")
    return attr


def bin_points(xy: Any, grid_size: int) -> np.ndarray:
    """Grid cell of every point: [N, 2] int64, column 0 = i (from x), column 1 = j (from y).

    Cells are half-open, [k/G, (k+1)/G), with the borders k/G computed in float64, so a point lying
    exactly on a border goes to the cell above it; x == 1 (or y == 1) goes to cell G-1. Every point
    lands in exactly one cell. Points must lie in [0, 1].
    """
    g = _check_grid_size(grid_size)
    pts = _as_numpy(xy, "xy", np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise DebugAtlasError(f"`xy` has shape {pts.shape}; expected [N, 2]. HINT: pass a 2-D layout.")
    if not np.isfinite(pts).all():
        raise DebugAtlasError("`xy` contains NaN or Inf. HINT: normalise the layout to [0, 1] first.")
    if pts.size and (pts.min() < 0.0 or pts.max() > 1.0):
        raise DebugAtlasError(
            f"`xy` ranges over [{pts.min():.4g}, {pts.max():.4g}]; expected values in [0, 1]. "
            "HINT: use `Layout(...).fit(vectors).embedding_` or `normalize_layout(xy)`."
        )
    edges = np.arange(g + 1, dtype=np.float64) / g
    cells = np.searchsorted(edges, pts, side="right") - 1
    return np.clip(cells, 0, g - 1).astype(np.int64)


@dataclass
class Atlas:
    """A grid over a layout of sampled activation vectors, with per-cell summaries.

    grid_size:  G, cells per side.
    xy:         [N, 2] float64 layout points in [0, 1] (x, y), as binned.
    sample_index: [N] int64 indices of the samples into the parent ActivationSet / attributions.
    cells:      [N, 2] int64 cell (i, j) of every sample; i from x, j from y.
    counts:     [G, G] int64 samples per cell, indexed [i, j].
    mean_activation: [G, G, C] float32 mean vector per cell (zeros where empty).
    class_histogram: [G, G, K] int64 samples per cell by true label.
    mean_attribution: [G, G, K] float32 mean attribution to each class per cell (zeros where empty).
    exemplars:  {(i, j): [parent-sample index, ...]} for valid cells, the samples whose vectors are
                most cosine-similar to the cell mean, best first, at most `n_exemplars`.
    min_count:  cells with fewer samples are not valid.
    valid:      [G, G] bool, counts >= min_count.
    layout_params: plain-value description of how `xy` was made.
    random_counts: [G, G] int64 samples per cell chosen by the uniformly random sampling rule
                (`ActivationSet.rule` 0); equals `counts` when every sample was random. Guided
                samples sit where attribution is high, so the unbiased density is drawn from these.
    """

    grid_size: int
    xy: np.ndarray
    sample_index: np.ndarray
    cells: np.ndarray
    counts: np.ndarray
    mean_activation: np.ndarray
    class_histogram: np.ndarray
    mean_attribution: np.ndarray
    exemplars: dict[tuple[int, int], list[int]]
    min_count: int
    valid: np.ndarray
    layout_params: dict = field(default_factory=dict)
    random_counts: np.ndarray | None = None

    def density(self) -> np.ndarray:
        """[G, G] float64 share of the uniformly random samples that fall in each cell (sums to 1).

        What a user is shown as "how common is this feature": attribution-guided samples are
        left out (they over-represent decisive features by design). Without any random sample
        (guided fraction 1) the share of all samples is returned.
        """
        counts = self.counts if self.random_counts is None or self.random_counts.sum() == 0 else self.random_counts
        total = counts.sum()
        return counts / total if total else np.zeros(counts.shape, dtype=np.float64)

    def valid_cells(self) -> list[tuple[int, int]]:
        """Cells (i, j) with at least `min_count` samples, in row-major order of (i, j)."""
        return [(int(i), int(j)) for i, j in np.argwhere(self.valid)]

    def members(self, cell: tuple[int, int]) -> np.ndarray:
        """Parent-sample indices [M] int64 of the samples in `cell`, in atlas order."""
        i, j = cell
        inside = (self.cells[:, 0] == i) & (self.cells[:, 1] == j)
        return self.sample_index[inside]


def _group_sums(values: np.ndarray, flat: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum the rows of `values` [N, D] by group id `flat` [N] -> [n_groups, D] float64."""
    out = np.zeros((n_groups, values.shape[1]), dtype=np.float64)
    if values.shape[0] == 0:
        return out
    order = np.argsort(flat, kind="stable")
    sorted_flat = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_flat[1:] != sorted_flat[:-1]])
    sums = np.add.reduceat(values[order], starts, axis=0, dtype=np.float64)
    out[sorted_flat[starts]] = sums
    return out


def _cosine_to_rows(vectors: np.ndarray, targets: np.ndarray, target_of: np.ndarray) -> np.ndarray:
    """cos(vectors[n], targets[target_of[n]]) for every n, chunked; 0 where a norm is zero."""
    out = np.zeros(vectors.shape[0], dtype=np.float64)
    t_norm = np.linalg.norm(targets.astype(np.float64), axis=1)
    for lo in range(0, vectors.shape[0], _CHUNK):
        v = vectors[lo:lo + _CHUNK].astype(np.float64)
        idx = target_of[lo:lo + _CHUNK]
        dots = np.einsum("nc,nc->n", v, targets[idx].astype(np.float64))
        denom = np.linalg.norm(v, axis=1) * t_norm[idx]
        out[lo:lo + _CHUNK] = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    return out


def _exemplars(
    vectors: np.ndarray, flat: np.ndarray, means: np.ndarray, keep: np.ndarray,
    sample_index: np.ndarray, n_exemplars: int, g: int,
) -> dict[tuple[int, int], list[int]]:
    """Up to `n_exemplars` parent indices per kept cell, by cosine to the cell mean (ties: index)."""
    chosen = np.flatnonzero(keep[flat])
    result: dict[tuple[int, int], list[int]] = {}
    if n_exemplars == 0 or chosen.size == 0:
        return {(int(c) // g, int(c) % g): [] for c in np.flatnonzero(keep)}
    cos = _cosine_to_rows(vectors[chosen], means, flat[chosen])
    order = np.lexsort((sample_index[chosen], -cos, flat[chosen]))
    f_sorted = flat[chosen][order]
    starts = np.r_[0, np.flatnonzero(f_sorted[1:] != f_sorted[:-1]) + 1]
    rank = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    top = order[rank < n_exemplars]
    f_top = flat[chosen][top]
    ids_top = sample_index[chosen][top]
    bounds = np.r_[0, np.flatnonzero(f_top[1:] != f_top[:-1]) + 1, top.size]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        c = int(f_top[lo])
        result[(c // g, c % g)] = [int(k) for k in ids_top[lo:hi]]
    return result


def build_atlas(
    xy: Any,
    acts: ActivationSet,
    attributions: Any,
    grid_size: int = 20,
    min_count: int = 1,
    n_exemplars: int = 8,
    sample_index: Any = None,
    layout_params: dict | None = None,
) -> Atlas:
    """Bin `xy` into a `grid_size` x `grid_size` grid and summarise each cell.

    `acts` and `attributions` [N_parent, K] are the parent sample set. Without `sample_index`,
    `xy` has one row per parent sample; with it, row r of `xy` belongs to parent sample
    `sample_index[r]` (e.g. a class filter). Column c of the attributions is class c; the class
    histogram has max(K, largest label + 1) columns. Exemplars are computed for valid cells only.
    """
    g = _check_grid_size(grid_size)
    if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise DebugAtlasError(f"`min_count={min_count!r}` must be an int >= 1. HINT: use 1 to keep every cell.")
    if isinstance(n_exemplars, bool) or not isinstance(n_exemplars, (int, np.integer)) or n_exemplars < 0:
        raise DebugAtlasError(f"`n_exemplars={n_exemplars!r}` must be an int >= 0.")
    if not isinstance(acts, ActivationSet):
        raise DebugAtlasError(
            f"`acts` is a {type(acts).__name__}, not an ActivationSet. HINT: pass the result of `capture(...)`."
        )
    n_parent = len(acts)
    attr = _attribution_matrix(attributions, n_parent)
    if sample_index is None:
        index = np.arange(n_parent, dtype=np.int64)
    else:
        index = _as_numpy(sample_index, "sample_index", np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= n_parent):
            raise DebugAtlasError(
                f"`sample_index` holds values in [{index.min()}, {index.max()}]; the ActivationSet has "
                f"{n_parent} samples. HINT: pass indices into the same ActivationSet."
            )
    cells = bin_points(xy, g)
    if cells.shape[0] != index.size:
        raise DebugAtlasError(
            f"`xy` has {cells.shape[0]} rows but there are {index.size} samples. "
            "HINT: pass one layout point per sample (or per entry of `sample_index`)."
        )
    labels = acts.labels.detach().cpu().numpy().astype(np.int64)[index]
    if labels.size and labels.min() < 0:
        raise DebugAtlasError(f"acts.labels holds {labels.min()}; labels must be >= 0.")
    vectors = acts.vectors[torch.as_tensor(index)].detach().cpu().float().numpy()
    attr = attr[index]
    k_attr = attr.shape[1]
    k_hist = max(k_attr, int(labels.max()) + 1 if labels.size else 0)

    flat = cells[:, 0] * g + cells[:, 1]
    counts = np.bincount(flat, minlength=g * g).astype(np.int64)
    randomly = acts.random_mask().numpy()[index]
    random_counts = np.bincount(flat[randomly], minlength=g * g).astype(np.int64)
    hist = np.bincount(flat * k_hist + labels, minlength=g * g * k_hist).astype(np.int64)
    denom = np.maximum(counts, 1)[:, None]
    mean_act = (_group_sums(vectors, flat, g * g) / denom).astype(np.float32)
    mean_attr = (_group_sums(attr, flat, g * g) / denom).astype(np.float32)
    valid = counts >= min_count
    exemplars = _exemplars(vectors, flat, mean_act, valid, index, int(n_exemplars), g)
    return Atlas(
        grid_size=g,
        xy=_as_numpy(xy, "xy", np.float64).reshape(-1, 2),
        sample_index=index,
        cells=cells,
        counts=counts.reshape(g, g),
        mean_activation=mean_act.reshape(g, g, -1),
        class_histogram=hist.reshape(g, g, k_hist),
        mean_attribution=mean_attr.reshape(g, g, k_attr),
        exemplars=exemplars,
        min_count=int(min_count),
        valid=valid.reshape(g, g),
        layout_params=dict(layout_params or {}),
        random_counts=random_counts.reshape(g, g),
    )


def class_filter_mask(attributions: Any, target: int, top_n: int) -> np.ndarray:
    """Samples relevant to class `target`: bool [N].

    True where `target` is the sample's largest attribution ("winner", ties to the lower class
    index) or where the sample is among the `top_n` largest attributions to `target` (ties to the
    lower sample index).
    """
    attr = _as_numpy(attributions, "attributions")
    if attr.ndim != 2 or attr.shape[1] < 1:
        raise DebugAtlasError(f"`attributions` has shape {attr.shape}; expected [N, K].")
    target = _check_class(target, attr.shape[1], "target")
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 0:
        raise DebugAtlasError(f"`top_n={top_n!r}` must be an int >= 0.")
    mask = attr.argmax(axis=1) == target if attr.shape[0] else np.zeros(0, dtype=bool)
    top = np.argsort(-attr[:, target], kind="stable")[: int(top_n)]
    mask[top] = True
    return mask


def filter_overlap(attributions: Any, a: int, b: int, top_n: int) -> float:
    """Share of the samples in either class filter (`class_filter_mask`) of `a` and `b` that are in
    both (Jaccard index); 1.0 when both are empty. With few classes, or `top_n` near the number of
    samples, the two filters hold much the same samples and their atlases look alike."""
    mask_a, mask_b = class_filter_mask(attributions, a, top_n), class_filter_mask(attributions, b, top_n)
    union = int((mask_a | mask_b).sum())
    return float((mask_a & mask_b).sum() / union) if union else 1.0


def _fit_layout(vectors: torch.Tensor, layout: dict | None, seed: int, **overrides) -> tuple[np.ndarray, dict]:
    """Fit `Layout` on `vectors`, shrinking the neighbourhood to fit small sample counts.

    UMAP: n_neighbors becomes min(asked, n - 1), never below 2. t-SNE: perplexity becomes
    min(asked, (n - 1) / 3), never below 1. Both the value used and the value asked are recorded.
    """
    from .layout import Layout

    kwargs = {"seed": seed, **(layout or {}), **overrides}
    n = int(vectors.shape[0])
    method = kwargs.get("method", "umap")
    adjusted: dict[str, Any] = {}
    if method == "umap":
        requested = kwargs.get("n_neighbors", 50)
        if isinstance(requested, (int, np.integer)) and not isinstance(requested, bool):
            kwargs["n_neighbors"] = max(2, min(int(requested), n - 1))
            adjusted = {"n_neighbors": kwargs["n_neighbors"], "n_neighbors_requested": int(requested)}
    elif method == "tsne":
        requested = kwargs.get("perplexity", 30.0)
        if isinstance(requested, (int, float, np.number)) and not isinstance(requested, bool):
            kwargs["perplexity"] = float(max(1.0, min(float(requested), (n - 1) / 3.0)))
            adjusted = {"perplexity": kwargs["perplexity"], "perplexity_requested": float(requested)}
    fitted = Layout(**kwargs).fit(vectors.float().numpy())
    params = dict(getattr(fitted, "params_", {}) or {})
    params.update(adjusted)
    params["n_samples"] = n
    return np.asarray(fitted.embedding_, dtype=np.float32), params


def comparison_mask(acts: ActivationSet, attributions: Any, a: int, b: int, top_n: int) -> np.ndarray:
    """Samples of the two-class comparison of classes `a` and `b`: bool [N].

    True where the sample's true label or prediction is `a` or `b`, and in the class filters of
    both classes (`class_filter_mask(attributions, a, top_n) | class_filter_mask(..., b, top_n)`).
    """
    attr = _attribution_matrix(attributions, len(acts))
    a = _check_class(a, attr.shape[1], "a")
    b = _check_class(b, attr.shape[1], "b")
    if a == b:
        raise DebugAtlasError(f"`a={a}` and `b={b}` are the same class. HINT: compare two different classes.")
    labels = acts.labels.detach().cpu().numpy()
    preds = acts.preds.detach().cpu().numpy()
    mask = np.isin(labels, (a, b)) | np.isin(preds, (a, b))
    mask |= class_filter_mask(attr, a, top_n) | class_filter_mask(attr, b, top_n)
    return mask


def view_samples(mask: np.ndarray, what: str, option: str = "top_n") -> np.ndarray:
    """Indices [M] int64 of the samples `mask` [N] selects for a view (a class filter, a comparison).

    Raises `DebugAtlasError` naming `what` and the option that widens the selection (`option`)
    when fewer than `MIN_FILTER_SAMPLES` are selected.
    """
    index = np.flatnonzero(mask)
    if index.size < MIN_FILTER_SAMPLES:
        raise DebugAtlasError(
            f"{what} selects only {index.size} samples; at least {MIN_FILTER_SAMPLES} are needed for a view. "
            f"HINT: raise `{option}`, capture more samples (larger `cap` or `samples_per_image`), "
            "or pick a class the model sees more often."
        )
    return index


def class_filtered_atlas(
    acts: ActivationSet,
    attributions: Any,
    *,
    target: int,
    top_n: int = 2000,
    grid_size: int = 20,
    layout: dict | None = None,
    min_count: int = 1,
    n_exemplars: int = 8,
    seed: int = 0,
) -> Atlas:
    """Atlas of the samples relevant to class `target` (`class_filter_mask`), laid out again.

    `layout` holds keyword arguments for `Layout` (method, n_neighbors, min_dist, metric, seed);
    n_neighbors is lowered to (number of samples - 1) when there are few samples, never below 2,
    and `layout_params` records the value used, the value asked for, and the filter. Raises
    `DebugAtlasError` naming the class when fewer than `MIN_FILTER_SAMPLES` samples are selected.
    """
    attr = _attribution_matrix(attributions, len(acts))
    index = view_samples(class_filter_mask(attr, target, top_n),
                         f"The class filter for class {int(target)} (top_n={top_n})")
    xy, params = _fit_layout(acts.vectors[torch.as_tensor(index)], layout, seed)
    params["filter"] = {"kind": "class", "target": int(target), "top_n": int(top_n)}
    return build_atlas(xy, acts, attr, grid_size, min_count, n_exemplars, index, params)


def comparison_atlas(
    acts: ActivationSet,
    attributions: Any,
    *,
    a: int,
    b: int,
    top_n: int = 2000,
    grid_size: int = 20,
    layout: dict | None = None,
    min_count: int = 1,
    n_exemplars: int = 8,
    seed: int = 0,
) -> Atlas:
    """Two-class comparison atlas of classes `a` and `b`, the other arguments as in `class_filtered_atlas`.

    Samples: `comparison_mask` (those whose true label or prediction is `a` or `b`, and the class
    filters of both classes); at least `MIN_FILTER_SAMPLES`.
    x: d = attr_a - attr_b, divided by the 99th percentile of |d| over these samples (by max |d|
    if that is 0), clipped to [-1, 1] and mapped to [0, 1]: x = 0 pulls toward b, x = 1 toward a,
    x = 0.5 is neutral (all 0.5 when every d is 0). y: a 1-D `Layout` (n_components=1) of the
    samples' vectors, n_neighbors reduced for few samples as in `class_filtered_atlas`.
    """
    attr = _attribution_matrix(attributions, len(acts))
    mask = comparison_mask(acts, attr, a, b, top_n)
    a, b = int(a), int(b)
    index = view_samples(mask, f"The comparison of classes {a} and {b} (top_n={top_n})")
    diff = attr[index, a].astype(np.float64) - attr[index, b].astype(np.float64)
    scale = float(np.percentile(np.abs(diff), 99))
    if scale <= 0:
        scale = float(np.abs(diff).max())
    x = np.clip(diff / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(diff)
    y, params = _fit_layout(acts.vectors[torch.as_tensor(index)], layout, seed, n_components=1)
    xy = np.stack([(x + 1.0) / 2.0, np.clip(y[:, 0], 0.0, 1.0)], axis=1).astype(np.float32)
    params["filter"] = {"kind": "comparison", "a": a, "b": b, "top_n": int(top_n)}
    params["x_axis"] = {"quantity": "attr_a - attr_b", "scale_p99": scale}
    return build_atlas(xy, acts, attr, grid_size, min_count, n_exemplars, index, params)
