"""Drawing an activation atlas: a grid of icons, each faded toward white by how few samples it has."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..core.errors import DebugAtlasError


def _count_lookup(counts, grid_size: int) -> np.ndarray:
    table = np.zeros((grid_size, grid_size), dtype=np.float64)
    if isinstance(counts, Mapping):
        for (i, j), value in counts.items():
            if 0 <= int(i) < grid_size and 0 <= int(j) < grid_size:
                table[int(i), int(j)] = float(value)
        return table
    array = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    if array.shape != (grid_size, grid_size):
        raise DebugAtlasError(
            f"`counts` has shape {array.shape}; expected ({grid_size}, {grid_size}) indexed [i, j]. "
            "HINT: pass Atlas.counts or a dict {(i, j): count}."
        )
    return array


def icon_alpha(counts: np.ndarray, min_alpha: float = 0.2) -> np.ndarray:
    """Opacity per cell, log-scaled: min_alpha + (1 - min_alpha) * log(1 + n) / log(1 + max n); 0 where n = 0."""
    counts = np.clip(np.asarray(counts, dtype=np.float64), 0, None)
    top = counts.max() if counts.size else 0.0
    if top <= 0:
        return np.zeros_like(counts)
    scaled = np.log1p(counts) / np.log1p(top)
    return np.where(counts > 0, min_alpha + (1.0 - min_alpha) * scaled, 0.0)


def draw_icon_atlas(icons_by_cell: Mapping[tuple[int, int], torch.Tensor], counts, grid_size: int,
                    cell_px: int = 32, min_alpha: float = 0.2, background: float = 1.0) -> np.ndarray:
    """The atlas as an image: np.uint8 [G * cell_px, G * cell_px, 3].

    icons_by_cell: {(i, j): [C, h, w] tensor in [0, 1]} with C = 1 or 3 (resized to cell_px).
    counts: {(i, j): n} or a [G, G] array indexed [i, j]; the opacity of cell (i, j) is
    `icon_alpha(counts)` blended over the `background` grey level (1 = white).
    Cell (i, j) is drawn at column i, row j (row 0 at the top). Cells without an icon stay background.
    """
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 1:
        raise DebugAtlasError(f"`draw_icon_atlas(grid_size={grid_size!r})` must be an integer >= 1.")
    if isinstance(cell_px, bool) or not isinstance(cell_px, int) or cell_px < 1:
        raise DebugAtlasError(f"`draw_icon_atlas(cell_px={cell_px!r})` must be an integer >= 1.")
    alpha = icon_alpha(_count_lookup(counts, grid_size), min_alpha)
    side = grid_size * cell_px
    canvas = np.full((side, side, 3), float(background), dtype=np.float64)
    for (i, j), icon in icons_by_cell.items():
        i, j = int(i), int(j)
        if not (0 <= i < grid_size and 0 <= j < grid_size):
            raise DebugAtlasError(
                f"`icons_by_cell` has cell {(i, j)!r} outside a {grid_size}x{grid_size} grid. "
                "HINT: keys are (i, j) with 0 <= i, j < grid_size."
            )
        icon = torch.as_tensor(icon).detach().float().cpu()
        if icon.dim() != 3 or icon.shape[0] not in (1, 3):
            raise DebugAtlasError(
                f"The icon of cell {(i, j)} has shape {tuple(icon.shape)}; expected [1 or 3, h, w]."
            )
        if tuple(icon.shape[1:]) != (cell_px, cell_px):
            down = icon.shape[1] > cell_px or icon.shape[2] > cell_px
            icon = F.interpolate(icon[None], size=(cell_px, cell_px), mode="bilinear",
                                 align_corners=False, antialias=down)[0]
        rgb = icon.clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).numpy()
        a = alpha[i, j]
        block = canvas[j * cell_px:(j + 1) * cell_px, i * cell_px:(i + 1) * cell_px]
        block[:] = a * rgb + (1.0 - a) * block
    return np.round(canvas * 255).clip(0, 255).astype(np.uint8)
