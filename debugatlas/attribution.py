"""Attribution: how much each sampled activation vector pushes each class logit.

For a vector h sampled at position p of a layer's output, the attribution to class c is
``h · ∂logit_c/∂h(p)``: gradient times activation at that position, summed over channels, on
pre-softmax logits. This equals Captum's ``LayerGradientXActivation`` summed over the channels
at p, computed here for all classes at once: one forward pass per batch of unique images and
one batched backward pass (``torch.autograd.grad(..., is_grads_batched=True)``) for the classes.

Optionally the gradient through ``nn.MaxPool2d`` is relaxed as in the activation-atlas paper:
max-pool in the forward pass, the gradient of an average pool of the same window in the backward
pass (the max-pool gradient is sparse and makes attributions noisy).
"""
from __future__ import annotations

import operator
from typing import Callable, Sequence

import torch
from torch import nn

from .capture import ActivationSet
from .core.datasets import load_images
from .core.errors import DebugAtlasError
from .core.gradients import (
    MAX_ALL_CLASSES, batched_grad, check_classes, layer_forward, position_attribution, relaxed_pooling,
)
from .core.model import as_logits, gradient_context, layer_name_and_module, model_device

__all__ = ["MAX_ALL_CLASSES", "PIXEL_METHODS", "attribute", "pixel_attribution", "position_attribution"]
PIXEL_METHODS = ("integrated_gradients", "saliency")
# Upper bound on the bytes of one batched gradient tensor [classes, B, *layer_shape] (float32);
# classes are split into chunks that stay below it.
_GRAD_BUDGET_BYTES = 512 * 2**20
# Stored vectors (float16) and recomputed ones must agree to this relative tolerance ...
_MATCH_RTOL = 0.05
# ... for all but this fraction of samples, else the dataset does not match the ActivationSet.
_MISMATCH_FRACTION = 0.1


def attribute(
    model: nn.Module,
    layer: str | nn.Module,
    dataset,
    acts: ActivationSet,
    classes: Sequence[int] | None = None,
    batch_size: int = 64,
    relaxed_maxpool: bool = False,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    return_probs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attribution of every sampled vector in `acts` to each class: [N, K] float32 on the CPU.

    ``attr[i, j] = h_i · ∂logit_{classes[j]}/∂h`` at ``acts.positions[i]`` of image
    ``dataset[acts.image_ids[i]]``, with h the layer output recomputed from the image.
    All classes when the model has at most 100 and `classes` is None; otherwise the columns are
    `classes`, in that order. Each unique image is run once, in batches of `batch_size` images.
    Works inside ``torch.inference_mode()``; the model is left as found. `progress(done, total)`
    is called after each batch with counts of unique images. With `return_probs`, also the softmax
    probabilities over all outputs [U, num_classes] float32 of the U captured images, in increasing
    image-id order (`ActivationSet.per_image`), from the same forward passes.
    """
    layer_name, module = layer_name_and_module(model, layer)
    _check_acts(acts, layer_name, dataset)
    batch_size = _positive_int(batch_size, "attribute(batch_size=...)")
    device = torch.device(device) if device is not None else model_device(model)

    ids = acts.image_ids.long().cpu()
    unique, inverse = torch.unique(ids, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    starts = list(range(0, len(unique), batch_size))
    bounds = torch.searchsorted(inverse[order], torch.tensor(starts + [len(unique)]))

    result: torch.Tensor | None = None
    probs: list[torch.Tensor] = []
    selected: list[int] = []
    with gradient_context(model), relaxed_pooling(model, relaxed_maxpool):
        # allocated here, outside inference mode, so that it can be written to
        mismatch = torch.zeros(len(acts), dtype=torch.bool)
        for chunk, start in enumerate(starts):
            batch_ids = unique[start:start + batch_size]
            samples = order[bounds[chunk]:bounds[chunk + 1]]
            images = load_images(dataset, batch_ids).to(device).clone()
            h, logits = layer_forward(model, module, layer_name, images)
            if result is None:
                selected = check_classes(classes, logits.shape[1])
                result = torch.zeros(len(acts), len(selected), dtype=torch.float32)
            _check_finite(logits, batch_ids)
            if return_probs:
                probs.append(logits.detach().float().softmax(-1).cpu())
            index = _index(h, acts, samples, inverse[samples] - start, layer_name)
            vec = _at(h.detach(), index).float()
            grads = _class_gradients(logits, h, selected)
            result[samples] = torch.einsum("nkc,nc->nk", _at_grad(grads, index).float(), vec).cpu()
            mismatch[samples] = _differs(vec.cpu(), acts.vectors[samples].float())
            if progress is not None:
                progress(min(start + batch_size, len(unique)), len(unique))
    _check_match(acts, mismatch, layer_name)
    if not torch.isfinite(result).all():
        bad = acts.image_ids[~torch.isfinite(result).all(1)].unique()[:10].tolist()
        raise DebugAtlasError(
            f"Attributions are NaN or Inf for images {bad} of layer {layer_name!r}. "
            "HINT: the gradient overflows; check the model's weights and input range."
        )
    return (result, torch.cat(probs)) if return_probs else result


def pixel_attribution(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | int,
    method: str = "integrated_gradients",
    n_steps: int = 32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pixel heatmaps [B, H, W] float32 on the CPU for `images` [B, C, H, W] and `targets` [B].

    "integrated_gradients": Captum ``IntegratedGradients`` from a black image (zeros in [0, 1]
    pixel space) with `n_steps` steps, summed over colour channels (signed).
    "saliency": Captum ``Saliency`` (|gradient|), the maximum over colour channels.
    """
    from captum.attr import IntegratedGradients, Saliency

    if method not in PIXEL_METHODS:
        raise DebugAtlasError(
            f"`pixel_attribution(method={method!r})` is not one of {list(PIXEL_METHODS)}."
        )
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DebugAtlasError(
            f"`pixel_attribution(images=...)` has shape {shape}; expected [B, C, H, W]. "
            "HINT: add a batch dimension with `images.unsqueeze(0)`."
        )
    if images.shape[0] == 0:
        raise DebugAtlasError("`pixel_attribution(images=...)` is empty. HINT: pass at least one image.")
    n_steps = _positive_int(n_steps, "pixel_attribution(n_steps=...)")
    device = torch.device(device) if device is not None else model_device(model)
    batch = images.shape[0]
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if targets.numel() == 1 and batch != 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise DebugAtlasError(
            f"`pixel_attribution` got {targets.numel()} targets for {batch} images. "
            "HINT: pass one target class per image."
        )
    with gradient_context(model):
        x = images.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(True)
        if not torch.isfinite(x).all():
            raise DebugAtlasError("`pixel_attribution(images=...)` contains NaN or Inf.")
        with torch.no_grad():
            num_classes = as_logits(model(x[:1])).shape[1]
        check_classes(targets.tolist(), num_classes, caller="pixel_attribution(targets=...)")
        target = targets.to(device).clone()  # not an inference tensor
        if method == "integrated_gradients":
            attr = IntegratedGradients(model).attribute(
                x, baselines=torch.zeros_like(x), target=target, n_steps=n_steps,
                internal_batch_size=batch * min(n_steps, 8),
            )
            heat = attr.sum(1)
        else:
            heat = Saliency(model).attribute(x, target=target, abs=True).amax(1)
    return heat.detach().float().cpu()


# -- internals -------------------------------------------------------------------------------------
def _check_acts(acts: ActivationSet, layer_name: str, dataset) -> None:
    if not isinstance(acts, ActivationSet):
        raise DebugAtlasError(
            f"`acts` is a {type(acts).__name__}, not an ActivationSet. HINT: use `capture(...)`."
        )
    if len(acts) == 0:
        raise DebugAtlasError("`acts` is empty. HINT: capture at least one activation vector.")
    if acts.layer != layer_name:
        raise DebugAtlasError(
            f"`acts` was captured at layer {acts.layer!r}, not at `layer={layer_name!r}`. "
            "HINT: pass the layer the ActivationSet came from."
        )
    try:
        n = len(dataset)
    except TypeError:
        raise DebugAtlasError(
            f"The dataset ({type(dataset).__name__}) has no length. HINT: pass a map-style dataset "
            "whose indices are the ActivationSet's image ids."
        ) from None
    ids = acts.image_ids
    if int(ids.min()) < 0 or int(ids.max()) >= n:
        bad = ids[(ids < 0) | (ids >= n)][:10].tolist()
        raise DebugAtlasError(
            f"`acts` refers to images {bad}, outside the dataset of {n} images. "
            "HINT: pass the same dataset that `capture` ran over."
        )


def _positive_int(value, caller: str) -> int:
    try:
        number = operator.index(value)
    except TypeError:
        number = 0
    if number < 1:
        raise DebugAtlasError(f"`{caller}` must be an integer >= 1, not {value!r}.")
    return number


def _check_finite(logits: torch.Tensor, batch_ids: torch.Tensor) -> None:
    finite = torch.isfinite(logits.detach())
    if finite.all():
        return
    rows = (~finite).any(1).nonzero().flatten().cpu()
    cols = (~finite).any(0).nonzero().flatten().cpu().tolist()
    kinds = sorted({"NaN" if torch.isnan(v) else "Inf" for v in logits.detach()[~finite].cpu()[:100]})
    raise DebugAtlasError(
        f"The model's logits contain {'/'.join(kinds)} for images {batch_ids[rows][:10].tolist()} "
        f"(classes {cols[:10]}). HINT: check the model's weights and that images are in [0, 1]."
    )


def _index(h: torch.Tensor, acts: ActivationSet, samples: torch.Tensor, local: torch.Tensor,
           layer_name: str) -> tuple[torch.Tensor, ...]:
    """Index tensors that pick each sample's vector from the position-first view of `h`."""
    pos = acts.positions[samples].long()
    channels = acts.vectors.shape[1]
    shape = tuple(h.shape)
    if h.dim() == 4:
        c, size = shape[1], shape[2:]
        ok = (pos[:, 0] >= 0) & (pos[:, 0] < size[0]) & (pos[:, 1] >= 0) & (pos[:, 1] < size[1])
        index = (local, pos[:, 0], pos[:, 1])
    elif h.dim() == 3:
        c, size = shape[2], (1, shape[1])
        ok = (pos[:, 0] == 0) & (pos[:, 1] >= 0) & (pos[:, 1] < size[1])
        index = (local, pos[:, 1])
    elif h.dim() == 2:
        c, size = shape[1], None
        ok = (pos == -1).all(1)
        index = (local,)
    else:
        raise DebugAtlasError(
            f"Layer {layer_name!r} output has shape {shape}; expected [B, C, H, W], [B, T, C] or [B, C]."
        )
    if c != channels or not bool(ok.all()):
        raise DebugAtlasError(
            f"`acts` does not fit layer {layer_name!r}: it has {channels} channels and positions like "
            f"{pos[~ok][:3].tolist() or pos[:3].tolist()}, the layer outputs shape {shape} "
            f"(spatial {size}). HINT: pass the model and layer the ActivationSet was captured from."
        )
    return tuple(t.to(h.device) for t in index)


def _position_first(t: torch.Tensor, lead: int) -> torch.Tensor:
    """Move the channel dim of a [*lead, B, C, H, W] tensor last (no-op for [B, T, C] / [B, C])."""
    if t.dim() - lead == 4:
        return t.movedim(lead + 1, -1)
    return t


def _at(h: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Vectors [n, C] of the layer output at the samples' positions."""
    return _position_first(h, 0)[index]


def _at_grad(grads: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Gradients [n, K, C] at the samples' positions, from grads [K, B, ...]."""
    g = _position_first(grads, 1)  # [K, B, ..., C]
    return g.movedim(0, -2)[index]  # [B, ..., K, C] -> [n, K, C]


def _class_gradients(logits: torch.Tensor, h: torch.Tensor, selected: list[int]) -> torch.Tensor:
    """∂logit_c/∂h for every selected class: [K, *h.shape], in batched backward passes
    (`batched_grad`) over chunks of classes that keep each gradient tensor within `_GRAD_BUDGET_BYTES`."""
    k = len(selected)
    chunk = max(1, min(k, _GRAD_BUDGET_BYTES // max(1, h.numel() * 4)))
    target = logits[:, selected]  # [B, K]
    eye = torch.eye(k, dtype=target.dtype, device=target.device)
    parts = []
    for start in range(0, k, chunk):
        grad_out = eye[start:start + chunk].unsqueeze(1).expand(-1, target.shape[0], -1)  # [k', B, K]
        parts.append(batched_grad(target, h, grad_out, retain_graph=True))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _differs(recomputed: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """[n] bool: the recomputed vector is not the captured one (beyond float16 rounding)."""
    err = (recomputed - stored).norm(dim=1)
    scale = torch.maximum(recomputed.norm(dim=1), stored.norm(dim=1))
    return err > _MATCH_RTOL * scale + 1e-3 * stored.shape[1] ** 0.5


def _check_match(acts: ActivationSet, mismatch: torch.Tensor, layer_name: str) -> None:
    """Raise when the recomputed vectors differ from the captured ones for many samples."""
    if mismatch.float().mean() > _MISMATCH_FRACTION:
        raise DebugAtlasError(
            f"For {int(mismatch.sum())} of {len(acts)} samples the vector recomputed at layer "
            f"{layer_name!r} differs from the captured one (e.g. images "
            f"{acts.image_ids[mismatch][:5].tolist()}). HINT: pass the same model and dataset "
            "(in the same order, without random transforms) that `capture` used."
        )


