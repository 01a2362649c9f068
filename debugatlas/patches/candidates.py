"""Candidate patches from atlas cells (icons, icon crops, exemplar crops) and their controls."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core.errors import DebugAtlasError
from .types import DEFAULT_CROP_SIZES, DEFAULT_SIZES, Patch


def _center_crop(image: torch.Tensor, h: int, w: int | None = None) -> torch.Tensor:
    w = h if w is None else w
    top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
    return image[..., top:top + h, left:left + w]


def candidate_patches(
    cells: Sequence[tuple],
    crop_sizes: Sequence[int] = DEFAULT_CROP_SIZES,
    max_exemplars: int = 4,
    resize_exemplars: bool | None = False,
) -> list[Patch]:
    """Candidate patches for the given cells, best cell first.

    cells: (cell (i, j) or None, icon [C, h, w] in [0, 1] or None, exemplar crops: list of
    [C, h, w]). Per cell: the icon resized to the paste sizes; for each crop size s (pixels of the
    icon, smaller than its side) the s x s centre crop pasted both unresized (native pixels) and
    resized; up to `max_exemplars` receptive-field crops of real exemplars, unresized unless
    `resize_exemplars` (None: both, the resized ones with ids ending in "r"). Whether a trigger
    flips depends on its pixel scale, so both are searched.
    """
    if any(int(s) < 1 for s in crop_sizes):
        raise DebugAtlasError(f"`crop_sizes={tuple(crop_sizes)!r}` must be positive pixel sizes.")
    patches: list[Patch] = []
    for n, entry in enumerate(cells):
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise DebugAtlasError(
                f"`cells[{n}]` is {type(entry).__name__}; expected (cell, icon or None, exemplar crops). "
                "HINT: pass a list of 3-tuples."
            )
        cell, icon, crops = entry
        tag = f"p{n}" if cell is None else f"c{int(cell[0])}-{int(cell[1])}"
        if icon is not None:
            icon = torch.as_tensor(icon)
            patches.append(Patch(f"{tag}-icon", cell, "icon", icon, resize=True))
            side = min(icon.shape[-2:])
            for s in sorted({int(s) for s in crop_sizes}):
                if s >= side:
                    continue
                crop = _center_crop(icon, s)
                patches.append(Patch(f"{tag}-crop{s}", cell, "icon_crop", crop, resize=False))
                patches.append(Patch(f"{tag}-crop{s}r", cell, "icon_crop", crop, resize=True))
        modes = (False, True) if resize_exemplars is None else (bool(resize_exemplars),)
        for k, crop in enumerate(list(crops or [])[:max_exemplars]):
            for resize in modes:
                suffix = "r" if resize and len(modes) == 2 else ""
                patches.append(Patch(f"{tag}-ex{k}{suffix}", cell, "exemplar", torch.as_tensor(crop), resize=resize))
    return patches


def _geometry(patch: Patch, height: int, width: int) -> str:
    """Key shared by a patch and its controls: "resized" or "native-HxW" (size after fitting)."""
    if patch.resize:
        return "resized"
    h, w = patch.image.shape[-2:]
    return f"native-{min(h, height)}x{min(w, width)}"


def control_patches(
    patches: Sequence[Patch],
    images_b: torch.Tensor | None,
    image_shape: Sequence[int],
    sizes: Sequence[float] = DEFAULT_SIZES,
    seed: int = 0,
) -> list[Patch]:
    """Noise and natural controls, one pair per patch geometry (resized, or each native size).

    noise: seeded uniform noise; natural: a crop of a seeded random image of B at a random position
    (omitted when `images_b` is None or empty). Resized controls are made at the largest paste size.
    """
    c, height, width = (int(v) for v in image_shape)
    if images_b is not None and len(images_b) > 0 and tuple(images_b.shape[1:]) != (c, height, width):
        raise DebugAtlasError(
            f"`images_b` have shape {tuple(images_b.shape[1:])}, the images of A {(c, height, width)}. "
            "HINT: pass images of B prepared like the images of A."
        )
    controls = []
    for key in sorted({_geometry(p, height, width) for p in patches}):
        if key == "resized":
            h = w = max(1, min(height, width, round(max(sizes) * min(height, width))))
        else:
            h, w = (int(v) for v in key.split("-", 1)[1].split("x"))
        rng = np.random.default_rng([int(seed), h, w, int(key == "resized")])  # per geometry
        noise = torch.from_numpy(rng.random((c, h, w), dtype=np.float32))
        controls.append(Patch(f"noise-{key}", None, "noise", noise, resize=key == "resized"))
        if images_b is not None and len(images_b) > 0:
            source = images_b[int(rng.integers(0, len(images_b)))]
            top = int(rng.integers(0, source.shape[-2] - h + 1))
            left = int(rng.integers(0, source.shape[-1] - w + 1))
            crop = source[..., top:top + h, left:left + w]
            controls.append(Patch(f"natural-{key}", None, "natural", crop, resize=key == "resized"))
    return controls
