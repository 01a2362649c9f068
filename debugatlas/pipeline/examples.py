"""Misclassified examples of a pair with pixel attributions toward the predicted class."""
from __future__ import annotations

import torch

from ..attribution import pixel_attribution
from ..capture import ActivationSet
from ..core.model import as_logits, preserved_model_state
from .context import RunContext
from .records import PairPlan


def misclassified(ctx: RunContext, *, acts: ActivationSet, plan: PairPlan) -> tuple[dict, ...]:
    """Up to `n_examples` images of a predicted b: {id, image [C,H,W], heatmap [H,W], p_b}."""
    uid, labels, preds = acts.per_image()
    chosen = uid[(labels == plan.a) & (preds == plan.b)][:ctx.config.n_examples]
    if chosen.size == 0:
        return ()
    images = ctx.images(chosen)
    target = torch.full((len(chosen),), plan.b, dtype=torch.long)
    heat = pixel_attribution(ctx.model, images.to(ctx.device), target.to(ctx.device))
    with preserved_model_state(ctx.model), torch.no_grad():
        ctx.model.eval()
        p_b = torch.softmax(as_logits(ctx.model(images.to(ctx.device))), -1)[:, plan.b].cpu()
    return tuple({"id": int(i), "image": images[k], "heatmap": heat[k].cpu(), "p_b": float(p_b[k])}
                 for k, i in enumerate(chosen))
