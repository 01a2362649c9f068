"""Receptive fields measured by autograd, and crops of real images around sampled positions."""
from __future__ import annotations

import weakref
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import ActivationSet
from ..core.datasets import load_images
from ..core.errors import DebugAtlasError
from ..core.gradients import position_input_gradients
from ..core.model import layer_name_and_module

_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def receptive_field(model: nn.Module, layer: str | nn.Module, input_shape: Sequence[int],
                    position: Sequence[int], trials: int = 16, seed: int = 0) -> tuple[int, int, int, int]:
    """The input region (row0, row1, col0, col1), half-open, that the layer output at `position` sees.

    Measured, not derived from the architecture: the bounding box of the pixels where the gradient
    of the position's output (a random mix of its channels) w.r.t. the input is non-zero, united
    over a constant input and `trials - 1` random ones (so max-pool ties and inactive ReLUs do not
    hide pixels). Clipped to the image. Pooled outputs ((-1, -1), or an empty support) see the whole
    image. Cached per (model, layer, input shape, position).
    """
    return receptive_fields(model, layer, input_shape, [position], trials, seed)[0]


def receptive_fields(model: nn.Module, layer: str | nn.Module, input_shape: Sequence[int],
                     positions: Sequence[Sequence[int]], trials: int = 16,
                     seed: int = 0) -> list[tuple[int, int, int, int]]:
    """`receptive_field` of each of `positions`; the ones not cached yet share one forward pass."""
    name, module = layer_name_and_module(model, layer)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DebugAtlasError(f"`input_shape={tuple(input_shape)!r}` must be (C, H, W) positive integers.")
    wanted = [tuple(int(p) for p in position) for position in positions]
    whole = (0, shape[1], 0, shape[2])
    cache = _CACHE.setdefault(model, {}).setdefault((name, shape), {})
    missing = list(dict.fromkeys(pos for pos in wanted if pos != (-1, -1) and pos not in cache))
    if missing:
        boxes = position_input_gradients(model, module, shape, missing, lambda grad: _support_box(grad, whole),
                                         trials=trials, seed=seed, constant_first=True)
        cache.update(zip(missing, boxes))
    return [whole if pos == (-1, -1) else cache[pos] for pos in wanted]


def _support_box(grad: torch.Tensor, whole: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The half-open box (row0, row1, col0, col1) of the pixels where `grad` [N, C, H, W] is non-zero
    for any input and channel; `whole` when it is zero everywhere."""
    support = (grad != 0).any(0).any(0)
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    if rows.numel() == 0:
        return whole
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _window(start: int, stop: int, length: int, size: int) -> tuple[int, int]:
    """Extend a region clipped by the image border back to `size` on the side that was cut."""
    if stop - start >= size:
        return start, stop
    if start == 0 and stop < length:
        return stop - size, stop
    return start, start + size


def _crop(image: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int], fill: float) -> torch.Tensor:
    _, height, width = image.shape
    pad = (max(0, -cols[0]), max(0, cols[1] - width), max(0, -rows[0]), max(0, rows[1] - height))
    padded = F.pad(image, pad, value=fill)
    r0, c0 = rows[0] + pad[2], cols[0] + pad[0]
    return padded[:, r0:r0 + rows[1] - rows[0], c0:c0 + cols[1] - cols[0]]


def _resize(crop: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(crop.shape[1:]) == size:
        return crop
    return F.interpolate(crop[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def exemplar_crops(model: nn.Module, layer: str | nn.Module, dataset, acts: ActivationSet,
                   sample_indices: Sequence[int] | torch.Tensor, size: int | tuple[int, int] | None = None,
                   fill: float = 0.0) -> torch.Tensor:
    """Crops [n, C, h, w] float32 of the real images around sampled positions, in [0, 1].

    Sample k is image `acts.image_ids[i]` cut to the receptive field of `acts.positions[i]`
    (i = sample_indices[k]). Every crop has the size of an unclipped receptive field (that of the
    layer's centre position); where the field runs past the image border the crop is filled with
    `fill` (0 is what a zero-padded network sees). `size` resizes the crops (int or (h, w)).
    """
    index = torch.as_tensor(sample_indices, dtype=torch.long).reshape(-1)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= len(acts):
        raise DebugAtlasError(
            f"`sample_indices` must be a non-empty list of indices below {len(acts)} (got {index.tolist()[:8]}). "
            "HINT: use indices into the ActivationSet, such as an Atlas's exemplars."
        )
    images = load_images(dataset, acts.image_ids[index])
    shape = tuple(images.shape[1:])
    positions = acts.positions[index].tolist()
    if acts.spatial_shape is None:
        window = shape[1:]
        fields = receptive_fields(model, layer, shape, positions)
    else:
        centre = (acts.spatial_shape[0] // 2, acts.spatial_shape[1] // 2)
        (r0, r1, c0, c1), *fields = receptive_fields(model, layer, shape, [centre, *positions])
        window = (r1 - r0, c1 - c0)
    crops = []
    for image, (r0, r1, c0, c1) in zip(images, fields):
        rows = _window(r0, r1, shape[1], window[0])
        cols = _window(c0, c1, shape[2], window[1])
        crops.append(_resize(_crop(image, rows, cols, fill), window))
    out = torch.stack(crops)
    if size is not None:
        target = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        out = torch.stack([_resize(crop, target) for crop in out])
    return out.float().clamp(0, 1)
