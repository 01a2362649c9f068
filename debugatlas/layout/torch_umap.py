"""UMAP's stages in torch (and one compiled CPU loop) for `Layout(backend="torch")`.

UMAP's fuzzy simplicial set, a PCA start and UMAP's embedding optimisation with every edge
sampled in an epoch applied at once. Everything runs on the input tensors' device; on a CPU the
graph can come from umap-learn instead (`umap_graph`) and the epochs run in a parallel numba loop
(`numba_epochs`). The neighbours come from `knn`, the ``pca_dims`` projection from `_projection`;
`_torch` runs the stages in order.
"""
from __future__ import annotations

import numpy as np
import torch

from ._projection import pca_torch
from .normalize import unit_rows_torch


def umap_graph(indices: torch.Tensor, dists: torch.Tensor, n_neighbors: int, metric: str,
               seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """umap-learn's fuzzy simplicial set (numba, CPU) as `fuzzy_graph` returns it."""
    from umap.umap_ import fuzzy_simplicial_set

    idx, dist = indices.cpu().numpy(), dists.cpu().numpy()
    graph, _, _ = fuzzy_simplicial_set(np.empty((idx.shape[0], 1), np.float32), n_neighbors,
                                       np.random.RandomState(seed), metric, knn_indices=idx, knn_dists=dist)
    graph = graph.tocsr().tocoo()  # rows sorted, then columns
    return (torch.from_numpy(graph.row.astype(np.int64)), torch.from_numpy(graph.col.astype(np.int64)),
            torch.from_numpy(graph.data.astype(np.float32)))


def fuzzy_graph(indices: torch.Tensor, dists: torch.Tensor, n_neighbors: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UMAP's fuzzy simplicial set of a kNN graph (local connectivity 1, fuzzy union), in torch.

    Per point i: rho_i = distance to its nearest other point, sigma_i found by bisection so that
    sum_j exp(-(d_ij - rho_i) / sigma_i) = log2(n_neighbors); membership w_ij = exp(-(d_ij -
    rho_i) / sigma_i); symmetrised as w_ij + w_ji - w_ij w_ji. `indices`, `dists`: [N, k] with
    each point first in its own list. Returns (head, tail) int64 and weight float32, each [E],
    sorted by head then tail, on the input's device.
    """
    n, k = indices.shape
    d = dists.double()
    rho = torch.where(d > 0, d, torch.inf).amin(1)
    rho = torch.where(torch.isinf(rho), 0.0, rho)
    rest = d[:, 1:] - rho[:, None]
    target = float(np.log2(n_neighbors))
    lo, hi = torch.zeros_like(rho), torch.full_like(rho, torch.inf)
    sigma, done = torch.ones_like(rho), torch.zeros_like(rho, dtype=torch.bool)
    for _ in range(64):
        psum = torch.where(rest > 0, torch.exp(-rest / sigma[:, None]), 1.0).sum(1)
        done = done | ((psum - target).abs() < 1e-5)
        over = psum > target
        hi = torch.where(done | ~over, hi, sigma)
        lo = torch.where(done | over, lo, sigma)
        step = torch.where(torch.isinf(hi), sigma * 2, (lo + hi) / 2)
        sigma = torch.where(done, sigma, step)
    floor = torch.where(rho > 0, d.mean(1), d.mean()) * 1e-3
    sigma = torch.maximum(sigma, floor)
    gap = d - rho[:, None]
    w = torch.where((gap <= 0) | (sigma[:, None] == 0), 1.0, torch.exp(-gap / sigma[:, None])).float()
    rows = torch.arange(n, device=indices.device)[:, None].expand(n, k)
    keep = (indices != rows) & (indices >= 0) & (w > 0)
    head, tail, w = rows[keep], indices[keep], w[keep]
    keys, inverse = torch.unique(torch.cat([head * n + tail, tail * n + head]), return_inverse=True)
    both = torch.cat([w, w])
    total = torch.zeros(keys.numel(), device=w.device).index_add_(0, inverse, both)
    prod = torch.ones(keys.numel(), device=w.device).scatter_reduce_(0, inverse, both, "prod")
    count = torch.bincount(inverse, minlength=keys.numel())
    weight = total - torch.where(count == 2, prod, 0.0)
    return keys // n, keys % n, weight


def ab_params(spread: float, min_dist: float) -> tuple[float, float]:
    """UMAP's curve parameters: the least-squares fit of 1 / (1 + a d^2b) to the target membership
    (1 up to `min_dist`, then exp(-(d - min_dist) / spread)) on 300 points of [0, 3 spread].

    Computed here so that a small layout does not import umap-learn (seconds in a fresh process).
    """
    from scipy.optimize import curve_fit

    d = np.linspace(0, spread * 3, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))
    (a, b), _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)), d, target)
    return float(a), float(b)


def pca_init(x: torch.Tensor, n_components: int, metric: str, generator: torch.Generator) -> torch.Tensor:
    """Start of the optimisation: top principal components (of unit rows for "cosine"), each axis
    scaled to [0, 10] as umap-learn scales its initialisations, plus 1e-4 noise against ties."""
    if metric == "cosine":
        x = unit_rows_torch(x)
    y = pca_torch(x, n_components)
    lo, hi = y.amin(0), y.amax(0)
    y = 10.0 * (y - lo) / (hi - lo).clamp_min(1e-30)
    noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return (y + 1e-4 * noise).contiguous()


def optimize(y: torch.Tensor, head: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor,
             n_epochs: int, a: float, b: float, seed: int, negative_rate: int = 5,
             learning_rate: float = 1.0) -> torch.Tensor:
    """UMAP's embedding optimisation with every sampled edge of an epoch applied at once.

    Edge e is sampled in the epochs where floor(epoch * w_e / max w) grows (umap-learn's
    epochs-per-sample schedule). A sample pulls its head towards its tail with the gradient of
    log(1 / (1 + a d^2b)), twice (the graph is symmetric: umap-learn moves both ends of each of
    the two directed edges), and pushes the head away from `negative_rate` uniformly drawn points
    with the gradient of log(1 - 1 / (1 + a d^2b)); each gradient coordinate is clipped to
    [-4, 4]; the step decays linearly from `learning_rate` to 0. All gradients of an epoch are
    taken at the epoch's start. `y` [N, d] float32, `head`, `tail` [E] int64 sorted by head with
    both directions of every edge, `weight` [E] float32. On a CPU the epochs run in a compiled
    (numba) loop over the points; elsewhere in torch on `y`'s device. Returns the new `y`.
    """
    rate = weight / weight.max()
    if y.device.type == "cpu":
        indptr = torch.zeros(y.shape[0] + 1, dtype=torch.int64)
        indptr[1:] = torch.cumsum(torch.bincount(head, minlength=y.shape[0]), 0)
        out = numba_epochs(y.numpy().copy(), indptr.numpy(), tail.numpy(), rate.numpy(), n_epochs,
                            a, b, seed, negative_rate, learning_rate)
        return torch.from_numpy(out)
    return torch_epochs(y, head, tail, rate, n_epochs, a, b, seed, negative_rate, learning_rate)


def torch_epochs(y: torch.Tensor, head: torch.Tensor, tail: torch.Tensor, rate: torch.Tensor,
                 n_epochs: int, a: float, b: float, seed: int, negative_rate: int,
                 learning_rate: float) -> torch.Tensor:
    """`optimize` in torch on y's device: one gather, one formula, one index_add_ per epoch."""
    n = y.shape[0]
    generator = torch.Generator(device=y.device).manual_seed(seed)
    count = torch.zeros_like(rate)
    for epoch in range(n_epochs):
        alpha = learning_rate * (1.0 - epoch / n_epochs)
        due = torch.floor(rate * epoch)
        pick = torch.nonzero(due > count).squeeze(1)
        count = due
        h = head[pick]
        m = h.numel()
        heads = torch.cat([h, h.repeat(negative_rate)])
        others = torch.cat([tail[pick], torch.randint(n, (m * negative_rate,), generator=generator,
                                                      device=y.device)])
        diff = y[heads] - y[others]
        d2 = (diff * diff).sum(1)
        d2b = d2.pow(b)
        coef = torch.empty_like(d2)
        coef[:m] = (-2.0 * a * b) * d2b[:m] / (d2[:m] * (1.0 + a * d2b[:m]))
        coef[m:] = (2.0 * b) / ((0.001 + d2[m:]) * (1.0 + a * d2b[m:]))
        coef = torch.where(d2 > 0, coef, 0.0)
        grad = (coef[:, None] * diff).clamp_(-4.0, 4.0)
        grad[:m] *= 2.0  # the pull of both directed edges
        y.index_add_(0, heads, grad, alpha=alpha)
    return y


def numba_epochs(y: np.ndarray, indptr: np.ndarray, tail: np.ndarray, rate: np.ndarray,
                 n_epochs: int, a: float, b: float, seed: int, negative_rate: int,
                 learning_rate: float) -> np.ndarray:
    """`optimize` on the CPU: per epoch a parallel loop over points, each writing only its row.

    Below `SERIAL_BELOW` points the loop runs on one thread: a parallel region per epoch then costs
    more than it saves (1.1 s against 4-5 s for 1,078 points and 500 epochs on a busy 2-core
    machine); the result is the same for any thread count.
    """
    import numba

    epoch_kernel = numba_kernel()
    out = np.empty_like(y)
    threads = numba.get_num_threads()
    if y.shape[0] < SERIAL_BELOW:
        numba.set_num_threads(1)
    try:
        for epoch in range(n_epochs):
            alpha = learning_rate * (1.0 - epoch / n_epochs)
            epoch_kernel(y, out, indptr, tail, rate, epoch, a, b, seed, negative_rate, alpha)
            y, out = out, y
    finally:
        numba.set_num_threads(threads)
    return y


SERIAL_BELOW = 20_000


def numba_kernel():
    """The compiled kernel of one epoch of `optimize` (`_kernels.epoch_kernel`, cached on disk)."""
    from ._kernels import epoch_kernel

    return epoch_kernel
