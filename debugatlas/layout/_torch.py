"""The torch backend, `Layout(backend="torch")`: UMAP's pipeline with the stages of `torch_umap`.

PCA (``pca_dims``) and neighbours on the input's device (exact in torch; on the CPU from 4,096
vectors ``knn="auto"`` takes umap-learn's NN-descent), UMAP's fuzzy graph (in torch; umap-learn's
on the CPU from `GRAPH_MIN_CPU` vectors, where it needs less memory), a PCA start and the
batched SGD of `torch_umap.optimize`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import knn as _knn, torch_umap as _fast
from ._laps import Laps
from ._projection import project
from ._settings import Settings

GRAPH_MIN_CPU = 50_000  # on the CPU from here on the graph is umap-learn's (less memory)


def fit(x: torch.Tensor, s: Settings, shared: tuple[torch.Tensor, torch.Tensor, str] | None = None
        ) -> tuple[np.ndarray, dict[str, Any]]:
    """UMAP of `x` [N, C] float32 on x's device: (raw layout [N, n_components], the entries of
    ``params_`` that say which parts ran, with `stage_seconds`).

    shared: kNN lists of the same vectors from `neighbours` (indices, distances [N, k] with
    k >= n_neighbors, and how they were found): cut to the first n_neighbors instead of searched.
    """
    n, device, features = x.shape[0], x.device, x.shape[1]
    n_epochs = s.epochs(n)
    lap = Laps(device)
    info: dict[str, Any] = {"pca_dims": s.pca_dims}
    x = project(x, s.pca_dims)
    lap("pca")
    if shared is None:
        indices, dists, info["knn"] = _neighbours(x, s, features)
    else:
        indices, dists = (t[:, :s.n_neighbors].to(device).contiguous() for t in shared[:2])
        info["knn"] = f"{shared[2]}, shared: the first {s.n_neighbors} of {shared[0].shape[1]}"
    lap("knn")
    head, tail, weight, info["graph"] = _graph(indices, dists, s, device)
    keep = weight >= weight.max() / n_epochs  # umap-learn drops edges too weak to be sampled
    head, tail, weight = head[keep], tail[keep], weight[keep]
    lap("graph")
    generator = torch.Generator(device=device).manual_seed(s.seed)
    y = _fast.pca_init(x, s.n_components, s.metric, generator)
    info["init"] = "pca"
    lap("init")
    a, b = _fast.ab_params(1.0, s.min_dist)
    y = _fast.optimize(y, head, tail, weight, n_epochs, float(a), float(b), s.seed)
    info["optimizer"] = "batched SGD (" + ("numba, cpu)" if device.type == "cpu" else f"torch, {device})")
    info.update(n_epochs_run=n_epochs, n_edges=int(head.numel()))
    raw = y.cpu().numpy()
    lap("optimise")
    info["stage_seconds"] = lap.seconds
    return raw, info


def neighbours(x: torch.Tensor, s: Settings) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The kNN lists `fit` would search for `x` [N, C] with `s` (after the ``pca_dims``
    projection): indices, distances [N, n_neighbors] and how they were found."""
    return _neighbours(project(x, s.pca_dims), s, x.shape[1])


def _neighbours(x: torch.Tensor, s: Settings, features: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """kNN of the (projected) `x`: indices, distances [N, k] and how they were found."""
    n, device = x.shape[0], x.device
    exact = s.knn == "exact" or (s.knn == "auto" and (device.type == "cuda" or n < _knn.SMALL_DATA))
    if exact:
        chunk = 2**30 if device.type == "cuda" else 256 * 2**20
        indices, dists = _knn.knn_torch(x, s.n_neighbors, s.metric, chunk)
        return indices, dists, f"exact (torch, {device})"
    indices, dists = _knn.nndescent(x, s.n_neighbors, s.metric, s.seed)
    return indices, dists, "nndescent (umap, " + ("projected vectors)" if x.shape[1] < features else "all features)")


def _graph(indices: torch.Tensor, dists: torch.Tensor, s: Settings, device: torch.device
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """UMAP's fuzzy graph of the kNN lists: head, tail, weight [E] and where it was computed."""
    if device.type == "cuda" or indices.shape[0] < GRAPH_MIN_CPU:  # torch: nothing to compile (umap-learn's is not cached)
        head, tail, weight = _fast.fuzzy_graph(indices.to(device), dists.to(device), s.n_neighbors)
        return head, tail, weight, f"fuzzy simplicial set (torch, {device})"
    head, tail, weight = _fast.umap_graph(indices, dists, s.n_neighbors, s.metric, s.seed)
    return head, tail, weight, "fuzzy simplicial set (umap)"
