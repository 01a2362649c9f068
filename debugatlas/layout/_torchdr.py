"""The torchdr backend, `Layout(backend="torchdr")`: TorchDR's UMAP after the ``pca_dims``
projection, imported lazily and seeded without side effects.

TorchDR (`pip install torchdr`) is optional. Its plain-torch neighbour search (``backend=None``:
no faiss, no KeOps) holds the full N x N distance matrix, so memory grows as N^2.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.errors import DebugAtlasError
from ._laps import Laps
from ._projection import project
from .normalize import unit_rows_torch

if TYPE_CHECKING:  # `_settings` reads `METRICS` from here
    from ._settings import Settings

# Layout's metric -> TorchDR's, on unit rows for "cosine": TorchDR's "angular" is -u.v = (1 - cos) - 1,
# the same neighbours, and UMAP's memberships exp(-(d - rho) / sigma) do not change under d + constant.
METRICS = {"cosine": "angular", "euclidean": "euclidean"}


def fit(x: torch.Tensor, s: Settings) -> tuple[np.ndarray, dict[str, Any]]:
    """`torchdr.UMAP` of `x` [N, C] on x's device after the ``pca_dims`` projection: (raw layout
    [N, n_components] float32, the entries of ``params_`` that say what ran)."""
    lap = Laps(x.device)
    x = project(x, s.pca_dims)
    lap("pca")
    raw, epochs = _umap(x, s)
    lap("umap")
    device = x.device
    return raw, {
        "pca_dims": s.pca_dims, "knn": f"exact (torchdr, torch, {device})",
        "graph": f"fuzzy simplicial set (torchdr, {device})", "init": "pca (torchdr)",
        "optimizer": f"SGD with negative sampling (torchdr, {device})", "n_epochs_run": epochs,
        "stage_seconds": lap.seconds,
    }


def _umap(x: torch.Tensor, s: Settings) -> tuple[np.ndarray, int]:
    """`torchdr.UMAP` of `x` [N, C] on x's device: (embedding [N, n_components] float32, epochs run).

    `s.metric` is one of `METRICS`; for "cosine" the rows are scaled to unit length first. Seeded
    with `s.seed` through torch's global generators, which are restored afterwards.
    """
    torchdr = _import()
    if s.metric == "cosine":
        x = unit_rows_torch(x)
    reducer = torchdr.UMAP(
        n_neighbors=s.n_neighbors, n_components=s.n_components, min_dist=s.min_dist,
        metric=METRICS[s.metric], max_iter=s.epochs(x.shape[0]), device=str(x.device), backend=None,
        random_state=None, compile=False, distributed=False,
    )
    with _seeded(s.seed, x.device):
        raw = reducer.fit_transform(x).detach().cpu().numpy()
    return np.ascontiguousarray(raw, dtype=np.float32), int(reducer.n_iter_) + 1


def _import() -> ModuleType:
    try:
        with warnings.catch_warnings():  # "FAISS is not installed": this backend searches in torch
            warnings.simplefilter("ignore", ImportWarning)
            import torchdr
    except ImportError as err:
        raise DebugAtlasError(
            f"`Layout(backend='torchdr')` needs the optional package torchdr ({err}). "
            "HINT: `pip install torchdr`, or use backend='torch' or 'umap-learn'."
        ) from None
    return torchdr


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's CPU generator (and `device`'s, on CUDA) for the block, then restore them.

    TorchDR draws its negative samples from these global generators; its own `random_state`
    would reseed Python's, NumPy's and torch's generators for the whole process instead.
    """
    cuda: list[int] = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield
