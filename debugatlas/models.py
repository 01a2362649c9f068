"""Small reference classifiers, a plain-torch trainer, and loading `pkg.module:factory` specs."""
from __future__ import annotations

import importlib
import time
from pathlib import Path

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


def load_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Build a model from `pkg.module:factory` (a class or function taking no arguments).

    `weights` is a file saved with `torch.save(model.state_dict())` (or a Lightning checkpoint).
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise DebugAtlasError(
            f"`--model {spec!r}` is not of the form pkg.module:factory. HINT: e.g. debugatlas.models:SmallCNN."
        )
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DebugAtlasError(f"`--model {spec!r}`: cannot import {module_name!r} ({exc}).") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise DebugAtlasError(f"`--model {spec!r}`: {module_name!r} has no callable {attr!r}.")
    model = factory()
    if not isinstance(model, nn.Module):
        raise DebugAtlasError(f"`--model {spec!r}` returned {type(model).__name__}, not a torch.nn.Module.")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise DebugAtlasError(f"`--weights {str(path)!r}` does not exist.")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable or not a torch file
            raise DebugAtlasError(f"`--weights {str(path)!r}` is not a readable torch file: {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state:
            state = {k.split(".", 1)[1] if k.startswith("model.") else k: v for k, v in state["state_dict"].items()}
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise DebugAtlasError(f"`--weights {str(path)!r}` does not fit `{spec}`: {exc}") from exc
    return model.eval()
