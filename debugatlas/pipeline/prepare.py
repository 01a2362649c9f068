"""The first stages: capture (or take) the activation samples, complete their predictions, pick the pairs."""
from __future__ import annotations

import dataclasses
import difflib

import numpy as np
import torch
from torch import nn

from ..capture import ActivationSet, capture
from ..confusion import confusion_matrix, most_confused_pairs
from ..core.datasets import load_images
from ..core.errors import DebugAtlasError
from ..core.model import as_logits, preserved_model_state
from .context import RunContext
from .records import PairPlan


def count_outputs(model: nn.Module, dataset, device: torch.device) -> int:
    """Number of model outputs, from one forward pass on the first image."""
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        out = model(load_images(dataset, [0]).to(device))
    return int(as_logits(out).shape[1])


def activations(ctx: RunContext, *, given: ActivationSet | None = None) -> ActivationSet:
    """The run's samples: captured now, or `given` (left untouched) with the run's layer name and
    every missing prediction (-1) filled in, as a new `ActivationSet`."""
    cfg = ctx.config
    if given is None:
        acts = capture(ctx.model, ctx.dataset, ctx.layer, cfg.sampling, cfg.samples_per_image, cfg.cap,
                       ctx.seed, cfg.batch_size, ctx.device, progress=ctx.bar("capture"))
    else:
        acts = given
    return dataclasses.replace(acts, layer=ctx.layer, preds=_predictions(ctx, acts))


def _predictions(ctx: RunContext, acts: ActivationSet) -> torch.Tensor:
    """`acts.preds` with every unknown prediction (-1) replaced by the model's, as a new tensor."""
    missing = torch.unique(acts.image_ids[acts.preds < 0])
    if missing.numel() == 0:
        return acts.preds
    preds: dict[int, int] = {}
    with preserved_model_state(ctx.model), torch.no_grad():
        ctx.model.eval()
        for start in range(0, missing.numel(), ctx.config.batch_size):
            ids = missing[start:start + ctx.config.batch_size]
            logits = as_logits(ctx.model(ctx.images(ids).to(ctx.device)))
            preds.update(zip(ids.tolist(), logits.argmax(-1).cpu().tolist()))
    fill = torch.tensor([preds.get(i, -1) for i in acts.image_ids.tolist()], dtype=acts.preds.dtype)
    return torch.where(acts.preds < 0, fill, acts.preds)


def pairs(ctx: RunContext, *, labels: np.ndarray, preds: np.ndarray,
          wanted: list[tuple[int, int]] | None) -> tuple[np.ndarray, tuple[PairPlan, ...]]:
    """The confusion matrix over the captured images and the pairs to study (`wanted`, or the most
    confused pairs when None)."""
    cm = confusion_matrix(labels, preds, ctx.num_classes)
    chosen = wanted if wanted is not None else most_confused_pairs(cm, ctx.config.n_pairs)
    for a, b in chosen:
        if not (labels == a).any():
            raise DebugAtlasError(
                f"Class {ctx.class_names[a]!r} of pair ({ctx.class_names[a]!r}, {ctx.class_names[b]!r}) has no "
                f"images among the {len(labels)} captured. HINT: pick a pair whose first class occurs in the dataset."
            )
    names = ctx.class_names
    return cm, tuple(PairPlan(a, b, names[a], names[b], int(cm[a, b])) for a, b in chosen)


def resolve_pairs(pairs, names: list[str]) -> list[tuple[int, int]] | None:
    """Turn `pairs` ("auto" or [(a, b), ...] by name or index) into index pairs; None means auto."""
    if pairs is None or (isinstance(pairs, str) and pairs == "auto"):
        return None
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise DebugAtlasError(f"`pairs={pairs!r}` must be 'auto' or a list of (A, B) class pairs.")
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DebugAtlasError(f"`pairs` entry {pair!r} is not an (A, B) pair of class names.")
        idx = []
        for cls in pair:
            if isinstance(cls, (int, np.integer)) and 0 <= int(cls) < len(names):
                idx.append(int(cls))
            elif str(cls) in names:
                idx.append(names.index(str(cls)))
            else:
                close = difflib.get_close_matches(str(cls), names, n=3)
                raise DebugAtlasError(
                    f"`pairs` names unknown class {cls!r}. HINT: closest {close}; classes are {names}."
                )
        if idx[0] == idx[1]:
            raise DebugAtlasError(f"`pairs` entry {pair!r} names the same class twice.")
        out.append((idx[0], idx[1]))
    return out
