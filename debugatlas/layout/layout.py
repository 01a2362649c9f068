"""Layout: place activation vectors in the unit square (or on the unit interval).

UMAP (umap-learn) with the activation-atlas paper's settings is the default; t-SNE and PCA
(scikit-learn) are options. Every layout is normalised per axis so that its 1st–99th
percentile range maps to [0.1, 0.9] (outliers clipped to [0, 1]).

PCA honours ``metric="cosine"`` by scaling every vector to unit length first; t-SNE and UMAP
take the metric directly.

Degenerate input: when all vectors are identical under the metric (for "cosine": all point in
the same direction, or are all zero) no layout carries information, so every point is placed at
the centre (0.5) and ``params_["degenerate"]`` says why. Partly repeated vectors are laid out
as usual.

Large N: with ``knn="exact"``, or ``knn="auto"`` and a CUDA `device` for 4,096 or more
vectors, UMAP gets exact nearest neighbours computed in torch (``precomputed_knn``) instead of
its approximate NN-descent search. ``pca_dims`` first projects the vectors on their top
principal components (computed in torch) before UMAP or t-SNE, which makes the neighbour search
cheaper at a small cost in fidelity.

Fast backend: ``backend="torch"`` (chosen by ``backend="auto"`` for UMAP with a cosine or
euclidean metric, at every size, on a GPU and on the CPU) replaces umap-learn's pipeline: PCA
(``pca_dims``) and exact kNN in torch on `device` (on the CPU from 4,096 vectors ``knn="auto"``
uses umap-learn's NN-descent on the projected vectors instead), UMAP's fuzzy simplicial set (in
torch; umap-learn's on the CPU from 50,000 vectors, where it needs less memory), a PCA start
instead of the spectral one, and an own implementation of UMAP's SGD in which every edge sampled
in an epoch moves its points at once (torch on the GPU, a compiled parallel loop on the CPU whose
seeded result is the same for any thread count). The compiled loop is cached on disk (numba
``cache=True``; ``NUMBA_CACHE_DIR`` moves the cache), so below 4,096 vectors on the CPU nothing is
compiled after the first run on a machine, whereas umap-learn compiles its own functions again
in every process. On the CPU the NN-descent search runs on all numba threads: its result, and so
the layout, is fixed by the seed and the thread count. ``params_`` records which parts ran and
their seconds.

TorchDR backend: ``backend="torchdr"`` (optional, ``pip install torchdr``; never chosen by "auto")
runs ``torchdr.UMAP`` on `device` after the same ``pca_dims`` projection: exact kNN from the full
N x N distance matrix in torch (memory grows as N^2), UMAP's graph and a PCA start, then SGD with
negative sampling, seeded through torch's global generators, which are restored afterwards.

Each backend is a module with one `fit(x, settings)`: `_umap_learn`, `_torch` (its stages in
`torch_umap`), `_torchdr`, `_tsne` and `_pca`; `_settings` checks the settings and holds the rule
of "auto", `knn` the neighbour searches, `_projection` the ``pca_dims`` PCA and `normalize` the
input checks and `normalize_layout`.
"""
from __future__ import annotations

import difflib
import inspect
import logging
from typing import Any

import numpy as np
import torch

from ..core.errors import DebugAtlasError
from ..core.versions import package_versions
from . import _pca, _torch, _torchdr, _tsne, _umap_learn
from ._settings import Settings, check_samples, check_settings, pick_backend
from .normalize import as_float32, normalize_layout

log = logging.getLogger(__name__)


class Layout:
    """Seeded 1-D or 2-D layout of activation vectors, normalised to [0, 1].

    Settings: `method` "umap" | "tsne" | "pca"; `n_components` 1 or 2; `n_neighbors`,
    `min_dist` (UMAP); `metric`; `seed` (random_state of every method); `perplexity` (t-SNE);
    `knn` (UMAP neighbours: "exact" in torch on `device`, "nndescent" umap-learn's own search,
    "auto": for the torch backend exact on a CUDA device or below 4,096 vectors, else NN-descent;
    for umap-learn exact only on a CUDA device for 4,096 or more vectors); `pca_dims` (UMAP / t-SNE:
    project on that many principal components first; None keeps all features); `backend` (UMAP:
    "umap-learn", "torch" the fast path of this module's docstring on `device`, "auto" torch
    for the cosine and euclidean metrics at every size, else umap-learn; "torchdr" runs
    `torchdr.UMAP` on `device`, an optional dependency that "auto" never picks); `n_epochs` (UMAP's
    epochs, TorchDR's `max_iter`; None: 500 up to 10,000 vectors, else 200, as umap-learn).

    As a scikit-learn estimator, `__init__` only stores the settings, `fit` checks them, and
    `get_params` / `set_params` read and change them (so `sklearn.base.clone` works).

    ``Layout(method="umap").fit(vectors)`` sets:
      embedding_:     [N, n_components] float32 in [0, 1] (see `normalize_layout`).
      raw_embedding_: [N, n_components] float32, the method's output before normalisation.
      params_:        dict of plain values: every setting, the sample count, the method used for
                      nearest neighbours, the backend (and for "torch" and "torchdr" the graph,
                      start, optimiser and `stage_seconds`), whether the input was degenerate,
                      versions (with torchdr's for that backend).
    """

    def __init__(
        self,
        method: str = "umap",
        n_components: int = 2,
        n_neighbors: int = 50,
        min_dist: float = 0.05,
        metric: str = "cosine",
        seed: int = 0,
        perplexity: float = 30.0,
        knn: str = "auto",
        device: torch.device | str | None = None,
        n_epochs: int | None = None,
        pca_dims: int | None = None,
        backend: str = "auto",
    ) -> None:
        self.method = method
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.metric = metric
        self.seed = seed
        self.perplexity = perplexity
        self.knn = knn
        self.device = device
        self.n_epochs = n_epochs
        self.pca_dims = pca_dims
        self.backend = backend

    # -- scikit-learn's estimator protocol ------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [name for name in inspect.signature(cls.__init__).parameters if name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters by name, as stored. `deep` is scikit-learn's flag for
        nested estimators; a Layout holds none, so it changes nothing."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "Layout":
        """Change constructor parameters by name and return self; checked by the next `fit`.

        An unknown name raises a `DebugAtlasError` listing the valid ones, before anything changes.
        """
        valid = self._param_names()
        for name in params:
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" HINT: did you mean {close[0]!r}?" if close else ""
                raise DebugAtlasError(
                    f"`Layout.set_params({name}=...)`: Layout has no parameter {name!r}; "
                    f"valid parameters are {valid}.{hint}"
                )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    # -- fitting --------------------------------------------------------------------------------
    def neighbours(self, vectors: torch.Tensor | np.ndarray) -> tuple | None:
        """The nearest-neighbour lists `fit` would search for `vectors` with these settings, to be
        shared by several layouts of the same vectors (`fit(..., neighbours=)`): layouts with
        other seeds, `min_dist` or a smaller `n_neighbors` cut them instead of searching again.
        None where the backend that runs is not "torch" (the others search their own)."""
        settings = self.get_params()
        s = check_settings(settings)
        x = as_float32(vectors)
        check_samples(settings, x)
        if s.method != "umap" or self._backend(x.shape[0]) != "torch":
            return None
        return _torch.neighbours(torch.as_tensor(x, device=s.run_device), s)

    def fit(self, vectors: torch.Tensor | np.ndarray, neighbours: tuple | None = None) -> "Layout":
        """Lay out `vectors` [N, C] (any float dtype, torch or numpy); returns self.

        neighbours: the lists of `neighbours` for the same vectors, from a Layout with the same
        metric, `pca_dims` and `knn` and at least this `n_neighbors` (the torch backend cuts them;
        the other backends search their own).
        """
        settings = self.get_params()
        s = check_settings(settings)
        x = as_float32(vectors)
        check_samples(settings, x)
        params = _recorded_settings(s, x)
        backend = self._backend(x.shape[0])
        if s.method == "umap":
            params["backend"] = backend
        xt = torch.as_tensor(x, device=s.run_device if backend in ("torch", "torchdr") else "cpu")
        reason = _degenerate(xt, s.metric)
        if reason is not None:
            params["degenerate"] = reason
            raw = np.zeros((x.shape[0], s.n_components), dtype=np.float32)
        else:
            raw, info = self._run(backend, x, xt, s, neighbours)
            params.update(info)
        params["versions"] = package_versions(("umap-learn", "scikit-learn", "numpy", "torch",
                                               *(("torchdr",) if backend == "torchdr" else ())), missing="not installed")
        self.raw_embedding_ = np.ascontiguousarray(raw, dtype=np.float32)
        self.embedding_ = normalize_layout(self.raw_embedding_)
        self.params_ = params
        return self

    def fit_transform(self, vectors: torch.Tensor | np.ndarray) -> np.ndarray:
        """`fit(vectors)` and return `embedding_`."""
        return self.fit(vectors).embedding_

    def _backend(self, n: int) -> str | None:
        """The UMAP backend that runs on `n` vectors (None for t-SNE and PCA), by the rule of
        `backend="auto"`, which picks the same at every `n` and on every device."""
        return pick_backend(self.method, self.backend, self.metric)

    def _run(self, backend: str | None, x: np.ndarray, xt: torch.Tensor, s: Settings,
             neighbours: tuple | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The raw layout of `x` (numpy) / `xt` (on the backend's device) and the entries of
        ``params_`` that say what ran."""
        if backend == "torch":
            if neighbours is not None and neighbours[0].shape[1] < s.n_neighbors:
                raise DebugAtlasError(f"`Layout.fit(neighbours=...)` holds {neighbours[0].shape[1]} neighbours per "
                                      f"vector, fewer than n_neighbors={s.n_neighbors}; compute them with the "
                                      "largest n_neighbors of the layouts that share them.")
            return self._torch_or_fallback(x, xt, s, neighbours)
        if backend == "torchdr":
            return _torchdr.fit(xt, s)
        if s.method == "umap":
            return _umap_learn.fit(x, s)
        if s.method == "tsne":
            return _tsne.fit(x, s)
        return _pca.fit(x, s)

    def _torch_or_fallback(self, x: np.ndarray, xt: torch.Tensor, s: Settings, neighbours: tuple | None = None
                           ) -> tuple[np.ndarray, dict[str, Any]]:
        """The torch backend. When "auto" chose it and it fails on a GPU (e.g. out of memory),
        umap-learn runs instead, logged and recorded in ``params_["backend_fallback"]``."""
        try:
            return _torch.fit(xt, s, neighbours)
        except RuntimeError as exc:
            if s.backend != "auto" or xt.device.type == "cpu":
                raise
            reason = f"torch backend on {xt.device} failed ({type(exc).__name__}: {str(exc)[:200]})"
            log.warning("Layout: %s; using umap-learn instead", reason)
            raw, info = _umap_learn.fit(x, s)
            return raw, {"backend": "umap-learn", "backend_fallback": reason, **info}


def _recorded_settings(s: Settings, x: np.ndarray) -> dict[str, Any]:
    """The start of ``params_``: the settings that apply to `s.method` and the input's shape."""
    params: dict[str, Any] = {
        "method": s.method, "n_components": s.n_components, "metric": s.metric,
        "seed": s.seed, "n_samples": int(x.shape[0]), "n_features": int(x.shape[1]),
        "normalization": {"low": 1.0, "high": 99.0, "margin": 0.1}, "degenerate": None,
    }
    if s.method == "umap":
        params.update(n_neighbors=s.n_neighbors, min_dist=s.min_dist, n_epochs=s.n_epochs)
    elif s.method == "tsne":
        params.update(perplexity=s.perplexity)
    return params


def _degenerate(x: torch.Tensor, metric: str) -> str | None:
    """Why the vectors `x` [N, C] cannot be laid out (all identical under the metric), or None."""
    if float((x.amax(0) - x.amin(0)).max()) == 0:
        return f"all {x.shape[0]} vectors are identical"
    if metric == "cosine":
        norm = x.norm(dim=1, keepdim=True)
        unit = torch.where(norm > 0, x / norm.clamp_min(1e-30), 0.0)
        if float((unit.amax(0) - unit.amin(0)).max()) <= 1e-6:
            return f"all {x.shape[0]} vectors point in the same direction (cosine distance 0)"
    return None


