"""Shared helpers: layer lookup, leaving a model as found, the gradient context, errors."""
from __future__ import annotations

import contextlib
import difflib
from typing import Iterator

import torch
from torch import nn


class DebugAtlasError(ValueError):
    """A problem with the user's input; the message says what to do about it."""


def resolve_layer(model: nn.Module, name: "str | nn.Module", caller: str = "layer") -> nn.Module:
    """Return the submodule called `name` in `model.named_modules()`, or raise with the closest names.

    `name` may also be a module inside `model`, returned as it is.
    """
    if isinstance(name, nn.Module):
        if any(m is name for m in model.modules()):
            return name
        raise DebugAtlasError(
            f"`{caller}=` got a {type(name).__name__} that is not inside {type(model).__name__}. "
            "HINT: pass a module of this model, or its name from `model.named_modules()`."
        )
    modules = dict(model.named_modules())
    if isinstance(name, str) and name and name in modules:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.4)
    hint = f"closest names: {close}" if close else f"some names: {names[:8]}"
    raise DebugAtlasError(
        f"`{caller}={name!r}` is not a module of {type(model).__name__}. "
        f"HINT: pass a name from `model.named_modules()`; {hint}."
    )


def output_tensor(output, what: str) -> torch.Tensor:
    """The tensor of a layer's output (the first element of a tuple or list), or a clear error."""
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise DebugAtlasError(
            f"{what} returned {type(output).__name__}, not a tensor. "
            "HINT: pick a layer whose output is a tensor of shape [B, C, H, W], [B, T, C] or [B, C]."
        )
    return output


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _hook_counts(model: nn.Module) -> dict[str, int]:
    counts = {}
    for name, module in model.named_modules():
        counts[name] = (
            len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
        )
    return counts


@contextlib.contextmanager
def preserved_model_state(model: nn.Module) -> Iterator[None]:
    """Restore every module's `training` flag and every parameter's `requires_grad` on exit."""
    training = {name: m.training for name, m in model.named_modules()}
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        yield
    finally:
        for name, module in model.named_modules():
            if name in training:
                module.training = training[name]
        for name, param in model.named_parameters():
            if name in requires_grad:
                param.requires_grad_(requires_grad[name])


@contextlib.contextmanager
def gradient_context(model: nn.Module) -> Iterator[None]:
    """Eval mode with autograd on, even inside `torch.inference_mode()` (Lightning validation).

    Parameters are frozen for the duration (only input and activation gradients are needed);
    the model's mode and `requires_grad` flags are restored on exit, also after an exception.
    """
    with preserved_model_state(model), torch.inference_mode(False), torch.enable_grad():
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        yield


def layer_name(model: nn.Module, layer: "str | nn.Module") -> str:
    """The `named_modules()` name of `layer` (a name or a module inside `model`)."""
    module = resolve_layer(model, layer)
    return next(n for n, m in model.named_modules() if m is module)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` seeded with `seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def progress_bar(enabled: bool, desc: str):
    """A tqdm-backed `progress(done, total)` callback, or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = {"bar": None}

    def update(done: int, total: int) -> None:
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=total, desc=desc, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return update
