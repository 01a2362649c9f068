"""The umap-learn backend, `Layout(backend="umap-learn")`: umap-learn's UMAP after the
``pca_dims`` projection, with exact neighbours from torch where `knn` asks for them."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from . import knn as _knn
from ._projection import project_numpy
from ._settings import Settings


def fit(x: np.ndarray, s: Settings) -> tuple[np.ndarray, dict[str, Any]]:
    """`umap.UMAP` of `x` [N, C] float32: (raw layout [N, n_components], the entries of
    ``params_`` that say how the neighbours were found).

    Neighbours are exact, from torch on `s.device` (umap-learn's ``precomputed_knn``), for
    ``knn="exact"``, and for ``knn="auto"`` on a CUDA device from 4,096 vectors with the cosine or
    euclidean metric; otherwise umap-learn finds them (all pairwise distances below 4,096
    vectors, NN-descent above).
    """
    x = project_numpy(x, s.pca_dims, s.run_device)
    info: dict[str, Any] = {"pca_dims": s.pca_dims}
    with warnings.catch_warnings():  # "Tensorflow not installed; ParametricUMAP unavailable"
        warnings.simplefilter("ignore", ImportWarning)
        import umap

    device = s.device
    exact = s.knn == "exact" or (
        s.knn == "auto" and device is not None and device.type == "cuda"
        and x.shape[0] >= _knn.SMALL_DATA and s.metric in _knn.TORCH_METRICS
    )
    kwargs: dict[str, Any] = {}
    if exact:
        indices, dists = _knn.exact_knn(x, s.n_neighbors, s.metric, device or "cpu")
        kwargs = {"precomputed_knn": (indices, dists), "force_approximation_algorithm": True}
        info["knn"] = f"exact (torch, {device or torch.device('cpu')})"
    else:
        info["knn"] = "exact (umap)" if x.shape[0] < _knn.SMALL_DATA else "nndescent (umap)"
    reducer = umap.UMAP(
        n_components=s.n_components, n_neighbors=s.n_neighbors, min_dist=s.min_dist,
        metric=s.metric, random_state=s.seed, n_jobs=1, n_epochs=s.n_epochs, **kwargs,
    )
    with warnings.catch_warnings():  # no `transform` later, so no search index is needed
        warnings.filterwarnings("ignore", message=r".*knn_search_index.*")
        return reducer.fit_transform(x), info
