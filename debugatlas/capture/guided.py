"""Attribution-guided capture: per image, some uniformly random positions and some where the
attribution toward the image's predicted class (and toward given classes) is highest.

A trigger of a few pixels covers a handful of a layer's positions; uniform sampling rarely lands
on it, so its atlas cell stays thin and impure. Guided sampling adds the positions the model
itself relies on, found in one batched gradient pass (`attribution.position_attribution`). Every
vector records which rule chose it (`ActivationSet.rule`: 0 random, 1 attribution), so densities
shown to a user can be drawn from the random samples only (`Atlas.density`).

The random picks are the keyed ones of `ActivationRecorder.expect` (a function of seed and image
id), so with `guided_fraction=0` this capture equals `capture(..., sampling="random")` run with
announced ids. The gradient pass needs autograd, so the Lightning callback, whose hook runs in
inference mode, calls this after validation instead of sampling in its hook.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..core.datasets import iterate_dataset
from ..core.errors import DebugAtlasError
from ..core.model import layer_name_and_module, model_device
from .activations import RULE_ATTRIBUTION, RULE_RANDOM, ActivationSet
from .recorder import GUIDED, _interior, image_picks
from .spec import CaptureSpec


def split_samples(samples_per_image: int, guided_fraction: float) -> tuple[int, int]:
    """(random, attribution) positions per image: m * fraction rounded half up guided, the rest random."""
    if isinstance(samples_per_image, bool) or not isinstance(samples_per_image, int) or samples_per_image < 1:
        raise DebugAtlasError(f"`samples_per_image={samples_per_image!r}` must be an integer >= 1.")
    if not isinstance(guided_fraction, (int, float)) or not 0.0 <= float(guided_fraction) <= 1.0:
        raise DebugAtlasError(
            f"`guided_fraction={guided_fraction!r}` must be a number in [0, 1]. "
            "HINT: 0.5 takes half of each image's samples at its highest-attribution positions."
        )
    guided = int(np.floor(samples_per_image * float(guided_fraction) + 0.5))
    return samples_per_image - guided, guided


def choose_guided(maps: torch.Tensor, image_ids: torch.Tensor, k_random: int, k_guided: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [B, k_random + k_guided, 2] and rule [B, m] int8 from attribution maps [B, T, H, W].

    Random picks: keyed by (seed, image id) over the interior grid (`image_picks`), with
    replacement. Guided picks: the interior positions with the largest attribution to any of the
    T classes (max over T), distinct and not among the image's random picks, best first; where
    fewer remain, the best positions are repeated.
    """
    batch, _, h, w = maps.shape
    device = maps.device
    rows, cols = _interior(h, device), _interior(w, device)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)  # [P, 2]
    parts, rules = [], []
    taken = torch.zeros(batch, grid.shape[0], dtype=torch.bool, device=device)
    if k_random:
        pick = image_picks(seed, image_ids, k_random, grid.shape[0]).to(device)
        taken.scatter_(1, pick, True)
        parts.append(grid[pick])
        rules.append(torch.full((batch, k_random), RULE_RANDOM, dtype=torch.int8))
    if k_guided:
        score = maps.amax(1)[:, grid[:, 0], grid[:, 1]].float()  # [B, P]
        score = score.masked_fill(taken, float("-inf"))
        top = torch.argsort(score, dim=1, descending=True, stable=True)
        free = (~taken).sum(1).clamp_min(1)
        slot = torch.arange(k_guided, device=device).unsqueeze(0) % free.unsqueeze(1)
        parts.append(grid[torch.gather(top, 1, slot)])
        rules.append(torch.full((batch, k_guided), RULE_ATTRIBUTION, dtype=torch.int8))
    return torch.cat(parts, 1), torch.cat(rules, 1)


def guided_positions(
    model: nn.Module,
    layer: str | nn.Module,
    dataset,
    image_ids: Sequence[int] | torch.Tensor,
    *,
    samples_per_image: int = 2,
    guided_fraction: float = 0.5,
    classes: Sequence[int] = (),
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [N, m, 2] int64, rule [N, m] int8) on the CPU for the images `image_ids` of `dataset`.

    m = `samples_per_image`; m * `guided_fraction` (rounded half up) of them at the highest attribution toward
    each image's predicted class and `classes` (see `choose_guided`), the rest random.
    """
    from ..core.datasets import load_images

    ids = torch.as_tensor(image_ids, dtype=torch.long).reshape(-1)
    k_random, k_guided = split_samples(samples_per_image, guided_fraction)
    out_pos, out_rule = [], []
    for start in range(0, len(ids), max(1, int(batch_size))):
        chunk = ids[start:start + batch_size]
        pos, rule, *_ = _batch(model, layer, load_images(dataset, chunk), chunk, k_random, k_guided, classes,
                                 seed, device)
        out_pos.append(pos.cpu())
        out_rule.append(rule)
    if not out_pos:
        raise DebugAtlasError("`guided_positions(image_ids=...)` is empty. HINT: pass at least one image id.")
    return torch.cat(out_pos), torch.cat(out_rule)


def _batch(model, layer, images, ids, k_random, k_guided, classes, seed, device):
    """Positions, rule, vectors [B, m, C], logits and the layer's (H, W) for one batch
    (one forward, one batched backward)."""
    from ..core.gradients import position_attribution

    maps, h, logits = position_attribution(model, layer, images, classes=classes, device=device)
    pos, rule = choose_guided(maps, ids, k_random, k_guided, seed)
    b = torch.arange(h.shape[0], device=h.device).unsqueeze(1).expand_as(pos[..., 0])
    vectors = h[b, :, pos[..., 0], pos[..., 1]]  # [B, m, C]
    return pos, rule, vectors, logits, (int(h.shape[2]), int(h.shape[3]))


def capture_guided(
    model: nn.Module,
    dataset,
    layer: str | nn.Module,
    spec: CaptureSpec,
    *,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ActivationSet:
    """`capture` with attribution-guided sampling, whatever `spec.sampling` says: an `ActivationSet`
    whose `rule` says which rule chose each vector. Predictions are the argmax of the logits of the
    same pass. The model is left as found (mode, requires_grad, hooks, grad mode). Same reservoir,
    cap and on-disk store as `capture`.
    """
    name, _ = layer_name_and_module(model, layer)
    k_random, k_guided = split_samples(spec.samples_per_image, spec.guided_fraction)
    recorder = replace(spec, sampling=GUIDED).recorder(name)
    device = torch.device(device) if device is not None else model_device(model)
    n = len(dataset)
    for ids, images, labels in iterate_dataset(dataset, batch_size):
        ids = torch.as_tensor(ids, dtype=torch.long)
        pos, rule, vectors, logits, shape = _batch(model, name, images, ids, k_random, k_guided, spec.guided_classes,
                                                   spec.seed, device)
        if not torch.isfinite(vectors).all():
            raise DebugAtlasError(
                f"Layer {name!r} produced NaN or Inf for images {ids[:5].tolist()}. "
                "HINT: check the model's weights and the input range."
            )
        recorder.record(vectors, pos, rule, ids, labels, logits.argmax(-1), spatial_shape=shape)
        if progress is not None:
            progress(int(ids[-1]) + 1, n)
    return recorder.result()
