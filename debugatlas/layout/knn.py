"""Nearest neighbours for UMAP: exact in torch (`knn_torch`, `exact_knn`) or umap-learn's
NN-descent (`nndescent`); each point is first in its own list, nearest first."""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import DebugAtlasError
from .normalize import as_float32

TORCH_METRICS = ("cosine", "euclidean")
SMALL_DATA = 4096  # below this umap-learn computes all pairwise distances itself


def exact_knn(vectors: np.ndarray | torch.Tensor, k: int, metric: str = "cosine",
              device: torch.device | str = "cpu", chunk_bytes: int = 256 * 2**20
              ) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours in torch, each point first in its own list.

    Returns (indices [N, k] int64, distances [N, k] float32), nearest first, as umap-learn's
    `precomputed_knn` expects. Cosine distance is 1 - cos (0 between two zero vectors, 1 between
    a zero and a non-zero vector, as in umap-learn).
    """
    if metric not in TORCH_METRICS:
        raise DebugAtlasError(f"`exact_knn(metric={metric!r})` is not one of {list(TORCH_METRICS)}.")
    x = torch.as_tensor(as_float32(vectors), device=device)
    if not 1 <= k <= x.shape[0]:
        raise DebugAtlasError(f"`exact_knn(k={k!r})` must be between 1 and the {x.shape[0]} vectors.")
    idx, dist = knn_torch(x, k, metric, chunk_bytes)
    return idx.cpu().numpy().astype(np.int64), dist.cpu().numpy().astype(np.float32)


def knn_torch(x: torch.Tensor, k: int, metric: str, chunk_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact kNN of `x` [N, C] float32 on its device, in row blocks of about `chunk_bytes`.

    Returns (indices [N, k] int64, distances [N, k] float32) on x's device, self first.
    """
    n = x.shape[0]
    zero = None
    if metric == "cosine":
        norm = x.norm(dim=1, keepdim=True)
        x = x / norm.clamp_min(1e-30)
        if bool((norm == 0).any()):
            zero = norm.squeeze(1) == 0
    else:
        sq = (x * x).sum(1)
    rows = max(1, min(n, chunk_bytes // (4 * n)))
    indices = torch.empty((n, k), dtype=torch.int64, device=x.device)
    dists = torch.empty((n, k), dtype=torch.float32, device=x.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        own = torch.arange(start, stop, device=x.device)
        if metric == "cosine":  # largest similarity first; itself (3) before any other point
            s = x[start:stop] @ x.T
            if zero is not None:  # two zero vectors are at distance 0, a zero and another at 1
                zb = zero[start:stop, None]
                s = torch.where(zb | zero[None, :], (zb & zero[None, :]).float(), s)
            s[own - start, own] = 3.0
            val, idx = torch.topk(s, k, dim=1)
            dist = (1.0 - val).clamp_min(0)
        else:  # |x_j|^2 - 2 x_i.x_j orders row i like the distance
            s = torch.addmm(sq[None, :], x[start:stop], x.T, alpha=-2.0)
            s[own - start, own] = -float("inf")
            val, idx = torch.topk(s, k, dim=1, largest=False)
            dist = (val + sq[start:stop, None]).clamp_min(0).sqrt()
        indices[start:stop] = idx
        dists[start:stop] = dist
    return indices, dists


def nndescent(x: torch.Tensor, k: int, metric: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """umap-learn's seeded NN-descent search on x (copied to the CPU) on all of numba's threads:
    indices, distances [N, k]. The result is fixed by the seed and the thread count."""
    from umap.umap_ import nearest_neighbors

    indices, dists, _ = nearest_neighbors(
        x.cpu().numpy(), k, metric, {}, False, np.random.RandomState(seed),
        low_memory=True, use_pynndescent=True, n_jobs=-1,
    )
    return torch.from_numpy(indices.astype(np.int64)), torch.from_numpy(dists.astype(np.float32))

