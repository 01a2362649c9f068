"""The checked settings of a `Layout`: one frozen `Settings` record, the rule of `backend="auto"`,
and the errors for bad settings and too few vectors."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import DebugAtlasError
from ._torchdr import METRICS as TORCHDR_METRICS
from .knn import TORCH_METRICS

METHODS = ("umap", "tsne", "pca")
KNN = ("auto", "exact", "nndescent")
BACKENDS = ("auto", "umap-learn", "torch", "torchdr")
AUTO_HINT = ('"auto" picks "torch" for the cosine and euclidean metrics at every size and on every '
             'device, and "umap-learn" for any other metric; it never picks "torchdr".')


@dataclass(frozen=True)
class Settings:
    """A `Layout`'s parameters after `check_settings`, as plain Python values.

    `backend` is the one asked for ("auto" included); `device` is None when none was given;
    `n_epochs` None means the size rule of `epochs`; `pca_dims` None keeps all features. Settings
    the method does not use (`n_neighbors`, `min_dist` outside UMAP, `perplexity` outside t-SNE)
    are kept as given.
    """

    method: str
    n_components: int
    n_neighbors: int
    min_dist: float
    metric: str
    seed: int
    perplexity: float
    knn: str
    device: torch.device | None
    n_epochs: int | None
    pca_dims: int | None
    backend: str

    @property
    def run_device(self) -> torch.device:
        """`device`, or the CPU when none was given."""
        return self.device if self.device is not None else torch.device("cpu")

    def epochs(self, n: int) -> int:
        """UMAP's epochs for `n` vectors: `n_epochs`, else 500 up to 10,000 vectors and 200 above."""
        return self.n_epochs if self.n_epochs is not None else (500 if n <= 10_000 else 200)


def pick_backend(method: str, backend: str, metric: str) -> str | None:
    """The UMAP backend that runs (None for t-SNE and PCA): `backend`, or for "auto" "torch" with
    the cosine and euclidean metrics and "umap-learn" with any other, whatever the number of
    vectors and the device (`AUTO_HINT` says the same to users)."""
    if method != "umap":
        return None
    if backend != "auto":
        return backend
    return "torch" if metric in TORCH_METRICS else "umap-learn"


def check_settings(p: Mapping[str, Any]) -> Settings:
    """`Settings` from a `Layout`'s parameters `p` (`Layout.get_params()`), or a `DebugAtlasError`
    that quotes the bad value and says what is valid."""
    _check_choices(p)
    _check_backend(p)
    _check_values(p)
    umap, tsne = p["method"] == "umap", p["method"] == "tsne"
    return Settings(
        method=p["method"], n_components=int(p["n_components"]),
        n_neighbors=int(p["n_neighbors"]) if umap else p["n_neighbors"],
        min_dist=float(p["min_dist"]) if umap else p["min_dist"], metric=p["metric"], seed=int(p["seed"]),
        perplexity=float(p["perplexity"]) if tsne else p["perplexity"], knn=p["knn"],
        device=None if p["device"] is None else torch.device(p["device"]),
        n_epochs=None if p["n_epochs"] is None else int(p["n_epochs"]),
        pca_dims=None if p["pca_dims"] is None else int(p["pca_dims"]), backend=p["backend"],
    )


def check_samples(p: Mapping[str, Any], x: np.ndarray) -> None:
    """Raise when `x` [N, C] has too few vectors (or, for PCA, too few features) for settings `p`."""
    n, method = x.shape[0], p["method"]
    if method == "umap":
        need = int(p["n_neighbors"]) + 1
        what = f"n_neighbors={p['n_neighbors']} needs at least {need} vectors"
        hint = f"capture more samples or pass `n_neighbors` <= {max(n - 1, 1)}"
    elif method == "tsne":
        need = int(np.floor(p["perplexity"])) + 1
        what = f"perplexity={p['perplexity']} needs more than {p['perplexity']} vectors"
        hint = f"capture more samples or pass `perplexity` < {n}"
    else:
        need = p["n_components"] + 1
        what = f"n_components={p['n_components']} needs at least {need} vectors"
        hint = "capture more samples"
    call = f"Layout(method={method!r})"
    if n < need:
        raise DebugAtlasError(f"`{call}.fit` got {n} vectors; {what}. HINT: {hint}.")
    if method == "pca" and x.shape[1] < p["n_components"]:
        raise DebugAtlasError(
            f"`{call}.fit` got {x.shape[1]}-dimensional vectors; PCA to "
            f"{p['n_components']} components needs at least that many. HINT: use n_components=1."
        )


def _check_choices(p: Mapping[str, Any]) -> None:
    if p["method"] not in METHODS:
        raise DebugAtlasError(f"`Layout(method={p['method']!r})` is not one of {list(METHODS)}.")
    if p["n_components"] not in (1, 2) or isinstance(p["n_components"], bool):
        raise DebugAtlasError(
            f"`Layout(n_components={p['n_components']!r})` must be 1 or 2 "
            "(2 for an atlas, 1 for the axis of a two-class comparison)."
        )
    if p["knn"] not in KNN:
        raise DebugAtlasError(f"`Layout(knn={p['knn']!r})` is not one of {list(KNN)}.")
    if p["backend"] not in BACKENDS:
        raise DebugAtlasError(
            f"`Layout(backend={p['backend']!r})` is not one of {list(BACKENDS)}. HINT: {AUTO_HINT}"
        )


def _check_backend(p: Mapping[str, Any]) -> None:
    backend, metric = p["backend"], p["metric"]
    if backend in ("torch", "torchdr") and p["method"] != "umap":
        raise DebugAtlasError(
            f"`Layout(method={p['method']!r}, backend={backend!r})`: the {backend} "
            "backend lays out with UMAP only. HINT: use method='umap' or leave backend='auto'."
        )
    if backend == "torch" and metric not in TORCH_METRICS:
        raise DebugAtlasError(
            f"`Layout(backend='torch', metric={metric!r})`: the torch backend supports "
            f"{list(TORCH_METRICS)}. HINT: use backend='umap-learn' for other metrics."
        )
    if backend == "torchdr" and metric not in TORCHDR_METRICS:
        raise DebugAtlasError(
            f"`Layout(backend='torchdr', metric={metric!r})`: the torchdr backend supports "
            f"{list(TORCHDR_METRICS)}. HINT: use backend='umap-learn' for other metrics."
        )
    if backend == "torchdr" and p["knn"] == "nndescent":
        raise DebugAtlasError(
            "`Layout(backend='torchdr', knn='nndescent')`: the torchdr backend finds exact "
            "neighbours in torch. HINT: use knn='auto' or 'exact', or backend='torch'."
        )


def _check_values(p: Mapping[str, Any]) -> None:
    if p["n_epochs"] is not None and not _is_int_at_least(p["n_epochs"], 1):
        raise DebugAtlasError(f"`Layout(n_epochs={p['n_epochs']!r})` must be None or an integer >= 1.")
    if p["device"] is not None:
        try:
            torch.device(p["device"])
        except (RuntimeError, TypeError) as err:
            raise DebugAtlasError(
                f"`Layout(device={p['device']!r})` is not a torch device ({err}). "
                "HINT: pass None, 'cpu', 'cuda' or 'cuda:0'."
            ) from None
    if p["method"] == "umap":
        if not isinstance(p["n_neighbors"], (int, np.integer)) or p["n_neighbors"] < 2:
            raise DebugAtlasError(f"`Layout(n_neighbors={p['n_neighbors']!r})` must be an integer >= 2.")
        if not 0.0 <= float(p["min_dist"]) <= 1.0:
            raise DebugAtlasError(f"`Layout(min_dist={p['min_dist']!r})` must be in [0, 1].")
        if p["knn"] == "exact" and p["metric"] not in TORCH_METRICS:
            raise DebugAtlasError(
                f"`Layout(knn='exact', metric={p['metric']!r})`: exact neighbours support "
                f"{list(TORCH_METRICS)}. HINT: use knn='nndescent' for other metrics."
            )
    if p["pca_dims"] is not None and not _is_int_at_least(p["pca_dims"], 2):
        raise DebugAtlasError(f"`Layout(pca_dims={p['pca_dims']!r})` must be None or an integer >= 2.")
    if p["method"] == "tsne" and not float(p["perplexity"]) > 0:
        raise DebugAtlasError(f"`Layout(perplexity={p['perplexity']!r})` must be > 0.")


def _is_int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
