"""Model access: layer lookup, running to a layer, the logits check, devices, leaving a model as found."""
from __future__ import annotations

import contextlib
import difflib
from typing import Iterator, Sequence

import torch
from torch import nn

from .errors import DebugAtlasError


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


def as_logits(output, what: str = "The model", min_classes: int = 1) -> torch.Tensor:
    """`output` if it is a logits tensor [B, K] with K >= `min_classes`, else a clear error."""
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= min_classes:
        return output
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
    need = f" with K >= {min_classes}" if min_classes > 1 else ""
    raise DebugAtlasError(
        f"{what} returned {shape}; expected pre-softmax logits of shape [B, K]{need}. "
        "HINT: wrap the model so that forward returns the logits tensor (e.g. `lambda x: model(x)[0]` "
        "for a tuple, `model(x)['logits']` for a dict)."
    )


class Normalized(nn.Module):
    """`model` behind a fixed per-channel normalisation, so callers stay in [0, 1] pixel space."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.device)) / self.std.to(x.device))


PRECISIONS = ("float32", "bfloat16", "float16")


def fast_precision(device: torch.device | str) -> str:
    """The reduced precision `device` runs natively, for forwards whose results only choose:
    "bfloat16" on a CPU whose oneDNN has native bfloat16 (AVX512-BF16, AMX) and on CUDA devices
    that support it, "float16" on other CUDA devices, else "float32"."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
        except (AttributeError, RuntimeError):
            return "float32"
    return "float32"


def precision_context(device: torch.device | str, precision: str):
    """Autocast to `precision` on `device` ("float32": a no-op context)."""
    if precision not in PRECISIONS:
        raise DebugAtlasError(f"`precision={precision!r}` is not one of {list(PRECISIONS)}.")
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, precision))


@contextlib.contextmanager
def on_device(model: nn.Module, device: torch.device | str | None) -> Iterator[torch.device]:
    """Run on `device` (default: the model's own), moving the model back afterwards."""
    home = model_device(model)
    target = torch.device(device) if device is not None else home
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DebugAtlasError(f"`device={str(device)!r}` but CUDA is not available. HINT: use device='cpu'.")
    moved = target != home
    if moved:
        model.to(target)
    try:
        yield target
    finally:
        if moved:
            model.to(home)


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
    return output_tensor(captured[0], f"Layer {name!r}")


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
