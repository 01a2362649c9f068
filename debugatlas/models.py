"""Small reference classifiers, a plain-torch trainer, and loading models named on the command line.

`load_model` builds any importable factory (`torchvision.models:resnet18` with keyword arguments,
a project's own `mymodels:factory`, a LightningModule class and its checkpoint); `normalization`
turns `--normalize imagenet` or six numbers into (mean, std).
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .core.errors import DebugAtlasError


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear head; layers named layer1..layer3 like torchvision ResNets.

    For 24 px inputs the spatial sizes are 12 (layer1), 6 (layer2) and 6 (layer3).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.layer1 = nn.Sequential(*block(in_channels, w), nn.MaxPool2d(2))
        self.layer2 = nn.Sequential(*block(w, 2 * w), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(*block(2 * w, 4 * w))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def small_digits_cnn() -> SmallCNN:
    """The reference test model for 24 px digits, `SmallCNN(1, 10, width=8)`, as a no-argument factory
    (`--model debugatlas.models:small_digits_cnn`)."""
    return SmallCNN(in_channels=1, num_classes=10, width=8)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """A ResNet for 32 px images (ResNet-20 layout at `blocks=3`); layers layer1..layer3.

    Spatial sizes for 32 px inputs: 32 (layer1), 16 (layer2), 8 (layer3).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.layer1 = nn.Sequential(*[_Block(w, w, 1) for _ in range(blocks)])
        self.layer2 = nn.Sequential(_Block(w, 2 * w, 2), *[_Block(2 * w, 2 * w, 1) for _ in range(blocks - 1)])
        self.layer3 = nn.Sequential(_Block(2 * w, 4 * w, 2), *[_Block(4 * w, 4 * w, 1) for _ in range(blocks - 1)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def train_classifier(model: nn.Module, dataset, epochs: int = 5, lr: float = 1e-2, batch_size: int = 64,
                     seed: int = 0, device: torch.device | str = "cpu", max_seconds: float | None = None,
                     history: list | None = None) -> nn.Module:
    """Train with Adam and cross-entropy (a plain loop, for tests and scripts); returns the model in eval mode.

    `max_seconds` stops at the end of the first epoch that ends past that many seconds of
    training; `history`, when given a list, gets one dict per epoch finished (epoch, mean loss,
    seconds since the start).
    """
    torch.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    for epoch in range(epochs):
        total, batches = torch.zeros((), device=device), 0
        for images, labels in loader:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            loss.backward()
            opt.step()
            total += loss.detach()
            batches += 1
        seconds = time.perf_counter() - start
        if history is not None:
            history.append({"epoch": epoch + 1, "loss": float(total) / max(batches, 1), "seconds": seconds})
        if max_seconds is not None and seconds > max_seconds:
            break
    return model.eval()


NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
}
"""Named (mean, std) presets for `--normalize NAME`: the constants the usual training recipes use."""


def normalization(values: Sequence[str | float] | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) from `--normalize`: a preset name (`imagenet`, `cifar10`, `mnist`, or `none`),
    or the means then the stds, one per channel. None or empty: no normalisation."""
    if not values:
        return None
    values = [str(v) for v in values]
    if len(values) == 1 and not _is_number(values[0]):
        name = values[0].lower()
        if name == "none":
            return None
        if name not in NORMALIZE_PRESETS:
            import difflib

            close = difflib.get_close_matches(name, list(NORMALIZE_PRESETS), n=2)
            raise DebugAtlasError(
                f"`--normalize {values[0]}` is not a preset. HINT: closest {close}; presets are "
                f"{sorted(NORMALIZE_PRESETS)}, or give the means then the stds, e.g. `--normalize 0.5 0.5`."
            )
        return NORMALIZE_PRESETS[name]
    bad = [v for v in values if not _is_number(v)]
    if bad or len(values) % 2:
        raise DebugAtlasError(
            f"`--normalize {' '.join(values)}` must be one preset name or an even count of numbers. "
            f"HINT: the means then the stds, one per channel (`--normalize 0.5 0.5 0.5 0.25 0.25 0.25`), "
            f"or a preset from {sorted(NORMALIZE_PRESETS)}."
        )
    numbers = [float(v) for v in values]
    half = len(numbers) // 2
    mean, std = tuple(numbers[:half]), tuple(numbers[half:])
    if any(s <= 0 for s in std):
        raise DebugAtlasError(f"`--normalize` stds {list(std)} must be positive. HINT: means first, then stds.")
    return mean, std


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def import_object(spec: str, flag: str = "--model") -> Any:
    """The object named by `pkg.module:attr`; the current directory is searched as `python -m` does.

    The current directory is tried only when the module is not found otherwise, so a local file
    never shadows an installed package of the same name.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise DebugAtlasError(
            f"`{flag} {spec!r}` is not of the form pkg.module:name. "
            "HINT: e.g. `torchvision.models:resnet18` or `mymodels:build` for mymodels.py in this directory."
        )
    module_name, attr = spec.split(":")
    module = _import_module(module_name, spec, flag)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            import difflib

            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(attr, names, n=3)
            raise DebugAtlasError(f"`{flag} {spec}`: {module_name!r} has no {attr!r}. HINT: closest names {close}.")
    return obj


def _import_module(module_name: str, spec: str, flag: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing_is_ours = exc.name is not None and module_name.split(".")[0] == exc.name.split(".")[0]
        cwd = os.getcwd()
        if not missing_is_ours or cwd in sys.path or "" in sys.path:
            raise DebugAtlasError(f"`{flag} {spec}`: cannot import {module_name!r} ({exc}).") from exc
    except Exception as exc:  # the user's module raised while importing
        raise DebugAtlasError(f"`{flag} {spec}`: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        sys.path.remove(cwd)
        raise DebugAtlasError(
            f"`{flag} {spec}`: cannot import {module_name!r}, not even from the current directory {cwd!r} "
            f"({exc}). HINT: run from the folder that holds the module, or install its package."
        ) from exc
    except Exception as exc:  # the user's module raised while importing
        raise DebugAtlasError(f"`{flag} {spec}`: importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc


def load_model(spec: str, weights: str | Path | None = None, *, model_args: Mapping[str, Any] | None = None,
               checkpoint: str | Path | None = None) -> nn.Module:
    """Build the model `spec` names (`pkg.module:factory`), in eval mode on the CPU.

    `model_args`: keyword arguments for the factory (`{"num_classes": 3}` for torchvision's
    resnet18). `weights`: a file saved with `torch.save(model.state_dict())`, or a Lightning
    checkpoint whose `state_dict` keys start with `model.`. `checkpoint`: the factory is a
    LightningModule class; the model is its `load_from_checkpoint(checkpoint, **model_args)`.
    """
    kwargs = dict(model_args or {})
    if weights is not None and checkpoint is not None:
        raise DebugAtlasError("Give `--weights` or `--checkpoint`, not both. HINT: --checkpoint is for a "
                              "LightningModule class's .ckpt file, --weights for a state_dict file.")
    factory = import_object(spec)
    if checkpoint is not None:
        model = _from_checkpoint(spec, factory, Path(checkpoint), kwargs)
    else:
        if not callable(factory):
            raise DebugAtlasError(f"`--model {spec}` names a {type(factory).__name__}, not a class or function.")
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            raise DebugAtlasError(
                f"`--model {spec}` with `--model-args {_show(kwargs)}` failed: {exc}. "
                "HINT: --model-args takes the factory's keyword arguments, e.g. num_classes=3."
            ) from exc
    if not isinstance(model, nn.Module):
        raise DebugAtlasError(f"`--model {spec}` returned {type(model).__name__}, not a torch.nn.Module.")
    if weights is not None:
        _load_weights(model, spec, Path(weights))
    return model.cpu().eval()


def _show(kwargs: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "(none)"


def _from_checkpoint(spec: str, cls: Any, path: Path, kwargs: dict) -> nn.Module:
    if not path.is_file():
        raise DebugAtlasError(f"`--checkpoint {str(path)!r}` does not exist.")
    loader = getattr(cls, "load_from_checkpoint", None)
    if not isinstance(cls, type) or loader is None:
        raise DebugAtlasError(
            f"`--model {spec}` is not a LightningModule class, so `--checkpoint` cannot load it. "
            "HINT: name the LightningModule class (pkg.mod:MyModule), or use --weights for a state_dict."
        )
    try:
        return loader(str(path), map_location="cpu", **kwargs)
    except Exception as exc:  # Lightning raises many types for a bad or mismatched file
        raise DebugAtlasError(
            f"`{spec}.load_from_checkpoint({str(path)!r})` failed: {type(exc).__name__}: {exc}. HINT: a "
            "module whose __init__ takes objects (not plain values) needs them in --model-args, or "
            "`self.save_hyperparameters()` when it was trained."
        ) from exc


def _load_weights(model: nn.Module, spec: str, path: Path) -> None:
    if not path.is_file():
        raise DebugAtlasError(f"`--weights {str(path)!r}` does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or not a torch file
        raise DebugAtlasError(f"`--weights {str(path)!r}` is not a readable torch file: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = {k.split(".", 1)[1] if k.startswith("model.") else k: v for k, v in state["state_dict"].items()}
    if not isinstance(state, Mapping):
        raise DebugAtlasError(f"`--weights {str(path)!r}` holds a {type(state).__name__}, not a state_dict. "
                              "HINT: save it with torch.save(model.state_dict(), path).")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DebugAtlasError(
            f"`--weights {str(path)!r}` does not fit `{spec}`: {exc}. HINT: pass the same --model-args "
            "(e.g. num_classes) the model was built with."
        ) from exc
