"""Candidate patches from atlas cells (icons, icon crops, exemplar crops) and their controls."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core.errors import DebugAtlasError
from .types import DEFAULT_CROP_SIZES, DEFAULT_SIZES, Patch, patch_side


def _center_crop(image: torch.Tensor, h: int, w: int | None = None) -> torch.Tensor:
    w = h if w is None else w
    top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
    return image[..., top:top + h, left:left + w]


def cap_side(image_shape: Sequence[int], sizes: Sequence[float] = DEFAULT_SIZES) -> int:
    """The largest patch side in pixels: the largest paste size x the shorter image side (>= 1)."""
    height, width = (int(v) for v in tuple(image_shape)[-2:])
    if not sizes or any(not 0 < float(s) <= 1 for s in sizes):
        raise DebugAtlasError(f"`sizes={tuple(sizes)!r}` must be fractions of the image side in (0, 1].")
    return patch_side(max(float(s) for s in sizes), min(height, width))


def cut_to_side(crop: torch.Tensor, side: int, score: torch.Tensor | None = None) -> torch.Tensor:
    """`crop` [C, h, w] cut to at most `side` x `side` pixels: the window with the largest summed
    `score` [h, w] (e.g. the crop's gradient saliency toward its cell's direction; ties: the one
    nearest the centre), or the centre window without a score map. Smaller crops are returned as is.
    """
    crop = torch.as_tensor(crop)
    h, w = crop.shape[-2:]
    wh, ww = min(h, int(side)), min(w, int(side))
    if (wh, ww) == (h, w):
        return crop
    if score is None:
        return _center_crop(crop, wh, ww)
    score = torch.as_tensor(score, dtype=torch.float64)
    if score.dim() == 3 and tuple(score.shape[1:]) == (h, w):
        score = score.sum(0)
    if tuple(score.shape) != (h, w) or not torch.isfinite(score).all():
        raise DebugAtlasError(
            f"A score map of shape {tuple(score.shape)} does not fit a crop of {h}x{w} pixels, or holds "
            "NaN/Inf. HINT: pass one finite [h, w] map per exemplar crop."
        )
    total = torch.zeros(h + 1, w + 1, dtype=torch.float64)
    total[1:, 1:] = score.cumsum(0).cumsum(1)
    sums = total[wh:, ww:] - total[:-wh, ww:] - total[wh:, :-ww] + total[:-wh, :-ww]  # [h-wh+1, w-ww+1]
    rows, cols = torch.meshgrid(torch.arange(sums.shape[0]), torch.arange(sums.shape[1]), indexing="ij")
    centre = (rows - (h - wh) / 2) ** 2 + (cols - (w - ww) / 2) ** 2
    best = sums.max()
    tied = (sums >= best - 1e-9 * max(1.0, float(best.abs()))).flatten()
    k = int(torch.where(tied, centre.flatten().double(), torch.tensor(float("inf"), dtype=torch.float64)).argmin())
    top, left = divmod(k, sums.shape[1])
    return crop[..., top:top + wh, left:left + ww]


def exemplar_saliency(model, layer, crops: torch.Tensor, direction: torch.Tensor,
                      image_shape: Sequence[int]) -> torch.Tensor:
    """Score maps [n, h, w] for `cut_to_side`: |pixel x gradient| of the crop's activation along
    `direction` [D] (the cell's mean activation), summed over channels.

    Each crop [C, h, w] is placed at the centre of a black image of `image_shape` (C, H, W); the
    objective is the sum over the layer's positions of max(0, h . d / |d|). The model is left as found.
    """
    from ..core.model import gradient_context, layer_name_and_module, model_device, run_to_layer

    crops = torch.as_tensor(crops).float()
    if crops.dim() != 4:
        raise DebugAtlasError(f"`crops` has shape {tuple(crops.shape)}; expected [n, C, h, w].")
    c, height, width = (int(v) for v in image_shape)
    n, cc, h, w = crops.shape
    if cc != c or h > height or w > width:
        raise DebugAtlasError(f"Crops {tuple(crops.shape[1:])} do not fit images of {(c, height, width)}.")
    name, module = layer_name_and_module(model, layer)
    device = model_device(model)
    d = torch.as_tensor(direction).float().reshape(-1).to(device)
    d = d / d.norm().clamp_min(1e-12)
    top, left = (height - h) // 2, (width - w) // 2
    with gradient_context(model):
        pixels = crops.to(device).requires_grad_(True)
        canvas = torch.zeros(n, c, height, width, device=device)
        canvas[:, :, top:top + h, left:left + w] = pixels
        acts = run_to_layer(model, module, canvas, name)
        if acts.dim() != 4 or acts.shape[1] != d.numel():
            raise DebugAtlasError(
                f"Layer {name!r} gives {tuple(acts.shape[1:])}; `direction` has {d.numel()} channels. "
                "HINT: pass the cell direction of this layer."
            )
        objective = torch.einsum("nchw,c->nhw", acts.float(), d).clamp_min(0).sum()
        (grad,) = torch.autograd.grad(objective, pixels, allow_unused=True)
    if grad is None:
        return torch.zeros(n, h, w)
    return (grad * pixels.detach()).abs().sum(1).cpu()


def candidate_patches(
    cells: Sequence[tuple],
    crop_sizes: Sequence[int] = DEFAULT_CROP_SIZES,
    max_exemplars: int = 4,
    resize_exemplars: bool | None = False,
    *,
    image_shape: Sequence[int] | None = None,
    sizes: Sequence[float] = DEFAULT_SIZES,
) -> list[Patch]:
    """Candidate patches for the given cells, best cell first.

    cells: (cell (i, j) or None, icon [C, h, w] in [0, 1] or None, exemplar crops: list of
    [C, h, w]) or the same with a fourth item, one score map [h, w] (or None) per exemplar crop.
    Per cell: the icon resized to the paste sizes; for each crop size s (pixels of the icon,
    smaller than its side) the s x s centre crop pasted both unresized (native pixels) and
    resized; up to `max_exemplars` receptive-field crops of real exemplars, unresized unless
    `resize_exemplars` (None: both, the resized ones with ids ending in "r"). Whether a trigger
    flips depends on its pixel scale, so both are searched.

    Size cap: with `image_shape` (C, H, W) every unresized patch stays within the largest of
    `sizes` (`cap_side` pixels, default 0.35 of the side, about 12 % of the image): a larger icon
    crop becomes its centre, a larger exemplar crop is cut to its best-scoring window (centre
    without a score map), before either mode is made. Resized patches are pasted at `sizes`.
    """
    if any(int(s) < 1 for s in crop_sizes):
        raise DebugAtlasError(f"`crop_sizes={tuple(crop_sizes)!r}` must be positive pixel sizes.")
    cap = None if image_shape is None else cap_side(image_shape, sizes)
    patches: list[Patch] = []
    for n, entry in enumerate(cells):
        if not isinstance(entry, (tuple, list)) or len(entry) not in (3, 4):
            raise DebugAtlasError(
                f"`cells[{n}]` is {type(entry).__name__}; expected (cell, icon or None, exemplar crops). "
                "HINT: pass a list of 3-tuples (or 4-tuples ending in one score map per exemplar crop)."
            )
        cell, icon, crops = entry[:3]
        crops = list(crops or [])[:max_exemplars]
        scores = list(entry[3] or []) if len(entry) == 4 else []
        if scores and len(scores) < len(crops):
            raise DebugAtlasError(
                f"`cells[{n}]` has {len(crops)} exemplar crops but {len(scores)} score maps. "
                "HINT: pass one map (or None) per crop."
            )
        tag = f"p{n}" if cell is None else f"c{int(cell[0])}-{int(cell[1])}"
        if icon is not None:
            icon = torch.as_tensor(icon)
            patches.append(Patch(f"{tag}-icon", cell, "icon", icon, resize=True))
            side = min(icon.shape[-2:])
            wanted = {int(s) for s in crop_sizes if int(s) < side}
            for s in sorted(wanted if cap is None else {min(s, cap) for s in wanted}):
                crop = _center_crop(icon, s)
                patches.append(Patch(f"{tag}-crop{s}", cell, "icon_crop", crop, resize=False))
                patches.append(Patch(f"{tag}-crop{s}r", cell, "icon_crop", crop, resize=True))
        modes = (False, True) if resize_exemplars is None else (bool(resize_exemplars),)
        for k, crop in enumerate(crops):
            crop = torch.as_tensor(crop)
            if cap is not None:
                crop = cut_to_side(crop, cap, scores[k] if scores else None)
            for resize in modes:
                suffix = "r" if resize and len(modes) == 2 else ""
                patches.append(Patch(f"{tag}-ex{k}{suffix}", cell, "exemplar", crop, resize=resize))
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
            h = w = patch_side(max(sizes), min(height, width))
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
