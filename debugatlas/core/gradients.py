"""Running a model to one layer and taking gradients there: the one place every stage does it.

`layer_forward` runs the model with the layer's output replaced by a gradient-requiring leaf;
`batched_grad` takes many vector-Jacobian products in one backward pass; `relaxed_pooling` swaps
max-pool gradients for average-pool ones (the activation-atlas paper's relaxation);
`position_attribution` gives h · ∂logit/∂h at every position of a spatial layer;
`position_input_gradients` gives the input gradient of a layer position on random images (what
the receptive fields are measured from).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DebugAtlasError
from .model import as_logits, generator, gradient_context, layer_name_and_module, model_device, run_to_layer

T = TypeVar("T")
MAX_ALL_CLASSES = 100  # attributing to every class is limited to models with at most this many


def check_classes(classes, num_classes: int, caller: str = "attribute(classes=...)") -> list[int]:
    if classes is None:
        if num_classes > MAX_ALL_CLASSES:
            raise DebugAtlasError(
                f"The model has {num_classes} classes; attributing to all of them is limited to "
                f"{MAX_ALL_CLASSES}. HINT: pass `classes=[...]` with the class indices you need "
                "(e.g. the two classes of each confused pair)."
            )
        return list(range(num_classes))
    try:
        values = torch.as_tensor(classes).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError):
        values = list(classes) if isinstance(classes, (list, tuple)) else [classes]
    if not values:
        raise DebugAtlasError(
            f"`{caller}` has no class indices. HINT: pass at least one, or None for all classes."
        )
    bad = [c for c in values if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_classes]
    if bad:
        raise DebugAtlasError(
            f"`{caller}` has class indices {bad} that are not integers in 0..{num_classes - 1}. "
            f"HINT: the model has {num_classes} output logits; pass indices in that range."
        )
    return values


def layer_forward(model: nn.Module, module: nn.Module, layer_name: str, images: torch.Tensor):
    """Run the model; return (layer output as a grad-requiring leaf, logits)."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        first = output[0] if isinstance(output, (tuple, list)) and output else output
        if not isinstance(first, torch.Tensor):
            raise DebugAtlasError(
                f"Layer {layer_name!r} returned {type(first).__name__}, not a tensor. "
                "HINT: pick a layer whose output is [B, C, H, W], [B, T, C] or [B, C]."
            )
        leaf = first.detach().requires_grad_(True)
        seen["h"] = leaf
        out = leaf.clone()  # a non-leaf, so later in-place ops (ReLU(inplace=True)) are allowed
        if first is output:
            return out
        if hasattr(output, "_fields"):  # a namedtuple
            return type(output)(out, *output[1:])
        return type(output)([out, *output[1:]])

    handle = module.register_forward_hook(hook)
    try:
        logits = as_logits(model(images))
    finally:
        handle.remove()
    if "h" not in seen:
        raise DebugAtlasError(
            f"Layer {layer_name!r} did not run in the model's forward pass. HINT: choose another layer."
        )
    return seen["h"], logits


def batched_grad(outputs: torch.Tensor, inputs: torch.Tensor, grad_outputs: torch.Tensor, *,
                 retain_graph: bool = False) -> torch.Tensor:
    """The gradient of `outputs` w.r.t. `inputs` for each row of `grad_outputs` [T, *outputs.shape]:
    [T, *inputs.shape].

    One batched backward pass (``is_grads_batched=True``); where the model has an operation that
    cannot run batched (for instance an `autograd.Function` without vmap support), one backward
    pass per row.
    """
    try:
        (g,) = torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=retain_graph, is_grads_batched=True)
    except RuntimeError:
        g = torch.stack([torch.autograd.grad(outputs, inputs, one, retain_graph=True)[0] for one in grad_outputs])
    return g


def _relaxed_hook(module: nn.MaxPool2d, inputs, output):
    x = inputs[0]
    pooled = output[0] if isinstance(output, tuple) else output
    avg = F.avg_pool2d(x, module.kernel_size, module.stride, module.padding,
                       ceil_mode=module.ceil_mode, count_include_pad=False)
    relaxed = pooled.detach() + (avg - avg.detach())  # exactly the max-pool values
    return (relaxed, output[1]) if isinstance(output, tuple) else relaxed


@contextlib.contextmanager
def relaxed_pooling(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Max-pool forward, average-pool gradient, on every `nn.MaxPool2d` of the model."""
    handles = []
    try:
        if enabled:
            for name, module in model.named_modules():
                if not isinstance(module, nn.MaxPool2d):
                    continue
                dilation = module.dilation if isinstance(module.dilation, tuple) else (module.dilation,)
                if any(d != 1 for d in dilation):
                    raise DebugAtlasError(
                        f"`relaxed_maxpool=True` cannot relax {name!r} (MaxPool2d with dilation "
                        f"{module.dilation!r}): average pooling has no dilation. "
                        "HINT: use `relaxed_maxpool=False` for this model."
                    )
                handles.append(module.register_forward_hook(_relaxed_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def position_attribution(
    model: nn.Module,
    layer: str | nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | None = None,
    classes: Sequence[int] = (),
    relaxed_maxpool: bool = False,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense attribution maps of a spatial layer, with the layer output and the logits.

    For images [B, C_in, H_in, W_in] and per image the classes t = (its target, *classes), returns
    (maps [B, T, H, W] float32, h [B, C, H, W], logits [B, K]) on the model's device, where
    ``maps[b, t, y, x] = h[b, :, y, x] · ∂logit_{t}/∂h[b, :, y, x]`` (summed over channels), the
    per-position quantity `attribute` computes for sampled vectors. `targets` [B] defaults to the
    model's prediction for each image. One forward pass and one batched backward pass over the T
    target columns (images are independent in eval mode, so each image's logit is differentiated
    in the same pass). Works inside ``torch.inference_mode()``; the model is left as found.
    """
    layer_name, module = layer_name_and_module(model, layer)
    device = torch.device(device) if device is not None else model_device(model)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DebugAtlasError(f"`position_attribution(images=...)` has shape {shape}; expected non-empty "
                              "[B, C, H, W] in [0, 1].")
    with gradient_context(model), relaxed_pooling(model, relaxed_maxpool):
        x = images.detach().to(device=device, dtype=torch.float32).clone()
        h, logits = layer_forward(model, module, layer_name, x)
        if h.dim() != 4:
            raise DebugAtlasError(
                f"Layer {layer_name!r} outputs shape {tuple(h.shape)}; position maps need a spatial "
                "[B, C, H, W] output. HINT: choose a convolutional layer."
            )
        k = logits.shape[1]
        first = logits.detach().argmax(1) if targets is None else torch.as_tensor(targets, dtype=torch.long)
        first = first.reshape(-1).to(logits.device)
        extra = check_classes(list(classes), k, "position_attribution(classes=...)") if len(classes) else []
        check_classes(first.tolist(), k, "position_attribution(targets=...)")
        if first.numel() != logits.shape[0]:
            raise DebugAtlasError(f"`position_attribution` got {first.numel()} targets for {logits.shape[0]} images.")
        cols = torch.stack([first] + [torch.full_like(first, c) for c in extra], 1)  # [B, T]
        grad_out = F.one_hot(cols.T, k).to(logits.dtype)  # [T, B, K]
        g = batched_grad(logits, h, grad_out)
        maps = (g * h.detach().unsqueeze(0)).sum(2).transpose(0, 1).float()  # [B, T, H, W]
    return maps.detach(), h.detach(), logits.detach()


def _select(output: torch.Tensor, position: tuple[int, int]) -> torch.Tensor:
    """The layer vectors [B, C] at `position` (row, col); tokens are (0, t)."""
    row, col = position
    if output.dim() == 4:
        limit = tuple(output.shape[2:])
    elif output.dim() == 3:
        limit = (1, output.shape[1])
    else:
        limit = None
    if limit is None or not (0 <= row < limit[0] and 0 <= col < limit[1]):
        raise DebugAtlasError(
            f"`position={position!r}` is outside the layer output of shape {tuple(output.shape[1:])}. "
            "HINT: positions are (row, col) of [B, C, H, W] outputs or (0, token) of [B, T, C] outputs."
        )
    return output[:, :, row, col] if output.dim() == 4 else output[:, col, :]


def _centre(output: torch.Tensor) -> tuple[int, int]:
    """The middle position of a [B, C, H, W] output, or the middle token (0, T // 2) of a [B, T, C] one."""
    return (output.shape[2] // 2, output.shape[3] // 2) if output.dim() == 4 else (0, output.shape[1] // 2)


def position_input_gradients(
    model: nn.Module,
    layer: str | nn.Module,
    input_shape: Sequence[int],
    positions: Sequence[tuple[int, int]] | None,
    reduce: Callable[[torch.Tensor], T],
    *,
    trials: int,
    seed: int,
    constant_first: bool = False,
) -> list[T] | None:
    """`reduce(g)` for each position of the layer's output, g [trials, C, H, W] the gradient w.r.t.
    the input images of a random mix of the layer's channels at that position.

    The images: `trials` uniformly random ones of `input_shape` (C, H, W) in [0, 1], the first a
    constant 0.5 with `constant_first`. The mix: one weight per channel, uniform in [0.5, 1.5), the
    same for every position. Both come from `generator(seed)`, the images first. `positions`:
    (row, col) of a [B, C, H, W] output or (0, token) of a [B, T, C] one; None is the centre
    position alone, and gives None for a flat [B, C] output, which has no positions. One forward
    pass and one backward pass per position; `reduce` runs inside them, so it keeps only what it
    returns. The model is left as found.
    """
    name, module = layer_name_and_module(model, layer)
    shape = tuple(int(s) for s in input_shape)
    gen = generator(seed)
    with gradient_context(model):
        images = torch.rand((max(1, int(trials)), *shape), generator=gen)
        if constant_first:
            images[0] = 0.5
        images = images.to(model_device(model)).requires_grad_(True)
        output = run_to_layer(model, module, images, name)
        if positions is None:
            if output.dim() == 2:
                return None
            positions = [_centre(output)]
        out, mix = [], None
        for k, position in enumerate(positions):
            vectors = _select(output, position)
            if mix is None:
                mix = torch.rand(vectors.shape[-1], generator=gen).add_(0.5).to(vectors.device)
            (grad,) = torch.autograd.grad((vectors * mix).sum(), images, retain_graph=k + 1 < len(positions))
            out.append(reduce(grad))
    return out
