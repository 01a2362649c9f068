"""Checks of a user's model before any work: channels against its first layer, logits out (`LogitsOf` wraps others)."""
from __future__ import annotations

from typing import Any, Hashable

import torch
from torch import nn

from .errors import DebugAtlasError


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
