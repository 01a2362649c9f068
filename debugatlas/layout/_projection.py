"""The ``pca_dims`` projection: vectors on their top principal components, computed in torch."""
from __future__ import annotations

import numpy as np
import torch


def pca_torch(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Centred projection of `x` [N, C] on its top `dims` principal axes, on x's device.

    Eigenvectors of the [C, C] covariance in float64 (cheap for C in the thousands); the sign of
    each axis is fixed so that its largest-magnitude loading is positive (deterministic output).
    """
    xc = x - x.mean(0, keepdim=True)
    cov = (xc.T @ xc).double() / max(1, x.shape[0] - 1)  # float32 products, float64 eigh
    _, vecs = torch.linalg.eigh(cov)
    axes = vecs[:, -dims:].flip(1)
    sign = torch.sign(axes.gather(0, axes.abs().argmax(0, keepdim=True)))
    return xc @ (axes * sign).to(x.dtype)


def project(x: torch.Tensor, pca_dims: int | None) -> torch.Tensor:
    """`x` [N, C] on its top `pca_dims` principal components, on x's device; x itself when
    `pca_dims` is None or not below C."""
    if pca_dims is None or pca_dims >= x.shape[1]:
        return x
    return pca_torch(x, pca_dims)


def project_numpy(x: np.ndarray, pca_dims: int | None, device: torch.device) -> np.ndarray:
    """`project` for numpy input and output, the PCA computed on `device`; x itself when nothing
    is projected."""
    reduced = project(torch.as_tensor(x, device=device), pca_dims)
    return x if reduced.shape[1] == x.shape[1] else reduced.cpu().numpy()
