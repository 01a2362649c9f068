"""What a user passes, checked before any work: pixels, labels, class names, channels, outputs, pairs, sizes.

Each check raises `DebugAtlasError` naming the problem and what to do, or returns a stated
conversion. The one conversion: uint8 images, and float images in [0, 255], are divided by 255
(one `warnings.warn` per dataset). Tuple or dict model outputs are an error that says how to wrap
the model (`LogitsOf`); they are not selected silently.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .errors import DebugAtlasError
from .data_checks import (
    EIGHT_BIT, PIXEL_TOLERANCE, CheckedDataset, DatasetInfo, check_class_names, check_label, checked_dataset,
    dataset_labels, inspect_dataset, pixel_scale, to_unit_range,
)
from .model_checks import LogitsOf, check_channels, check_logits, check_model

__all__ = ["CheckedDataset", "DatasetInfo", "EIGHT_BIT", "LogitsOf", "PIXEL_TOLERANCE", "auto_samples_per_image", "check_channels", "check_class_names", "check_label", "check_logits", "check_model", "check_normalize", "checked_dataset", "dataset_labels", "fit_grid", "inspect_dataset", "layer_positions", "pixel_scale", "resolve_pairs", "to_unit_range"]


def _format_names(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}] ({len(names)} classes)"


def _class_index(cls: Any, names: list[str]) -> int:
    if isinstance(cls, (bool, np.bool_)):
        raise DebugAtlasError(
            f"`pairs` names class {cls!r}. HINT: use a class name or index; classes are {_format_names(names)}."
        )
    if isinstance(cls, str) and cls in names:
        return names.index(cls)
    if isinstance(cls, (int, np.integer)):
        if 0 <= int(cls) < len(names):
            return int(cls)
        raise DebugAtlasError(
            f"`pairs` names class index {int(cls)}, outside 0..{len(names) - 1}. "
            f"HINT: use an index in range or a name from {_format_names(names)}."
        )
    if str(cls) in names:
        return names.index(str(cls))
    folded = [n for n in names if n.casefold() == str(cls).casefold()]
    close = folded or difflib.get_close_matches(str(cls), names, n=3)
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise DebugAtlasError(
        f"`pairs` names unknown class {cls!r}. HINT: {guess}classes are {_format_names(names)}."
    )


def resolve_pairs(pairs: Any, names: Sequence[str],
                  class_counts: Sequence[int] | None = None) -> list[tuple[int, int]] | None:
    """`pairs` ("auto" or [(a, b), ...] by name or index) as index pairs; None means auto.

    Checked before capture: unknown names (with the closest), indices out of range, a class paired
    with itself, a bare pair not inside a list, an empty list; with `class_counts` (images per class)
    also a class A without images. Repeated pairs are kept once, in order.
    """
    names = [str(n) for n in names]
    if pairs is None or (isinstance(pairs, str) and pairs == "auto"):
        return None
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise DebugAtlasError(
            f"`pairs={pairs!r}` must be 'auto' or a list of (A, B) class pairs. HINT: `pairs=[('cat', 'dog')]`."
        )
    if len(pairs) == 0:
        raise DebugAtlasError("`pairs=[]` names no pair. HINT: pass `pairs='auto'` or at least one (A, B).")
    if len(pairs) == 2 and not any(isinstance(p, (list, tuple)) for p in pairs):
        raise DebugAtlasError(
            f"`pairs={pairs!r}` is one pair, not a list of pairs. HINT: `pairs=[{tuple(pairs)!r}]`."
        )
    out: list[tuple[int, int]] = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DebugAtlasError(
                f"`pairs` entry {pair!r} is not an (A, B) pair of class names. HINT: `pairs=[('cat', 'dog')]`."
            )
        a, b = (_class_index(cls, names) for cls in pair)
        if a == b:
            raise DebugAtlasError(f"`pairs` entry {pair!r} names the same class twice. HINT: pick two classes.")
        if class_counts is not None and (class_counts[a] if a < len(class_counts) else 0) == 0:
            raise DebugAtlasError(
                f"`pairs` entry {pair!r}: the dataset has no images of class {names[a]!r}. "
                "HINT: pick a pair whose first class (the true class) occurs in the dataset."
            )
        if (a, b) not in out:
            out.append((a, b))
    return out


def layer_positions(model: nn.Module, module: nn.Module, name: str, images: torch.Tensor) -> int:
    """Spatial positions per image that capture samples from at `module`: the interior of a
    [B, C, H, W] map (both edges excluded, as capture does; whole sides below 3), T of [B, T, C], 1 of [B, C].

    The model runs on `images[:1]` in eval mode without gradients and is left as found (a model in
    training mode would otherwise update its BatchNorm statistics).
    """
    from .model import preserved_model_state, run_to_layer

    with preserved_model_state(model), torch.no_grad():
        model.eval()
        shape = tuple(run_to_layer(model, module, images[:1], name).shape)
    if len(shape) == 4:
        return max(1, (shape[2] - 2 if shape[2] >= 3 else shape[2]) * (shape[3] - 2 if shape[3] >= 3 else shape[3]))
    return max(1, shape[1]) if len(shape) == 3 else 1


def auto_samples_per_image(n_images: int, positions_per_image: int, grid_size: int, cap: int,
                           per_cell: int = 10) -> int:
    """Positions to sample per image for `samples_per_image="auto"`.

    Enough for `per_cell` vectors per grid cell on average (`per_cell * grid_size**2` in all),
    at most the positions an image has and at most what the cap keeps (`cap // n_images`), at least 1.
    """
    for name, value in (("n_images", n_images), ("positions_per_image", positions_per_image),
                        ("grid_size", grid_size), ("cap", cap), ("per_cell", per_cell)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise DebugAtlasError(f"`auto_samples_per_image({name}={value!r})` must be an integer >= 1.")
    wanted = math.ceil(per_cell * grid_size * grid_size / n_images)
    return int(max(1, min(wanted, positions_per_image, cap // n_images)))


def fit_grid(n_vectors: int, grid_size: int, per_cell: int = 10, min_grid: int = 2) -> tuple[int, str | None]:
    """The grid size to use for `n_vectors` points, and why it was shrunk (None when it was not).

    Keeps `grid_size` when it gives at least `per_cell` vectors per cell on average; otherwise the
    largest grid that does, but not below `min_grid` (then the reason says the atlas stays sparse).
    """
    if n_vectors < 0 or grid_size < 1 or per_cell < 1 or min_grid < 1:
        raise DebugAtlasError(
            f"`fit_grid(n_vectors={n_vectors}, grid_size={grid_size}, per_cell={per_cell}, min_grid={min_grid})`: "
            "sizes must be >= 1 (n_vectors >= 0)."
        )
    if n_vectors >= per_cell * grid_size * grid_size:
        return grid_size, None
    grid = max(min(min_grid, grid_size), math.isqrt(n_vectors // per_cell))
    average = n_vectors / (grid_size * grid_size)
    reason = (f"{n_vectors} activation vectors give {average:.2g} per cell on a {grid_size}x{grid_size} grid "
              f"(fewer than {per_cell}); the atlas uses {grid}x{grid}")
    if n_vectors < per_cell * grid * grid:
        reason += f" and is still sparse ({n_vectors / (grid * grid):.2g} per cell)"
    return grid, reason + ". HINT: use more images or samples_per_image, or a smaller grid_size."


def check_normalize(normalize: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`normalize=(mean, std)` as float tuples with one value per image channel (or one for all); else an error."""
    if normalize is None:
        return None
    try:
        mean, std = (tuple(float(v) for v in part) for part in normalize)
    except (TypeError, ValueError) as exc:
        raise DebugAtlasError(
            f"`normalize={normalize!r}` must be (mean, std), each a list of numbers. "
            "HINT: `normalize=([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])`."
        ) from exc
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise DebugAtlasError(
            f"`normalize` has {len(mean)} mean(s) and {len(std)} std(s) for images with {channels} channel(s). "
            f"HINT: give {channels} means then {channels} stds (CLI: `--normalize` with {2 * channels} numbers)."
        )
    if not all(math.isfinite(v) for v in mean + std) or any(s <= 0 for s in std):
        raise DebugAtlasError(f"`normalize` std {list(std)!r} must be positive and every value finite.")
    return mean, std
