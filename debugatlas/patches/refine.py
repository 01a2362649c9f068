"""Refinement: optimise a patch's pixels by gradient into an upper bound of what a patch can do."""
from __future__ import annotations

import torch
from torch import nn

from ..core.errors import DebugAtlasError
from ..core.model import generator, gradient_context, model_device
from .evaluate import _logits, paste_variants
from .types import DEFAULT_SIZES, Patch


def refine_patch(
    model: nn.Module,
    patch: Patch,
    images_a: torch.Tensor,
    b: int,
    steps: int = 100,
    lr: float = 0.05,
    size_frac: float = DEFAULT_SIZES[0],
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Patch:
    """Optimise the patch's pixels by gradient to raise log P(B) when pasted at random positions.

    The result is an upper bound on what a patch of that size can do, not a finding: its source is
    "optimised" and its id ends in "-opt". It is pasted unresized at the size optimised (the
    patch's native size, or `size_frac` of the image side for a resized patch).
    """
    if int(steps) < 0:
        raise DebugAtlasError(f"`steps={steps!r}` must be >= 0.")
    device = torch.device(device) if device is not None else model_device(model)
    with gradient_context(model):
        images = images_a.detach().clone().float().to(device)
        n, c, height, width = images.shape
        start = paste_variants(patch, [size_frac], (c, height, width))[0][1].to(device)
        ph, pw = start.shape[-2:]
        param = torch.logit(start.clamp(0.02, 0.98)).clone().requires_grad_(True)
        opt = torch.optim.Adam([param], lr=lr)
        gen = generator(seed)
        for _ in range(int(steps)):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            rows = torch.randint(0, height - ph + 1, (len(idx),), generator=gen).tolist()
            cols = torch.randint(0, width - pw + 1, (len(idx),), generator=gen).tolist()
            pixels = torch.sigmoid(param)
            canvas = torch.zeros((len(idx), c, height, width), device=device)
            mask = torch.zeros_like(canvas)
            for k, (r, col) in enumerate(zip(rows, cols)):
                canvas[k, :, r:r + ph, col:col + pw] = pixels
                mask[k, :, r:r + ph, col:col + pw] = 1.0
            batch = images[idx.to(device)] * (1 - mask) + canvas
            loss = -_logits(model, batch, b).log_softmax(-1)[:, b].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        result = torch.sigmoid(param).detach().cpu()
    return Patch(f"{patch.id}-opt", patch.cell, "optimised", result, resize=False)
