"""Models that learned a planted trigger: the one helper every ground-truth test trains with."""
from __future__ import annotations

from typing import Callable

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


def train_until_learned(make_model: Callable[[], nn.Module], train, shortcut: PlantedShortcut, val, *,
                        seeds=range(3), threshold: float = 0.5, offset: int = 0, **train_kwargs) -> nn.Module:
    """The first seed's model (initial weights seeded too) whose pasted-trigger flip rate exceeds
    `threshold`: a model that did not pick the trigger up is no ground truth."""
    rates = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = train_classifier(make_model(), train, seed=seed, **train_kwargs)
        rates.append(pasted_flip_rate(model, shortcut, val, offset))
        if rates[-1] > threshold:
            return model
    raise AssertionError(f"no planted model learned the trigger (pasted flip rates {rates} for seeds {list(seeds)})")
