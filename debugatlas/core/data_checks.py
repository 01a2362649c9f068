"""Checks of a user's dataset before any work: pixels, labels, shapes, class names; the one conversion (8-bit to [0, 1])."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .errors import DebugAtlasError

PIXEL_TOLERANCE = 1e-3  # float images may overshoot [0, 1] by this much (resampling); clamped
EIGHT_BIT = 255.0
MAX_COUNTED_CLASSES = 1_000_000  # without a class count, labels above this are not counted per class


@dataclass(frozen=True)
class DatasetInfo:
    """What `inspect_dataset` saw. shape: (C, H, W) of every sampled image; scale: 1.0, or 1/255
    when the images are 8-bit (uint8, or floats above 1 and at most 255); checked: the indices
    looked at; labels: their labels; class_counts: images per class (for `num_classes` classes, or up
    to the largest label) when the dataset exposes all its labels (`.targets` or `.labels`), else None."""

    n: int
    shape: tuple[int, int, int]
    scale: float
    checked: tuple[int, ...]
    labels: tuple[int, ...]
    class_counts: tuple[int, ...] | None


def as_image_tensor(image: Any, index: int) -> torch.Tensor:
    """dataset[index]'s image as a [C, H, W] tensor (numpy arrays taken, [H, W] gets a channel), or a clear error."""
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise DebugAtlasError(
            f"dataset[{index}][0] is a {type(image).__name__}, not a tensor. "
            "HINT: add `torchvision.transforms.ToTensor()` to the dataset's transform."
        )
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3 or min(image.shape) < 1:
        raise DebugAtlasError(
            f"dataset[{index}][0] has shape {tuple(image.shape)}; expected [C, H, W] (or [H, W] for grayscale). "
            "HINT: yield one image per item, channels first (`ToTensor()` does this; for [H, W, C] arrays "
            "use `.permute(2, 0, 1)`)."
        )
    if image.shape[0] > 4 and image.shape[-1] in (1, 3, 4):
        raise DebugAtlasError(
            f"dataset[{index}][0] has shape {tuple(image.shape)}: channels look last. "
            "HINT: use channels first, [C, H, W] (`image.permute(2, 0, 1)`)."
        )
    return image


def pixel_scale(image: Any, index: int = 0) -> float:
    """1.0 for a float image in [0, 1]; 1/255 for uint8 or a float image in [0, 255]; else an error.

    NaN or Inf pixels, negative pixels (already normalised images) and values above 255 are errors
    naming `index`.
    """
    image = as_image_tensor(image, index)
    if image.dtype == torch.bool:
        return 1.0
    if image.dtype == torch.uint8:
        return 1.0 / EIGHT_BIT
    if not image.dtype.is_floating_point:
        low, high = int(image.min()), int(image.max())
        if 0 <= low and high <= EIGHT_BIT:
            return 1.0 / EIGHT_BIT
        raise DebugAtlasError(
            f"dataset[{index}][0] is {str(image.dtype).replace('torch.', '')} with values in [{low}, {high}]; "
            "expected floats in [0, 1] (or 8-bit values 0..255). HINT: convert with `ToTensor()` or divide by "
            "the largest possible pixel value."
        )
    finite = torch.isfinite(image)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DebugAtlasError(
            f"dataset[{index}][0] has {bad} NaN or infinite pixel value(s). "
            "HINT: fix or drop that image (check the transform that produced it)."
        )
    low, high = float(image.min()), float(image.max())
    if low < -PIXEL_TOLERANCE:
        raise DebugAtlasError(
            f"dataset[{index}][0] has pixel values in [{low:.3g}, {high:.3g}]; expected [0, 1]. "
            "HINT: the images look normalised already; drop `Normalize` from the dataset's transform and pass "
            "`normalize=(mean, std)` instead (CLI: `--normalize`), so patches and icons live in [0, 1]."
        )
    if high <= 1.0 + PIXEL_TOLERANCE:
        return 1.0
    if high <= EIGHT_BIT + PIXEL_TOLERANCE:
        return 1.0 / EIGHT_BIT
    raise DebugAtlasError(
        f"dataset[{index}][0] has pixel values up to {high:.4g}; expected [0, 1] (or 0..255). "
        "HINT: divide by the largest possible pixel value."
    )


def to_unit_range(image: Any, index: int, scale: float) -> torch.Tensor:
    """The image as float32 [C, H, W] in [0, 1]: times `scale` (1 or 1/255), after the checks of `pixel_scale`.

    Any scale other than 1 means 1/255, the one conversion there is.

    An image of a dataset decided to be in [0, 1] (scale 1) whose values exceed 1 is an error: the
    dataset mixes pixel ranges.
    """
    own = pixel_scale(image, index)
    image = as_image_tensor(image, index)
    if image.dtype == torch.uint8:
        scale = 1.0 / EIGHT_BIT
    elif own < scale:
        raise DebugAtlasError(
            f"dataset[{index}][0] has pixel values above 1 ({float(image.max()):.4g}) but the images looked at "
            "first were in [0, 1]. HINT: give every image the same pixel range, [0, 1]."
        )
    # dividing (as `ToTensor` does) gives exactly float32(k / 255) for every 8-bit value k
    out = image.float() / EIGHT_BIT if scale != 1.0 else image.float()
    # out of place: the image may be the dataset's own tensor, or one made under `torch.inference_mode()`
    return out.clamp(0.0, 1.0)


def check_label(label: Any, index: int, num_classes: int | None = None) -> int:
    """`label` as an int (Python, NumPy or a one-element integer tensor) in [0, num_classes), or an error."""
    value = label
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype.is_floating_point or value.dtype == torch.bool:
            raise DebugAtlasError(
                f"dataset[{index}][1] is a {str(value.dtype).replace('torch.', '')} tensor of shape "
                f"{tuple(value.shape)}; expected one integer class index. HINT: yield `int(label)` "
                "(not one-hot, not a float)."
            )
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise DebugAtlasError(
            f"dataset[{index}][1] is {value!r} ({type(label).__name__}); expected an integer class index. "
            "HINT: yield `int(label)` in 0..K-1."
        )
    value = int(value)
    if value < 0 or (num_classes is not None and value >= num_classes):
        valid = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
        raise DebugAtlasError(
            f"dataset[{index}] has label {value}, outside the {num_classes if num_classes is not None else ''} "
            f"classes ({valid}). HINT: labels index the class names and the model's outputs; fix the label "
            "or pass matching `class_names=`."
        )
    return value


def _item(dataset, index: int) -> tuple[Any, Any]:
    item = dataset[index]
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DebugAtlasError(
            f"dataset[{index}] is a {type(item).__name__}, not an (image, label) pair. "
            "HINT: wrap the dataset so that it yields (image tensor in [0, 1], int label)."
        )
    return item[0], item[1]


def _length(dataset) -> int:
    try:
        n = len(dataset)
    except TypeError as exc:
        raise DebugAtlasError(
            f"The dataset ({type(dataset).__name__}) has no length. HINT: pass a map-style dataset "
            "(with `__len__` and `__getitem__`), e.g. a `torchvision.datasets.ImageFolder`."
        ) from exc
    if n == 0:
        raise DebugAtlasError("The dataset is empty. HINT: pass a dataset with at least one image.")
    return int(n)


def dataset_labels(dataset) -> np.ndarray | None:
    """All labels without loading images, from `.targets` or `.labels` when the dataset has them."""
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is None:
            continue
        try:
            array = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        except (TypeError, ValueError):
            return None
        if array.ndim == 1 and len(array) == len(dataset) and np.issubdtype(array.dtype, np.integer):
            return array.astype(np.int64)
    return None


def inspect_dataset(dataset, sample: int = 16, num_classes: int | None = None, seed: int = 0) -> DatasetInfo:
    """Look at a few items up front: the first, the last and `sample` others drawn with `seed`.

    Checks at least one item, (image, label) pairs, image shape [C, H, W] or [H, W], the same shape
    for every item looked at, finite pixels in [0, 1] or 0..255 (see `pixel_scale`), labels that are
    ints in [0, num_classes). When the dataset exposes all its labels, all are checked.
    """
    n = _length(dataset)
    rng = np.random.default_rng(seed)
    extra = rng.choice(n, size=min(n, max(0, int(sample))), replace=False).tolist() if n > 2 else []
    checked = tuple(dict.fromkeys([0, n - 1, *sorted(int(i) for i in extra)]))
    shape, scales, labels = None, [], []
    for index in checked:
        image, label = _item(dataset, index)
        image = as_image_tensor(image, index)
        scales.append(pixel_scale(image, index))
        if shape is None:
            shape, first = tuple(image.shape), index
        elif tuple(image.shape) != shape:
            raise DebugAtlasError(
                f"dataset[{index}][0] has shape {tuple(image.shape)} but dataset[{first}][0] has {shape}. "
                "HINT: give every image the same size (e.g. `transforms.Resize((H, W))`, CLI `--image-size`)."
            )
        labels.append(check_label(label, index, num_classes))
    counts = None
    all_labels = dataset_labels(dataset)
    if all_labels is not None:
        bad = np.flatnonzero((all_labels < 0) | (all_labels >= (num_classes or np.iinfo(np.int64).max)))
        if bad.size:
            check_label(int(all_labels[bad[0]]), int(bad[0]), num_classes)
        if num_classes is not None or int(all_labels.max()) < MAX_COUNTED_CLASSES:
            counts = tuple(int(c) for c in np.bincount(all_labels, minlength=num_classes or 0))
    return DatasetInfo(n, shape, min(scales), checked, tuple(labels), counts)


class CheckedDataset(torch.utils.data.Dataset):
    """`dataset` with every item checked and converted when read: a float32 image in [0, 1] and an int label.

    8-bit images are divided by 255 with one warning per dataset; other problems raise
    `DebugAtlasError` naming the index. `classes` and `targets` of the wrapped dataset are passed on.
    """

    def __init__(self, dataset, scale: float = 1.0, num_classes: int | None = None) -> None:
        self.dataset = dataset
        self.scale = float(scale)
        self.num_classes = num_classes
        self._warned = False

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name in ("classes", "targets", "labels", "class_to_idx", "samples"):
            return getattr(self.__dict__["dataset"], name)
        raise AttributeError(name)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = _item(self.dataset, index)
        tensor = as_image_tensor(image, index)
        out = to_unit_range(tensor, index, self.scale)
        if (tensor.dtype == torch.uint8 or self.scale != 1.0) and not self._warned:
            self._warned = True
            warnings.warn(
                f"debugatlas: the dataset's images are 8-bit ({str(tensor.dtype).replace('torch.', '')} in 0..255); "
                "they are divided by 255 to the [0, 1] pixel space the toolkit works in. To silence this, "
                "yield float images in [0, 1] (`transforms.ToTensor()` or `ConvertImageDtype(torch.float32)`).",
                UserWarning, stacklevel=2,
            )
        return out, check_label(label, index, self.num_classes)


def checked_dataset(dataset, sample: int = 16, num_classes: int | None = None,
                    seed: int = 0) -> CheckedDataset:
    """`inspect_dataset` up front, then a `CheckedDataset` that converts lazily with the scale it found.

    Given a `CheckedDataset` it is returned as it is, or, with a new `num_classes`, as a copy that
    also checks every label against it (all labels at once when the dataset exposes them).
    """
    if isinstance(dataset, CheckedDataset):
        if num_classes is None or num_classes == dataset.num_classes:
            return dataset
        labels = dataset_labels(dataset.dataset)
        if labels is not None:
            bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
            if bad.size:
                check_label(int(labels[bad[0]]), int(bad[0]), num_classes)
        return CheckedDataset(dataset.dataset, dataset.scale, num_classes)
    info = inspect_dataset(dataset, sample=sample, num_classes=num_classes, seed=seed)
    return CheckedDataset(dataset, info.scale, num_classes)


def check_class_names(names: Sequence[Any], num_classes: int | None = None) -> list[str]:
    """Class names as strings: one per model output, no duplicates, none empty (HTML in a name is fine:
    the report escapes it)."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise DebugAtlasError(
            f"`class_names={names!r}` must be a list of strings, one per class. HINT: `class_names=['cat', 'dog']`."
        )
    out = [str(n) for n in names]
    seen: dict[str, int] = {}
    for k, name in enumerate(out):
        if not name.strip():
            raise DebugAtlasError(f"Class {k} has an empty name. HINT: give every class a visible name.")
        if name in seen:
            raise DebugAtlasError(
                f"Class name {name!r} is used twice (classes {seen[name]} and {k}). "
                "HINT: class names must be unique, so that pairs and reports name one class each."
            )
        seen[name] = k
    if num_classes is not None and len(out) != num_classes:
        raise DebugAtlasError(
            f"The model predicts {num_classes} classes but there are {len(out)} class names. "
            "HINT: pass `class_names=` with one name per model output."
        )
    return out
