"""TorchDR's UMAP behind `Layout(backend="torchdr")`: imported lazily, seeded without side effects.

TorchDR (`pip install torchdr`) is optional. Its plain-torch neighbour search (``backend=None``:
no faiss, no KeOps) holds the full N x N distance matrix, so memory grows as N^2.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import torch

from ..core.errors import DebugAtlasError

# Layout's metric -> TorchDR's, on unit rows for "cosine": TorchDR's "angular" is -u.v = (1 - cos) - 1,
# the same neighbours, and UMAP's memberships exp(-(d - rho) / sigma) do not change under d + constant.
METRICS = {"cosine": "angular", "euclidean": "euclidean"}


def umap(x: torch.Tensor, n_neighbors: int, n_components: int, min_dist: float, metric: str,
         n_epochs: int, seed: int) -> tuple[np.ndarray, int]:
    """`torchdr.UMAP` of `x` [N, C] on x's device: (embedding [N, n_components] float32, epochs run).

    `metric` is one of `METRICS`; for "cosine" the rows are scaled to unit length first. Seeded
    through torch's global generators, which are restored afterwards.
    """
    torchdr = _import()
    if metric == "cosine":
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
    reducer = torchdr.UMAP(
        n_neighbors=n_neighbors, n_components=n_components, min_dist=min_dist,
        metric=METRICS[metric], max_iter=n_epochs, device=str(x.device), backend=None,
        random_state=None, compile=False, distributed=False,
    )
    with _seeded(seed, x.device):
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
