"""Choosing among many candidate patches with few forwards: successive halving on growing chunks.

Round r measures the candidates still in the race on a new chunk of images (the first holds
`first` images, each next one twice as many, until the images run out), ranks them on every
image measured so far, with their controls on the same images, and keeps the best third (never
fewer than `keep`, plus the best of each reserved kind). The race ends when no more than `keep`
are left, or when the images are used up; a round before which no image was counted (the model
already gets every one wrong) drops nobody. A strong candidate is kept after a few images; the many
weak ones cost one small chunk each. Only choosing happens here: the held-out confirmation
(`patches.sequential`) measures the chosen ones again on other images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .trials import TrialLog
from .types import Patch, PatchResult, _nan0

RACE_PLACEMENT = "random"
KEEP_FRACTION = 1 / 3


@dataclass(frozen=True)
class RaceResult:
    """ranked: every candidate's result (random placement, controls on the same images), the
    survivors first in their final order, then the others in the order they left the race.
    rounds: (chunk images offered, candidates measured) per round."""

    ranked: tuple[PatchResult, ...]
    rounds: tuple[tuple[int, int], ...]


def rank_key(r: PatchResult):
    """Best first: the largest lift (flip rate above the stronger control), then flip rate, best
    single position, P(B) after (the order of `PatchEvaluation.ranked`)."""
    return (-r.lift, -_nan0(r.flip_rate), -_nan0(r.best_flip_rate), -_nan0(r.p_b_after))


def chunk_sizes(n_images: int, first: int) -> list[int]:
    """`first`, then doubling, the last chunk taking what is left (all of `n_images` in all)."""
    sizes, left, size = [], int(n_images), max(1, int(first))
    while left > 0:
        take = min(size, left)
        if left - take < size:  # a short remainder joins the last chunk
            take = left
        sizes.append(take)
        left -= take
        size *= 2
    return sizes


def race(log: TrialLog, candidates: Sequence[Patch], controls: Sequence[Patch], images: torch.Tensor, *,
         keep: int, first: int = 4, reserve: Callable[[list[PatchResult]], set[str]] | None = None) -> RaceResult:
    """Successive halving of `candidates` on `images` (see the module docstring).

    `reserve(ranked)` names ids that stay in the race whatever their rank (e.g. the best few of a
    kind that the ranking alone would drop). Controls of the geometries still racing are measured
    on every chunk.
    """
    placement = RACE_PLACEMENT
    open_ = list(candidates)
    left: list[PatchResult] = []
    rounds = []
    start = 0
    sizes = chunk_sizes(len(images), first)
    chunks = []
    for r, size in enumerate(sizes):
        chunk = log.add_images(images[start:start + size])
        chunks.append(chunk)
        start += size
        geometries = {_geom(log, p) for p in open_}
        log.measure(open_ + [c for c in controls if _geom(log, c) in geometries], chunk)
        rounds.append((size, len(open_)))
        ranked = sorted((log.with_controls(p.id, placement) for p in open_), key=rank_key)
        last = r == len(sizes) - 1
        if not last and log.n_images(chunks) == 0:
            continue  # no image of A counted yet (the model gets them all wrong): nothing to rank on
        target = max(int(keep), math.ceil(len(open_) * KEEP_FRACTION))
        if last or len(open_) <= keep:
            return RaceResult(tuple(ranked + left), tuple(rounds))
        kept = {x.patch_id for x in ranked[:target]} | (reserve(ranked) if reserve else set())
        left = [x for x in ranked if x.patch_id not in kept] + left
        open_ = [p for p in open_ if p.id in kept]
        if len(open_) <= keep:
            ranked = [x for x in ranked if x.patch_id in kept]
            return RaceResult(tuple(ranked + left), tuple(rounds))
    return RaceResult(tuple(left), tuple(rounds))


def _geom(log: TrialLog, patch: Patch) -> str:
    from .candidates import _geometry

    return _geometry(patch, *log.shape[-2:])
