"""Normalisation of inputs and outputs: vectors checked and made float32 (`as_float32`), rows
scaled to unit length (`unit_rows`, `unit_rows_torch`), layouts mapped to [0, 1]
(`normalize_layout`)."""
from __future__ import annotations

import numpy as np
import torch

from ..core.errors import DebugAtlasError


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
    arr = as_float32(xy, name="xy", dims=(1, 2)).astype(np.float64)
    flat = arr.reshape(arr.shape[0], -1)
    lo = np.percentile(flat, low, axis=0)
    hi = np.percentile(flat, high, axis=0)
    span = hi - lo
    flat_span = span <= 1e-12 * np.maximum(np.abs(lo), 1.0)
    scaled = margin + (1 - 2 * margin) * (flat - lo) / np.where(flat_span, 1.0, span)
    scaled[:, flat_span] = 0.5
    return np.clip(scaled, 0.0, 1.0).astype(np.float32).reshape(arr.shape)


def as_float32(values: np.ndarray | torch.Tensor, name: str = "vectors", dims: tuple[int, ...] = (2,)
               ) -> np.ndarray:
    """`values` as a float32 numpy array on the CPU; a `DebugAtlasError` naming `name` when it is
    empty, has a number of dimensions not in `dims`, or holds NaN or Inf."""
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


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of `x` [N, C] scaled to unit length, zero rows kept at zero: float32 [N, C]."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norm > 0, x / np.where(norm > 0, norm, 1.0), 0.0).astype(np.float32)


def unit_rows_torch(x: torch.Tensor) -> torch.Tensor:
    """Rows of `x` [N, C] scaled to unit length, zero rows kept at zero, on x's device and dtype."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)
