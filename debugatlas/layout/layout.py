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
"""
from __future__ import annotations

import logging
import time
import warnings
from importlib import metadata
from typing import Any

import numpy as np
import torch

from ..core.errors import DebugAtlasError
from . import torch_umap as _fast, torchdr as _torchdr

log = logging.getLogger(__name__)

METHODS = ("umap", "tsne", "pca")
KNN = ("auto", "exact", "nndescent")
BACKENDS = ("auto", "umap-learn", "torch", "torchdr")
_TORCH_KNN_METRICS = ("cosine", "euclidean")
_UMAP_SMALL_DATA = 4096  # below this umap-learn computes all pairwise distances itself
_UMAP_GRAPH_MIN_CPU = 50_000  # on the CPU from here on the torch backend takes umap-learn's graph (less memory)


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

    def fit(self, vectors: torch.Tensor | np.ndarray) -> "Layout":
        """Lay out `vectors` [N, C] (any float dtype, torch or numpy); returns self."""
        self._check_settings()
        x = _as_float32(vectors)
        self._check_samples(x)
        params: dict[str, Any] = {
            "method": self.method, "n_components": int(self.n_components), "metric": self.metric,
            "seed": int(self.seed), "n_samples": int(x.shape[0]), "n_features": int(x.shape[1]),
            "normalization": {"low": 1.0, "high": 99.0, "margin": 0.1}, "degenerate": None,
        }
        if self.method == "umap":
            params.update(n_neighbors=int(self.n_neighbors), min_dist=float(self.min_dist),
                          n_epochs=None if self.n_epochs is None else int(self.n_epochs))
        elif self.method == "tsne":
            params.update(perplexity=float(self.perplexity))
        backend = self._backend(x.shape[0])
        if self.method == "umap":
            params["backend"] = backend
        xt = torch.as_tensor(x, device=self._device() if backend in ("torch", "torchdr") else "cpu")
        reason = _degenerate(xt, self.metric)
        if reason is not None:
            params["degenerate"] = reason
            raw = np.zeros((x.shape[0], self.n_components), dtype=np.float32)
        elif backend == "torch":
            raw = self._umap_torch_or_fallback(x, xt, params)
        elif backend == "torchdr":
            raw = self._umap_torchdr(xt, params)
        elif self.method == "umap":
            raw = self._umap(self._reduce(x, params), params)
        elif self.method == "tsne":
            raw = self._tsne(self._reduce(x, params))
        else:
            raw = self._pca(x, params)
        params["versions"] = _versions(("torchdr",) if backend == "torchdr" else ())
        self.raw_embedding_ = np.ascontiguousarray(raw, dtype=np.float32)
        self.embedding_ = normalize_layout(self.raw_embedding_)
        self.params_ = params
        return self

    def fit_transform(self, vectors: torch.Tensor | np.ndarray) -> np.ndarray:
        """`fit(vectors)` and return `embedding_`."""
        return self.fit(vectors).embedding_

    # -- checks ---------------------------------------------------------------------------------
    def _call(self) -> str:
        return f"Layout(method={self.method!r})"

    def _check_settings(self) -> None:
        if self.method not in METHODS:
            raise DebugAtlasError(f"`Layout(method={self.method!r})` is not one of {list(METHODS)}.")
        if self.n_components not in (1, 2) or isinstance(self.n_components, bool):
            raise DebugAtlasError(
                f"`Layout(n_components={self.n_components!r})` must be 1 or 2 "
                "(2 for an atlas, 1 for the axis of a two-class comparison)."
            )
        if self.knn not in KNN:
            raise DebugAtlasError(f"`Layout(knn={self.knn!r})` is not one of {list(KNN)}.")
        if self.backend not in BACKENDS:
            raise DebugAtlasError(
                f"`Layout(backend={self.backend!r})` is not one of {list(BACKENDS)}. HINT: \"auto\" "
                "picks \"torch\" for large inputs and \"umap-learn\" otherwise."
            )
        if self.backend in ("torch", "torchdr") and self.method != "umap":
            raise DebugAtlasError(
                f"`Layout(method={self.method!r}, backend={self.backend!r})`: the {self.backend} "
                "backend lays out with UMAP only. HINT: use method='umap' or leave backend='auto'."
            )
        if self.backend == "torch" and self.metric not in _TORCH_KNN_METRICS:
            raise DebugAtlasError(
                f"`Layout(backend='torch', metric={self.metric!r})`: the torch backend supports "
                f"{list(_TORCH_KNN_METRICS)}. HINT: use backend='umap-learn' for other metrics."
            )
        if self.backend == "torchdr" and self.metric not in _torchdr.METRICS:
            raise DebugAtlasError(
                f"`Layout(backend='torchdr', metric={self.metric!r})`: the torchdr backend supports "
                f"{list(_torchdr.METRICS)}. HINT: use backend='umap-learn' for other metrics."
            )
        if self.backend == "torchdr" and self.knn == "nndescent":
            raise DebugAtlasError(
                "`Layout(backend='torchdr', knn='nndescent')`: the torchdr backend finds exact "
                "neighbours in torch. HINT: use knn='auto' or 'exact', or backend='torch'."
            )
        if self.n_epochs is not None and (not isinstance(self.n_epochs, (int, np.integer))
                                          or isinstance(self.n_epochs, bool) or self.n_epochs < 1):
            raise DebugAtlasError(f"`Layout(n_epochs={self.n_epochs!r})` must be None or an integer >= 1.")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise DebugAtlasError(
                    f"`Layout(device={self.device!r})` is not a torch device ({err}). "
                    "HINT: pass None, 'cpu', 'cuda' or 'cuda:0'."
                ) from None
        if self.method == "umap":
            if not isinstance(self.n_neighbors, (int, np.integer)) or self.n_neighbors < 2:
                raise DebugAtlasError(f"`Layout(n_neighbors={self.n_neighbors!r})` must be an integer >= 2.")
            if not 0.0 <= float(self.min_dist) <= 1.0:
                raise DebugAtlasError(f"`Layout(min_dist={self.min_dist!r})` must be in [0, 1].")
            if self.knn == "exact" and self.metric not in _TORCH_KNN_METRICS:
                raise DebugAtlasError(
                    f"`Layout(knn='exact', metric={self.metric!r})`: exact neighbours support "
                    f"{list(_TORCH_KNN_METRICS)}. HINT: use knn='nndescent' for other metrics."
                )
        if self.pca_dims is not None and (not isinstance(self.pca_dims, (int, np.integer))
                                          or isinstance(self.pca_dims, bool) or self.pca_dims < 2):
            raise DebugAtlasError(f"`Layout(pca_dims={self.pca_dims!r})` must be None or an integer >= 2.")
        if self.method == "tsne" and not float(self.perplexity) > 0:
            raise DebugAtlasError(f"`Layout(perplexity={self.perplexity!r})` must be > 0.")

    def _check_samples(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if self.method == "umap":
            need = int(self.n_neighbors) + 1
            what = f"n_neighbors={self.n_neighbors} needs at least {need} vectors"
            hint = f"capture more samples or pass `n_neighbors` <= {max(n - 1, 1)}"
        elif self.method == "tsne":
            need = int(np.floor(self.perplexity)) + 1
            what = f"perplexity={self.perplexity} needs more than {self.perplexity} vectors"
            hint = f"capture more samples or pass `perplexity` < {n}"
        else:
            need = self.n_components + 1
            what = f"n_components={self.n_components} needs at least {need} vectors"
            hint = "capture more samples"
        if n < need:
            raise DebugAtlasError(f"`{self._call()}.fit` got {n} vectors; {what}. HINT: {hint}.")
        if self.method == "pca" and x.shape[1] < self.n_components:
            raise DebugAtlasError(
                f"`{self._call()}.fit` got {x.shape[1]}-dimensional vectors; PCA to "
                f"{self.n_components} components needs at least that many. HINT: use n_components=1."
            )

    def _device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else torch.device("cpu")

    def _backend(self, n: int) -> str | None:
        """The UMAP backend that runs (None for t-SNE and PCA), by the rule of `backend="auto"`."""
        if self.method != "umap":
            return None
        if self.backend != "auto":
            return self.backend
        return "torch" if self.metric in _TORCH_KNN_METRICS else "umap-learn"

    # -- methods --------------------------------------------------------------------------------
    def _umap_torch(self, x: torch.Tensor, params: dict[str, Any]) -> np.ndarray:
        """The fast path: every stage on x's device except those this module's docstring names."""
        n, device, seed = x.shape[0], x.device, int(self.seed)
        n_epochs = self._n_epochs(n)
        lap = _Laps(device)
        features = x.shape[1]
        x = self._project(x, params)
        lap("pca")
        exact = self.knn == "exact" or (self.knn == "auto" and (device.type == "cuda" or n < _UMAP_SMALL_DATA))
        if exact:
            chunk = 2**30 if device.type == "cuda" else 256 * 2**20
            indices, dists = _fast.knn_torch(x, int(self.n_neighbors), self.metric, chunk)
            params["knn"] = f"exact (torch, {device})"
        else:
            indices, dists = _fast.nndescent(x, int(self.n_neighbors), self.metric, seed)
            params["knn"] = "nndescent (umap, " + ("projected vectors)" if x.shape[1] < features else "all features)")
        lap("knn")
        if device.type == "cuda" or n < _UMAP_GRAPH_MIN_CPU:  # torch: nothing to compile (umap-learn's is not cached)
            head, tail, weight = _fast.fuzzy_graph(indices.to(device), dists.to(device), int(self.n_neighbors))
            params["graph"] = f"fuzzy simplicial set (torch, {device})"
        else:
            head, tail, weight = _fast.umap_graph(indices, dists, int(self.n_neighbors), self.metric, seed)
            params["graph"] = "fuzzy simplicial set (umap)"
        keep = weight >= weight.max() / n_epochs  # umap-learn drops edges too weak to be sampled
        head, tail, weight = head[keep], tail[keep], weight[keep]
        lap("graph")
        generator = torch.Generator(device=device).manual_seed(seed)
        y = _fast.pca_init(x, int(self.n_components), self.metric, generator)
        params["init"] = "pca"
        lap("init")
        a, b = _fast.ab_params(1.0, float(self.min_dist))
        y = _fast.optimize(y, head, tail, weight, n_epochs, float(a), float(b), seed)
        params["optimizer"] = "batched SGD (" + ("numba, cpu)" if device.type == "cpu" else f"torch, {device})")
        params.update(n_epochs_run=n_epochs, n_edges=int(head.numel()))
        raw = y.cpu().numpy()
        lap("optimise")
        params["stage_seconds"] = lap.seconds
        return raw

    def _umap_torchdr(self, x: torch.Tensor, params: dict[str, Any]) -> np.ndarray:
        """`torchdr.UMAP` on x's device after the ``pca_dims`` projection (cosine: on unit rows)."""
        lap = _Laps(x.device)
        x = self._project(x, params)
        lap("pca")
        raw, epochs = _torchdr.umap(x, int(self.n_neighbors), int(self.n_components), float(self.min_dist),
                                    self.metric, self._n_epochs(x.shape[0]), int(self.seed))
        lap("umap")
        device = x.device
        params.update(
            knn=f"exact (torchdr, torch, {device})", graph=f"fuzzy simplicial set (torchdr, {device})",
            init="pca (torchdr)", optimizer=f"SGD with negative sampling (torchdr, {device})",
            n_epochs_run=epochs, stage_seconds=lap.seconds,
        )
        return raw

    def _n_epochs(self, n: int) -> int:
        return int(self.n_epochs) if self.n_epochs is not None else (500 if n <= 10_000 else 200)

    def _umap_torch_or_fallback(self, x: np.ndarray, xt: torch.Tensor, params: dict[str, Any]) -> np.ndarray:
        """The torch backend; chosen by "auto" on a GPU, a failure there (e.g. out of memory) falls
        back to umap-learn, logged and recorded in ``params_["backend_fallback"]``."""
        try:
            return self._umap_torch(xt, params)
        except RuntimeError as exc:
            if self.backend != "auto" or xt.device.type == "cpu":
                raise
            reason = f"torch backend on {xt.device} failed ({type(exc).__name__}: {str(exc)[:200]})"
            log.warning("Layout: %s; using umap-learn instead", reason)
            for key in ("knn", "graph", "init", "optimizer", "n_epochs_run", "n_edges", "stage_seconds"):
                params.pop(key, None)
            params.update(backend="umap-learn", backend_fallback=reason)
            return self._umap(self._reduce(x, params), params)

    def _project(self, x: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """x on its top `pca_dims` principal components, on x's device (x itself when `pca_dims` is
        None or not below the feature count); records `pca_dims` in params."""
        params["pca_dims"] = None if self.pca_dims is None else int(self.pca_dims)
        if self.pca_dims is None or self.pca_dims >= x.shape[1]:
            return x
        return _fast.pca_torch(x, int(self.pca_dims))

    def _reduce(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """`_project` for the umap-learn and t-SNE paths: numpy in and out, PCA on `device`."""
        reduced = self._project(torch.as_tensor(x, device=self._device()), params)
        return x if reduced.shape[1] == x.shape[1] else reduced.cpu().numpy()

    def _umap(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        with warnings.catch_warnings():  # "Tensorflow not installed; ParametricUMAP unavailable"
            warnings.simplefilter("ignore", ImportWarning)
            import umap

        device = torch.device(self.device) if self.device is not None else None
        exact = self.knn == "exact" or (
            self.knn == "auto" and device is not None and device.type == "cuda"
            and x.shape[0] >= _UMAP_SMALL_DATA and self.metric in _TORCH_KNN_METRICS
        )
        kwargs: dict[str, Any] = {}
        if exact:
            indices, dists = exact_knn(x, int(self.n_neighbors), self.metric, device or "cpu")
            kwargs = {"precomputed_knn": (indices, dists), "force_approximation_algorithm": True}
            params["knn"] = f"exact (torch, {device or torch.device('cpu')})"
        else:
            params["knn"] = "exact (umap)" if x.shape[0] < _UMAP_SMALL_DATA else "nndescent (umap)"
        reducer = umap.UMAP(
            n_components=self.n_components, n_neighbors=int(self.n_neighbors),
            min_dist=float(self.min_dist), metric=self.metric, random_state=int(self.seed),
            n_jobs=1, n_epochs=None if self.n_epochs is None else int(self.n_epochs), **kwargs,
        )
        with warnings.catch_warnings():  # no `transform` later, so no search index is needed
            warnings.filterwarnings("ignore", message=r".*knn_search_index.*")
            return reducer.fit_transform(x)

    def _tsne(self, x: np.ndarray) -> np.ndarray:
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=self.n_components, perplexity=float(self.perplexity),
                    metric=self.metric, init="pca", learning_rate="auto",
                    random_state=int(self.seed))
        return tsne.fit_transform(x)

    def _pca(self, x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        from sklearn.decomposition import PCA

        if self.metric == "cosine":
            x = _unit_rows(x)
        params["row_normalized"] = self.metric == "cosine"
        pca = PCA(n_components=self.n_components, random_state=int(self.seed))
        raw = pca.fit_transform(x)
        params["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_]
        return raw


def normalize_layout(xy: np.ndarray | torch.Tensor, low: float = 1, high: float = 99,
                     margin: float = 0.1) -> np.ndarray:
    """Map each axis so that its `low`–`high` percentile range becomes [margin, 1 - margin].

    Points outside that range are clipped to [0, 1]. An axis with no spread maps to 0.5.
    Returns float32 of the input's shape ([N] or [N, d]).
    """
    if not 0 <= low < high <= 100:
        raise DebugAtlasError(f"`normalize_layout(low={low!r}, high={high!r})` needs 0 <= low < high <= 100.")
    if not 0 <= margin < 0.5:
        raise DebugAtlasError(f"`normalize_layout(margin={margin!r})` must be in [0, 0.5).")
    arr = _as_float32(xy, name="xy", dims=(1, 2)).astype(np.float64)
    flat = arr.reshape(arr.shape[0], -1)
    lo = np.percentile(flat, low, axis=0)
    hi = np.percentile(flat, high, axis=0)
    span = hi - lo
    flat_span = span <= 1e-12 * np.maximum(np.abs(lo), 1.0)
    scaled = margin + (1 - 2 * margin) * (flat - lo) / np.where(flat_span, 1.0, span)
    scaled[:, flat_span] = 0.5
    return np.clip(scaled, 0.0, 1.0).astype(np.float32).reshape(arr.shape)


def pca_project(vectors: np.ndarray | torch.Tensor, dims: int, device: torch.device | str = "cpu") -> np.ndarray:
    """Centred projection of `vectors` [N, C] on their top `dims` principal axes: [N, dims] float32.

    Eigenvectors of the [C, C] covariance in float64 (cheap for C in the thousands); the sign of
    each axis is fixed so that its largest-magnitude loading is positive (deterministic output).
    """
    x = torch.as_tensor(_as_float32(vectors), device=device)
    return _fast.pca_torch(x, dims).cpu().numpy().astype(np.float32)


def exact_knn(vectors: np.ndarray | torch.Tensor, k: int, metric: str = "cosine",
              device: torch.device | str = "cpu", chunk_bytes: int = 256 * 2**20
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours in torch, each point first in its own list.

    Returns (indices [N, k] int64, distances [N, k] float32), nearest first, as umap-learn's
    `precomputed_knn` expects. Cosine distance is 1 - cos (0 between two zero vectors, 1 between
    a zero and a non-zero vector, as in umap-learn).
    """
    if metric not in _TORCH_KNN_METRICS:
        raise DebugAtlasError(f"`exact_knn(metric={metric!r})` is not one of {list(_TORCH_KNN_METRICS)}.")
    x = torch.as_tensor(_as_float32(vectors), device=device)
    if not 1 <= k <= x.shape[0]:
        raise DebugAtlasError(f"`exact_knn(k={k!r})` must be between 1 and the {x.shape[0]} vectors.")
    idx, dist = _fast.knn_torch(x, k, metric, chunk_bytes)
    return idx.cpu().numpy().astype(np.int64), dist.cpu().numpy().astype(np.float32)


# -- internals -------------------------------------------------------------------------------------
def _as_float32(values, name: str = "vectors", dims: tuple[int, ...] = (2,)) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        arr = values.detach().to("cpu", torch.float32).numpy()
    else:
        arr = np.asarray(values, dtype=np.float32)
    if arr.ndim not in dims or arr.shape[0] == 0:
        expected = " or ".join({1: "[N]", 2: "[N, d]"}[d] for d in dims)
        raise DebugAtlasError(f"`{name}` has shape {arr.shape}; expected a non-empty {expected} array.")
    if not np.isfinite(arr).all():
        rows = np.nonzero(~np.isfinite(arr.reshape(arr.shape[0], -1)).all(1))[0]
        raise DebugAtlasError(
            f"`{name}` has NaN or Inf in rows {rows[:10].tolist()}. "
            "HINT: check the model; float16 vectors overflow above 65504."
        )
    return arr


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)


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


class _Laps:
    """Seconds per stage: ``lap(stage)`` records the time since the previous lap (CUDA synchronised)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds, self._last = device, {}, time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now


def _versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for package in ("umap-learn", "scikit-learn", "numpy", "torch", *extra):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out
