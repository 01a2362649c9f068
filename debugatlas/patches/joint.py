"""Two patches together: does a pair of features flip A -> B more than either alone?

A confusion can need two features at once (a red stitch *and* a white curve), each of which alone
moves nothing. The pipeline tests the pair's strongest patches of distinct cells two at a time on
the held-out images of A: each pair of patches pasted at `n_random` seeded positions that do not
overlap, the first alone at its position, the second alone at its position, and two noise patches
of the same sizes at both positions (`JOINT_RULE`). The image is the unit, as for the verdicts
(`patches.stats`): its flip fraction over the positions is one observation.

The pair *acts together* when, by one-sided Fisher exact tests on the same images, it flips more
than the first alone, than the second alone and than the two noise patches; its p-value is the
largest of the three, multiplied by the number of pairs of patches tested in the run (Bonferroni).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..artifacts.record import JointRow
from ..core.model import preserved_model_state
from .evaluate import _classified, _device, _logits, paste_variants
from .stats import fisher_greater, wilson_interval
from .types import Experiment, Patch

JOINT_RULE = (
    "two patches act together when, pasted at the same time at non-overlapping seeded positions on held-out "
    "images of A, they flip more images than the first alone at its position, the second alone at its "
    "position, and two noise patches of the same sizes at both positions (one-sided Fisher exact tests on the "
    "same images, the image the unit; p = the largest of the three, times the number of pairs tested), "
    "at p <= alpha"
)
CONDITIONS = ("together", "first", "second", "noise")


def joint_positions(height: int, width: int, first: tuple[int, int], second: tuple[int, int], n: int,
                    seed: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """`n` seeded pairs of top-left positions for patches of sizes `first` and `second` (h, w) that
    do not overlap (where the image leaves no room for that, the last draw is kept)."""
    rng = np.random.default_rng([int(seed), int(height), int(width), *first, *second])
    out = []
    for _ in range(int(n)):
        for _attempt in range(100):
            r1, c1 = int(rng.integers(0, height - first[0] + 1)), int(rng.integers(0, width - first[1] + 1))
            r2, c2 = int(rng.integers(0, height - second[0] + 1)), int(rng.integers(0, width - second[1] + 1))
            apart = r1 + first[0] <= r2 or r2 + second[0] <= r1 or c1 + first[1] <= c2 or c2 + second[1] <= c1
            if apart:
                break
        out.append(((r1, c1), (r2, c2)))
    return out


def measure_joint(model: nn.Module, images_a: torch.Tensor, first: Patch, second: Patch, experiment: Experiment,
                  ) -> dict[str, torch.Tensor]:
    """Per condition of `CONDITIONS`, the flip fraction [N] over the positions of each image of
    `images_a` the model classifies as A unpatched (the others are not counted). The patches are
    pasted at `experiment.sizes[0]`; the noise patches are seeded by `experiment.seed`."""
    c, height, width = (int(v) for v in images_a.shape[1:])
    size = experiment.sizes[:1]
    px1, px2 = (paste_variants(p, size, (c, height, width))[0][1] for p in (first, second))
    gen = torch.Generator().manual_seed(int(experiment.seed))
    noise1, noise2 = torch.rand(px1.shape, generator=gen), torch.rand(px2.shape, generator=gen)
    positions = joint_positions(height, width, tuple(px1.shape[-2:]), tuple(px2.shape[-2:]),
                                experiment.n_random, experiment.seed)
    pastes = {"together": ((px1, 0), (px2, 1)), "first": ((px1, 0),), "second": ((px2, 1),),
              "noise": ((noise1, 0), (noise2, 1))}
    device = _device(model, experiment)
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        keep, _ = _classified(model, images_a.detach().float(), experiment, device)
        counted = images_a[keep].float()
        out = {}
        per = max(1, experiment.batch_size // max(1, len(positions)))
        for name in CONDITIONS:
            fractions = []
            for start in range(0, counted.shape[0], per):
                chunk = counted[start:start + per].to(device)
                batch = chunk.unsqueeze(1).repeat(1, len(positions), 1, 1, 1)
                for k, where in enumerate(positions):
                    for pixels, which in pastes[name]:
                        (r, col), (ph, pw) = where[which], pixels.shape[-2:]
                        batch[:, k, :, r:r + ph, col:col + pw] = pixels.to(device)
                logits = _logits(model, batch.flatten(0, 1), experiment.b, experiment.precision)
                flips = (logits.argmax(-1) == experiment.b).view(chunk.shape[0], len(positions))
                fractions.append(flips.float().mean(1).cpu())
            out[name] = torch.cat(fractions) if fractions else torch.zeros(0)
    return out


def judge_joint(first: Patch, second: Patch, fractions: dict[str, torch.Tensor], *, family: int,
                alpha: float = 0.05) -> JointRow:
    """The verdict of one pair of patches from `measure_joint`'s fractions (`JOINT_RULE`); `family`:
    the number of pairs of patches tested in the run."""
    n = int(fractions["together"].numel())
    flips = {name: int(round(float(f.sum()))) for name, f in fractions.items()}
    rate = {name: (flips[name] / n if n else None) for name in CONDITIONS}
    p = 1.0
    if n:
        p = max(fisher_greater(flips["together"], n, flips[other], n) for other in CONDITIONS[1:])
    adjusted = min(1.0, p * max(1, int(family)))
    return JointRow(
        patches=(first.id, second.id), first_cell=first.cell, second_cell=second.cell, n_images=n,
        flip_rate=rate["together"], flip_rate_ci=wilson_interval(flips["together"], n) if n else None,
        first_alone=rate["first"], second_alone=rate["second"], noise_flip_rate=rate["noise"], p_value=adjusted,
        verdict="together" if n and adjusted <= alpha else "not_together")


def measure_pairs(model: nn.Module, images_a: torch.Tensor, patches: Sequence[Patch], experiment: Experiment
                  ) -> list[tuple[Patch, Patch, dict[str, torch.Tensor]]]:
    """Every pair of `patches`, in order, with `measure_joint`'s fractions."""
    return [(patches[i], patches[j], measure_joint(model, images_a, patches[i], patches[j], experiment))
            for i in range(len(patches)) for j in range(i + 1, len(patches))]


def judge_all(measured: Sequence[tuple[Patch, Patch, dict[str, torch.Tensor]]], *, alpha: float = 0.05
              ) -> list[JointRow]:
    """`judge_joint` of every measured pair, the family being all of them."""
    return [judge_joint(first, second, fractions, family=len(measured), alpha=alpha)
            for first, second, fractions in measured]
