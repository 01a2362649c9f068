"""Directions to render and the objective that scores a layer activation against them."""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import DebugAtlasError
from ..core.model import output_tensor


def _as_matrix(values, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if tensor.dim() != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise DebugAtlasError(
            f"`{name}` has shape {tuple(tensor.shape)}; expected a non-empty [N, C] matrix. "
            "HINT: pass one row per vector."
        )
    tensor = tensor.detach().to("cpu", torch.float64)
    if not torch.isfinite(tensor).all():
        raise DebugAtlasError(f"`{name}` contains NaN or Inf. HINT: drop those rows first.")
    return tensor


def whitening_matrix(vectors: torch.Tensor | np.ndarray, ridge: float = 1e-2) -> torch.Tensor:
    """Inverse of the uncentred second moment with a ridge: [C, C] float32, symmetric.

    W = (X^T X / N + ridge * mean(diag(X^T X / N)) * I)^-1 for X = `vectors` [N, C].
    The ridge bounds the condition number by 1 + C / ridge, so W is finite and stable even when
    X is rank-deficient (dead channels, fewer samples than channels). All-zero X gives W = I / ridge.
    """
    if not ridge > 0:
        raise DebugAtlasError(f"`whitening_matrix(ridge={ridge!r})` must be > 0. HINT: e.g. 1e-2.")
    x = _as_matrix(vectors, "vectors")
    moment = x.T @ x / x.shape[0]
    level = float(moment.diagonal().mean())
    level = level if level > 0 else 1.0
    eye = torch.eye(moment.shape[0], dtype=moment.dtype)
    inverse = torch.linalg.inv(moment + ridge * level * eye)
    return ((inverse + inverse.T) / 2).float()


def cell_directions(mean_activations: torch.Tensor | np.ndarray, whitening: torch.Tensor | None) -> torch.Tensor:
    """Whitened, unit-length directions [M, C] float32 for mean activations [M, C].

    Row m is mean_activations[m] @ W scaled to unit norm (`whitening=None` skips W).
    All-zero rows stay all-zero; `FeatureInversion.invert` skips them.
    """
    means = _as_matrix(mean_activations, "mean_activations")
    if whitening is not None:
        w = torch.as_tensor(whitening).detach().to("cpu", torch.float64)
        if w.shape != (means.shape[1], means.shape[1]):
            raise DebugAtlasError(
                f"`whitening` has shape {tuple(w.shape)} but the activations have {means.shape[1]} "
                "channels. HINT: build it with `whitening_matrix(vectors)` from the same layer."
            )
        means = means @ w
    norms = means.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, means / norms.clamp_min(1e-300), means).float()


def direction_objective(h: torch.Tensor, v: torch.Tensor, power: float = 4.0,
                        cos_floor: float = 0.1) -> torch.Tensor:
    """Per-row objective [B]: dot(h, v) * max(cos_floor, cos(h, v)) ** power for h, v [B, C].

    Rows are independent, so summing the rows and differentiating optimises every row at once.
    """
    dot = (h * v).sum(-1)
    cos = dot / (h.norm(dim=-1) * v.norm(dim=-1)).clamp_min(1e-8)
    return dot * cos.clamp_min(cos_floor) ** power


def layer_vector(output: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The vector [B, C] the objective looks at, and where it was taken.

    [B, C, H, W]: the centre position (H // 2, W // 2); [B, T, C]: the middle token T // 2;
    [B, C]: the (pooled) vector itself.
    """
    output = output_tensor(output, "The layer")
    if output.dim() == 4:
        rows, cols = output.shape[2], output.shape[3]
        return output[:, :, rows // 2, cols // 2], f"centre position ({rows // 2}, {cols // 2}) of {rows}x{cols}"
    if output.dim() == 3:
        tokens = output.shape[1]
        return output[:, tokens // 2, :], f"middle token {tokens // 2} of {tokens}"
    if output.dim() == 2:
        return output, "pooled vector (the layer has no spatial output)"
    raise DebugAtlasError(
        f"The layer output has shape {tuple(output.shape)}; expected [B, C, H, W], [B, T, C] or [B, C]. "
        "HINT: choose another layer."
    )
