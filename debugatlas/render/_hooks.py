"""Running a model only up to one layer: a hook that keeps the output and stops the forward pass."""
from __future__ import annotations

import torch
from torch import nn

from .._utils import DebugAtlasError, layer_name, resolve_layer


class _StopForward(Exception):
    """Raised inside the hook once the layer output is captured; never leaves this package."""


def layer_name_and_module(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """The (name, module) of `layer`, given as a name in `named_modules()` or as the module itself."""
    return layer_name(model, layer), resolve_layer(model, layer)


def run_to_layer(model: nn.Module, module: nn.Module, images: torch.Tensor, name: str) -> torch.Tensor:
    """The output of `module` for `images`, stopping the forward pass right after it.

    The hook is removed in `finally`; the model's own exceptions propagate unchanged.
    """
    captured: list = []

    def hook(_module, _inputs, output):
        captured.append(output)
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        model(images)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise DebugAtlasError(
            f"Layer {name!r} did not run in {type(model).__name__}.forward. "
            "HINT: pick a layer that the forward pass calls."
        )
    output = captured[0]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    return output


def smallest_square_input(model: nn.Module, module: nn.Module, name: str, channels: int, failed: int,
                          device, limit: int = 1024) -> int | None:
    """The smallest side s > `failed` (up to `limit`) for which [1, channels, s, s] reaches the layer."""

    def runs(side: int) -> bool:
        try:
            with torch.no_grad():
                run_to_layer(model, module, torch.full((1, channels, side, side), 0.5, device=device), name)
            return True
        except Exception:
            return False

    low, high = failed, max(1, failed) * 2
    while high <= limit and not runs(high):
        low, high = high, high * 2
    if high > limit:
        return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if runs(mid) else (mid, high)
    return high
