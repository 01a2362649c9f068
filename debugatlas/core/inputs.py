"""What a user passes, checked before any work: pixels, labels, class names, channels, outputs, pairs, sizes.

Each check raises `DebugAtlasError` naming the problem and what to do, or returns a stated
conversion. The one conversion: uint8 images, and float images in [0, 255], are divided by 255
(one `warnings.warn` per dataset). Tuple or dict model outputs are an error that says how to wrap
the model (`LogitsOf`); they are not selected silently.
"""
from __future__ import annotations

import difflib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np
import torch
from torch import nn

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


def _as_tensor(image: Any, index: int) -> torch.Tensor:
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
    image = _as_tensor(image, index)
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
    image = _as_tensor(image, index)
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
        image = _as_tensor(image, index)
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
        tensor = _as_tensor(image, index)
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


class LogitsOf(nn.Module):
    """`model` whose forward returns only the logits: `output[key]` of a tuple, list or dict output.

    Layer names gain a `model.` prefix (`layer="model.layer3"`), or pass the module itself.
    """

    def __init__(self, model: nn.Module, key: Hashable = 0) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, dict) or hasattr(out, "keys"):
            return out[self.key]
        return out[self.key] if isinstance(out, (tuple, list)) else getattr(out, str(self.key))


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    if isinstance(output, dict) or hasattr(output, "keys"):
        parts = [f"{k!r}: {_describe(v) if isinstance(v, torch.Tensor) else type(v).__name__}"
                 for k, v in list(output.items())[:6]]
        return f"a {type(output).__name__} {{{', '.join(parts)}}}"
    if isinstance(output, (tuple, list)):
        parts = [_describe(v) if isinstance(v, torch.Tensor) else type(v).__name__ for v in output[:6]]
        return f"a {type(output).__name__} of {len(output)} ({'; '.join(parts)})"
    return f"a {type(output).__name__}"


def _logits_key(output: Any, batch: int) -> Hashable | None:
    """The key or index of the logits in a tuple/list/dict output: the entry named "logits" or the only
    [B, K] tensor; None when that is ambiguous."""
    items = list(output.items() if (isinstance(output, dict) or hasattr(output, "keys")) else enumerate(output))
    candidates = [k for k, v in items if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[0] == batch]
    named = [k for k in candidates if str(k).lower() in ("logits", "logit", "out", "output", "scores")]
    if named:
        return named[0]
    return candidates[0] if len(candidates) == 1 else None


def check_logits(output: Any, batch: int, min_classes: int = 2, what: str = "The model") -> int:
    """The number of classes K of a logits output [batch, K]; tuple/dict outputs get a wrapping hint."""
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[0] == batch:
        if output.shape[1] < min_classes:
            raise DebugAtlasError(
                f"{what} returned logits of shape {tuple(output.shape)}: {output.shape[1]} class(es). "
                f"HINT: atlases of confusions need a classifier with at least {min_classes} outputs "
                "(a binary classifier with one logit: return `torch.cat([-z, z], 1)`)."
            )
        if not bool(torch.isfinite(output).all()):
            raise DebugAtlasError(
                f"{what} returned NaN or infinite logits on the first images. HINT: check the weights "
                "(a diverged checkpoint) and the input range."
            )
        return int(output.shape[1])
    if isinstance(output, (tuple, list, dict)) or hasattr(output, "keys"):
        key = _logits_key(output, batch)
        how = (f"`debugatlas.core.inputs.LogitsOf(model, {key!r})`" if key is not None
               else "`debugatlas.core.inputs.LogitsOf(model, KEY)` with the key of the logits")
        raise DebugAtlasError(
            f"{what} returned {_describe(output)}; expected one logits tensor [B, K]. HINT: wrap it so that "
            f"forward returns the pre-softmax logits, e.g. {how} (layer names then start with `model.`)."
        )
    raise DebugAtlasError(
        f"{what} returned {_describe(output)}; expected pre-softmax logits of shape [{batch}, K]. "
        "HINT: forward must return one logits tensor per batch, [B, K] (flatten any extra dimensions)."
    )


def _first_weight_layer(model: nn.Module, images: torch.Tensor) -> tuple[str, nn.Module, int | None] | None:
    """The first conv or linear layer the forward pass reaches, and the size of the input dimension it
    reads (channels for a conv, the last dimension for a linear layer); the forward stops there."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    found: list = []

    class _Stop(Exception):
        pass

    def hook(module, inputs):
        x = inputs[0] if inputs else None
        dim = -1 if isinstance(module, nn.Linear) else 1
        found.append((module, int(x.shape[dim]) if isinstance(x, torch.Tensor) and x.dim() >= 2 else None))
        raise _Stop

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, kinds) and not isinstance(m, nn.modules.lazy.LazyModuleMixin)]
    try:
        model(images)
    except Exception:  # noqa: BLE001 - _Stop, or a model failing before its first layer (judged later)
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        return None
    module, given = found[0]
    return next(n for n, m in model.named_modules() if m is module), module, given


def _grayscale_hint(channels: int, expected: int) -> str:
    if channels == 1 and expected == 3:
        return ("HINT: the images are grayscale and the model expects RGB: add "
                "`transforms.Grayscale(num_output_channels=3)` to the dataset's transform (CLI: drop `--grayscale`).")
    if channels in (3, 4) and expected == 1:
        return ("HINT: the model expects grayscale: add `transforms.Grayscale(1)` to the dataset's transform "
                "(CLI: `--grayscale`).")
    if channels == 4 and expected == 3:
        return "HINT: the images have an alpha channel: convert them with `PIL.Image.convert('RGB')`."
    return f"HINT: give the images {expected} channels, or use a model built for {channels}."


def check_channels(model: nn.Module, images: torch.Tensor) -> None:
    """Images [B, C, H, W] against the first conv (or linear) layer the model runs; an error says how.

    The model runs in eval mode without gradients only up to that layer; it is left as found.
    """
    from .model import preserved_model_state

    if images.dim() != 4:
        raise DebugAtlasError(f"`check_channels` needs images [B, C, H, W], got {tuple(images.shape)}.")
    channels, pixels = int(images.shape[1]), int(images.shape[2] * images.shape[3])
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        seen = _first_weight_layer(model, images)
    if seen is None:
        return
    name, module, given = seen
    if isinstance(module, nn.Linear):
        expected = module.in_features
        if given is None or given == expected:
            return
        if given == channels * pixels and expected % pixels == 0:
            raise DebugAtlasError(
                f"The model's first layer {name!r} takes {expected} features = {expected // pixels} channel(s) x "
                f"{pixels} pixels, but the images have {channels} channel(s). "
                + _grayscale_hint(channels, expected // pixels)
            )
        raise DebugAtlasError(
            f"The model's first layer {name!r} (Linear) takes {expected} features but gets {given} from images "
            f"of shape {tuple(images.shape[1:])}. HINT: give the images the size the model was built for "
            "(`transforms.Resize`, CLI `--image-size`)."
        )
    expected = getattr(module, "in_channels", None)
    if not expected or given is None or given == expected:
        return
    if given == channels:
        raise DebugAtlasError(
            f"The images have {channels} channel(s) but the model's first layer {name!r} "
            f"({type(module).__name__}) takes {expected}. " + _grayscale_hint(channels, expected)
        )
    raise DebugAtlasError(
        f"The model's first layer {name!r} ({type(module).__name__}) takes {expected} channels but gets {given} "
        f"from images with {channels}. HINT: check the model's input transform and the `normalize` values "
        "(one mean and std per image channel)."
    )


def check_model(model: nn.Module, images: torch.Tensor, min_classes: int = 2) -> int:
    """Run `model` (in eval mode, no grad, left as found) on a few images; the number of classes K.

    Checks channels first (`check_channels`), then that the output is logits [B, K] (`check_logits`).
    Any other error the model raises on them is reported as a `DebugAtlasError` with the input shape.
    """
    from .model import preserved_model_state

    check_channels(model, images)
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        try:
            output = model(images)
        except DebugAtlasError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's model: report what it said, with the input
            raise DebugAtlasError(
                f"The model raised {type(exc).__name__} on images of shape {tuple(images.shape)}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. HINT: check the image size and channels "
                "the model expects (`--image-size`, `transforms.Resize`)."
            ) from exc
    return check_logits(output, images.shape[0], min_classes)


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
