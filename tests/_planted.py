"""Models that learned a planted trigger: the one helper every ground-truth test trains with."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from debugatlas.data import PlantedShortcut
from debugatlas.models import train_classifier


def pasted_flip_rate(model: nn.Module, shortcut: PlantedShortcut, val, offset: int = 0) -> float:
    """Reference independent of the code under test: images of the other classes with the trigger
    pasted by the shortcut itself (`apply(image, offset + i)`), read as the target by a plain forward pass."""
    ids = [i for i in range(len(val)) if int(val.labels[i]) != shortcut.target]
    images = torch.stack([shortcut.apply(val.images[i], offset + i) for i in ids])
    with torch.no_grad():
        return float((model(images).argmax(-1) == shortcut.target).float().mean())


def pasted_noise_flip_rate(model: nn.Module, shortcut: PlantedShortcut, val, offset: int = 0) -> float:
    """`pasted_flip_rate` with a seeded noise square of the trigger's size in place of the trigger
    (same images, same positions)."""
    ids = [i for i in range(len(val)) if int(val.labels[i]) != shortcut.target]
    images = []
    for i in ids:
        image = val.images[i]
        y, x = shortcut.place(image.shape[1], image.shape[2], offset + i)
        side = shortcut.size
        out = image.clone()
        out[:, y:y + side, x:x + side] = torch.from_numpy(np.random.default_rng([shortcut.seed, offset + i]).random(
            (image.shape[0], side, side), dtype=np.float32))
        images.append(out)
    with torch.no_grad():
        return float((model(torch.stack(images)).argmax(-1) == shortcut.target).float().mean())


def train_until_learned(make_model: Callable[[], nn.Module], train, shortcut: PlantedShortcut, val, *,
                        seeds=range(3), threshold: float = 0.5, offset: int = 0, max_noise: float | None = None,
                        **train_kwargs) -> nn.Module:
    """The first seed's model (initial weights seeded too) whose pasted-trigger flip rate exceeds
    `threshold`: a model that did not pick the trigger up is no ground truth. With `max_noise`, a
    noise square of the trigger's size must also flip at most that share (`pasted_noise_flip_rate`):
    a model that sends any square of that size to the target learned squares, not the trigger, and
    no patch test can tell the trigger from its noise control there."""
    rates = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = train_classifier(make_model(), train, seed=seed, **train_kwargs)
        rate = pasted_flip_rate(model, shortcut, val, offset)
        noise = pasted_noise_flip_rate(model, shortcut, val, offset) if max_noise is not None else 0.0
        rates.append((round(rate, 3), round(noise, 3)))
        if rate > threshold and (max_noise is None or noise <= max_noise):
            return model
    raise AssertionError(f"no planted model learned the trigger ((pasted, noise) flip rates {rates} for seeds "
                         f"{list(seeds)})")
