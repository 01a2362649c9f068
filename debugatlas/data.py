"""Data: the embedded default (scikit-learn's bundled digits), ImageFolder, the planted shortcut."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .core.errors import DebugAtlasError

DIGIT_CLASSES = [str(d) for d in range(10)]


@dataclass
class PlantedShortcut:
    """Paste a small trigger into a fraction of one class's images: ground truth for the toolkit.

    trigger: "checker" (black/white checkerboard) or "cross" (a bright X on black).
    size: trigger side in pixels. position: "random" or "corner" (bottom right).
    """

    target: int
    fraction: float = 0.3
    size: int = 5
    trigger: str = "checker"
    position: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise DebugAtlasError(f"`PlantedShortcut(fraction={self.fraction!r})` must be in [0, 1].")
        if self.trigger not in ("checker", "cross"):
            raise DebugAtlasError(f"`PlantedShortcut(trigger={self.trigger!r})`: use 'checker' or 'cross'.")
        if self.position not in ("random", "corner"):
            raise DebugAtlasError(f"`PlantedShortcut(position={self.position!r})`: use 'random' or 'corner'.")

    def pattern(self, channels: int) -> torch.Tensor:
        """The trigger as a [channels, size, size] tensor in [0, 1]."""
        s = self.size
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        if self.trigger == "checker":
            tile = ((yy + xx) % 2).float()
        else:
            tile = ((yy == xx) | (yy + xx == s - 1)).float()
        return tile.expand(channels, s, s).clone()

    def place(self, height: int, width: int, index: int) -> tuple[int, int]:
        """(row, col) of the trigger's top-left corner on image `index` of that size."""
        if self.position == "corner":
            return height - self.size - 1, width - self.size - 1
        rng = np.random.default_rng([self.seed, index])
        return int(rng.integers(0, height - self.size + 1)), int(rng.integers(0, width - self.size + 1))

    def apply(self, image: torch.Tensor, index: int) -> torch.Tensor:
        """The image with the trigger pasted, at a position fixed by `seed` and `index` (`place`)."""
        c, h, w = image.shape
        y, x = self.place(h, w, index)
        out = image.clone()
        out[:, y:y + self.size, x:x + self.size] = self.pattern(c)
        return out

    def poisoned(self, labels: Sequence[int]) -> np.ndarray:
        """Boolean mask of the indices whose images carry the trigger."""
        labels = np.asarray(labels)
        rng = np.random.default_rng(self.seed)
        return (labels == self.target) & (rng.random(len(labels)) < self.fraction)


class TensorImageDataset(Dataset):
    """Images [N, C, H, W] in [0, 1] with int labels, optionally with a planted shortcut."""

    def __init__(self, images: torch.Tensor, labels: Sequence[int], classes: Sequence[str],
                 shortcut: PlantedShortcut | None = None) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.classes = list(classes)
        self.shortcut = shortcut
        self.poisoned = (shortcut.poisoned(self.labels.numpy()) if shortcut is not None
                         else np.zeros(len(self.labels), dtype=bool))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.poisoned[index]:
            image = self.shortcut.apply(image, index)
        return image, int(self.labels[index])


def digits(size: int = 24, val_fraction: float = 0.3, seed: int = 0,
           shortcut: PlantedShortcut | None = None,
           poison_val: bool = False) -> tuple[TensorImageDataset, TensorImageDataset]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images, offline), upsampled.

    Returns (train, val) as [1, size, size] 8-bit images in [0, 1], split by a seeded permutation.
    A `shortcut` poisons the training split; with `poison_val` the validation split too, at the
    same fraction (data drawn from one poisoned source, as a user analysing it would have it).
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise DebugAtlasError(f"`digits(size={size!r})` must be >= 8 (the images are 8x8).")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    images = torch.round(images * 255) / 255  # 8-bit, like any image file: a PNG export is exact
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(labels) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = TensorImageDataset(images[train_idx], labels[train_idx], DIGIT_CLASSES, shortcut)
    val = TensorImageDataset(images[val_idx], labels[val_idx], DIGIT_CLASSES, shortcut if poison_val else None)
    return train, val


IMAGE_READ_ERRORS = (OSError, SyntaxError, ValueError)  # PIL's UnidentifiedImageError and truncation are OSErrors


def _unreadable(path: str | Path, exc: BaseException) -> DebugAtlasError:
    return DebugAtlasError(
        f"Image file {str(path)!r} could not be read ({type(exc).__name__}: {exc}). "
        "HINT: remove or replace that file (it is corrupt, truncated or not an image); "
        "`debugatlas.data.verify_image_files(root)` lists every unreadable file at once."
    )


def load_rgb(path: str | Path):
    """Open an image file as an RGB PIL image; an unreadable file is a `DebugAtlasError` naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except IMAGE_READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc


def image_folder(root: str | Path, size: int | None = None, grayscale: bool = False, verify: bool = False):
    """An ImageFolder (`root/<class>/*.png|jpg`) yielding [C, H, W] float images in [0, 1].

    A file that cannot be read raises `DebugAtlasError` naming it when its item is loaded; `verify`
    checks every file's header up front instead (see `verify_image_files`).
    """
    from torchvision import datasets, transforms

    root = Path(root)
    if not root.is_dir():
        raise DebugAtlasError(
            f"`--data {str(root)!r}` is not a directory. HINT: pass a folder laid out as <class>/<image files>."
        )
    steps = []
    if grayscale:
        steps.append(transforms.Grayscale(1))
    if size is not None:
        steps.append(transforms.Resize((size, size)))
    steps.append(transforms.ToTensor())
    try:
        dataset = datasets.ImageFolder(str(root), transform=transforms.Compose(steps), loader=load_rgb)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DebugAtlasError(f"Could not read images from {str(root)!r}: {exc}") from exc
    if verify:
        verify_image_files(dataset)
    return dataset


def verify_image_files(data, limit: int = 20) -> int:
    """Check that every image file of an ImageFolder (or a folder path) opens; returns how many were checked.

    Cheap: PIL reads each header and checks its structure (`Image.verify`) without decoding pixels,
    so a file cut short inside its pixel data may still pass and fail later, when its item is loaded.
    Every unreadable file (up to `limit` named) is reported in one `DebugAtlasError`.
    """
    from PIL import Image

    if isinstance(data, (str, Path)):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        files = sorted(str(f) for f in Path(data).rglob("*") if f.suffix.lower() in IMG_EXTENSIONS)
    else:
        files = [path for path, _ in getattr(data, "samples", [])]
    bad = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except IMAGE_READ_ERRORS as exc:
            bad.append((path, exc))
    if bad:
        shown = "; ".join(f"{p!r} ({type(e).__name__}: {e})" for p, e in bad[:limit])
        more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
        raise DebugAtlasError(
            f"{len(bad)} of {len(files)} image files could not be read: {shown}{more}. "
            "HINT: remove or replace those files."
        )
    return len(files)


def class_names(dataset, class_names: Sequence[str] | None = None, num_classes: int | None = None) -> list[str]:
    """Class names from the argument, `dataset.classes`, or "0".."K-1"; duplicates are an error."""
    from .core.inputs import check_class_names

    if class_names is not None:
        return check_class_names(class_names)
    names = getattr(dataset, "classes", None)
    if names is not None:
        return check_class_names(names)
    if num_classes is None:
        raise DebugAtlasError("No class names: pass `class_names=` or a dataset with `.classes`.")
    return [str(i) for i in range(num_classes)]


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def unpack_cifar10(archive: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Unpack the CIFAR-10 ImageFolder archive (`train/<class>/<n>.jpg`) once; returns the `train` folder.

    `cache_dir` defaults to `~/.cache/debugatlas/cifar10`; a finished unpack is marked by a
    `.complete` file, so later calls return at once.
    """
    import tarfile

    archive = Path(archive)
    cache = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "debugatlas" / "cifar10"
    done = cache / ".complete"
    if not done.exists():
        if not archive.is_file():
            raise DebugAtlasError(f"`archive={str(archive)!r}` does not exist. "
                                  "HINT: pass the path of cifar10-train.tgz, or use torchvision's CIFAR10.")
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
        done.write_text(str(archive))
    root = cache / "train"
    if not root.is_dir():
        raise DebugAtlasError(f"{str(archive)!r} holds no `train/<class>/` folders (unpacked to {str(cache)!r}).")
    return root


def folder_split(root: str | Path, n_train: int | None = None, n_val: int = 1000, seed: int = 0,
                 shortcut: PlantedShortcut | None = None, poison_val: bool = False
                 ) -> tuple[TensorImageDataset, TensorImageDataset]:
    """A seeded (train, val) split of an ImageFolder of small RGB images, loaded into memory.

    `n_val` images go to validation, then `n_train` (None: all the rest) to training, drawn by one
    seeded permutation. Images are [3, H, W] float32 in [0, 1]. A `shortcut` poisons the training
    split, and with `poison_val` the validation split too (as in `digits()`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DebugAtlasError(f"{str(root)!r} is not a directory. HINT: lay it out as <class>/<image files>.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DebugAtlasError(f"{str(root)!r} has no class folders. HINT: lay it out as <class>/<image files>.")
    files, labels = [], []
    for k, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in (".jpg", ".jpeg", ".png"):
                files.append(f)
                labels.append(k)
    if not 0 < n_val < len(files):
        raise DebugAtlasError(
            f"`folder_split(n_val={n_val})` with {len(files)} image files leaves no images for "
            f"{'validation' if n_val <= 0 else 'training'}. HINT: choose 0 < n_val < {len(files)}."
        )
    order = np.random.default_rng(seed).permutation(len(files))
    val_idx = order[:n_val]
    train_idx = order[n_val:] if n_train is None else order[n_val:n_val + n_train]

    def load(idx: np.ndarray) -> tuple[torch.Tensor, list[int]]:
        arrays = [np.asarray(load_rgb(files[i]), dtype=np.uint8) for i in idx]
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
        return images, [labels[i] for i in idx]

    train = TensorImageDataset(*load(train_idx), classes, shortcut)
    val = TensorImageDataset(*load(val_idx), classes, shortcut if poison_val else None)
    return train, val


def torchvision_cifar10(root: str | Path, n_train: int | None = None, n_val: int = 1000, seed: int = 0,
                        shortcut: PlantedShortcut | None = None, poison_val: bool = False
                        ) -> tuple[TensorImageDataset, TensorImageDataset]:
    """The same split from `torchvision.datasets.CIFAR10(root, train=True, download=True)`."""
    from torchvision.datasets import CIFAR10

    data = CIFAR10(str(root), train=True, download=True)
    order = np.random.default_rng(seed).permutation(len(data.targets))
    val_idx = order[:n_val]
    train_idx = order[n_val:] if n_train is None else order[n_val:n_val + n_train]
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2)
    labels = np.asarray(data.targets)

    def pick(idx):
        return images[idx].float() / 255.0, labels[idx].tolist()

    train = TensorImageDataset(*pick(train_idx), list(data.classes), shortcut)
    val = TensorImageDataset(*pick(val_idx), list(data.classes), shortcut if poison_val else None)
    return train, val
