"""Pixels as stored in a run directory: 8-bit [h, w, C] arrays, exactly as a PNG holds them."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[C, h, w] in [0, 1] -> [h, w, C] uint8, the channels kept, rounded half to even: the pixels a
    PNG of the run holds, read back by `from_uint8`. (A page's pictures: `report.figures.to_rgb8`.)"""
    return (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """[h, w, C] (or [h, w]) uint8 -> [C, h, w] float32 in [0, 1]."""
    array = np.array(array, dtype=np.uint8, copy=True)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0
