"""The first stages: capture (or take) the activation samples, complete their predictions, pick the pairs."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..capture import ActivationSet, CaptureSpec, capture
from ..confusion import confusion_matrix, pick_pairs, softmax_probs
from ..core.errors import DebugAtlasError
from ..core.model import as_logits, preserved_model_state
from .context import RunContext
from .records import PairPlan


def activations(ctx: RunContext, *, given: ActivationSet | None = None,
                wanted: list[tuple[int, int]] | None = None) -> ActivationSet:
    """The run's samples: captured now, or `given` (left untouched) with the run's layer name and
    every missing prediction (-1) filled in, as a new `ActivationSet`. Guided sampling also looks
    toward the classes of the `wanted` pairs."""
    cfg = ctx.config
    if given is None:
        classes = sorted({c for pair in wanted or () for c in pair})
        spec = CaptureSpec(sampling=cfg.sampling, samples_per_image=cfg.samples_per_image, cap=cfg.cap,
                           seed=ctx.seed, guided_fraction=cfg.guided_fraction, guided_classes=tuple(classes))
        acts = capture(ctx.model, ctx.dataset, ctx.layer, spec, batch_size=cfg.batch_size, device=ctx.device,
                       progress=ctx.bar())
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


def pairs(ctx: RunContext, *, acts: ActivationSet, wanted: list[tuple[int, int]] | None,
          probs: np.ndarray | None = None) -> tuple[np.ndarray, tuple[PairPlan, ...]]:
    """The confusion matrix over the captured images and the pairs to study: `wanted`, or for
    `pairs="auto"` the most confused pairs, filled up with near misses when fewer than `n_pairs`
    pairs are confused (`confusion.pick_pairs`). `probs`: the images' softmax probabilities
    (`ActivationSet.per_image` order) when already computed; else the model is run for them."""
    uid, labels, preds = acts.per_image()
    cm = confusion_matrix(labels, preds, ctx.num_classes)
    names = ctx.class_names
    if wanted is None:
        if probs is None:
            probs = softmax_probs(ctx.model, ctx.dataset, uid, ctx.config.batch_size, ctx.device)
        picked = pick_pairs(cm, ctx.config.n_pairs, probs, labels, preds)
        chosen = [(p.a, p.b, p.kind) for p in picked]
    else:
        chosen = [(a, b, "confused" if cm[a, b] > 0 else "near_miss") for a, b in wanted]
    for a, b, _ in chosen:
        if not (labels == a).any():
            raise DebugAtlasError(
                f"Class {names[a]!r} of pair ({names[a]!r}, {names[b]!r}) has no images among the {len(labels)} "
                "captured. HINT: pick a pair whose first class occurs in the dataset."
            )
    return cm, tuple(PairPlan(a, b, names[a], names[b], int(cm[a, b]), kind) for a, b, kind in chosen)
