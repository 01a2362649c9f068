"""Held-out confirmation that spends forwards only where a verdict is still open.

The confirmation images are measured in `looks` (cumulative image counts, doubling from `first`,
the last one all of them). After each look a patch leaves the experiment when its verdict is
settled: confirmed already at the final threshold, or futile (no placement beats its stronger
control by `FUTILITY_LIFT`), judged on the images counted so far (none counted settles nothing). Its verdict and interval come from the images up to the look where
it left.

Why the error rate and coverage hold for any stopping rule: at each look a patch's one-sided
Fisher p-value is valid, so the p-value at the look where it stopped, whatever made it stop,
is at most the union of the `L` looks' events: P(p_stop <= t) <= L t. Each stopped p-value is
therefore multiplied by `L` (a Bonferroni bound over looks) before the Holm correction over the
patches, which holds under any dependence; likewise each rate's Wilson interval is taken at the
level 1 - 0.05 / L, so it covers the true rate at the stopping look with probability >= 95 %.
With one look this is the fixed-sample rule of `patches.stats`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .candidates import _geometry
from .race import chunk_sizes
from .stats import counts_of, fisher_greater, judge_evaluation
from .trials import TrialLog
from .types import Patch, PatchEvaluation, _nan0

FUTILITY_LIFT = 0.1  # a patch this close to its stronger control at every placement stops early
FIRST_LOOK = 16


@dataclass(frozen=True)
class SequentialDesign:
    """looks: cumulative images of A offered at each look (the last: all of them); alpha: the
    family-wise error rate of the verdicts."""

    looks: tuple[int, ...]
    alpha: float = 0.05

    @classmethod
    def for_images(cls, n_images: int, alpha: float = 0.05, first: int = FIRST_LOOK) -> "SequentialDesign":
        sizes = chunk_sizes(n_images, first)
        looks, total = [], 0
        for s in sizes:
            total += s
            looks.append(total)
        return cls(tuple(looks), float(alpha))

    @property
    def n_looks(self) -> int:
        return max(1, len(self.looks))

    def to_dict(self) -> dict:
        return {"looks": list(self.looks), "alpha": self.alpha, "futility_lift": FUTILITY_LIFT}


@dataclass(frozen=True)
class Confirmation:
    """evaluation: judged results of the patches (each on the images up to its last look) and the
    controls; stopped_at: per patch id, the index of its last look; design: the looks used."""

    evaluation: PatchEvaluation
    stopped_at: dict[str, int]
    design: SequentialDesign


def measure_in_looks(log: TrialLog, patches: Sequence[Patch], controls: Sequence[Patch], images: torch.Tensor,
                     design: SequentialDesign, leaves: Callable[[Patch, int], bool]) -> dict[str, list[int]]:
    """Measure `patches` (and the `controls` of the geometries still open) on `images`, look by look;
    after each look a patch leaves when `leaves(patch, look)` says so, and all leave at the last.
    Returns, per patch id, the chunks of `log` it was measured on."""
    height, width = log.shape[-2:]
    open_, stopped, added, start = list(patches), {}, [], 0
    for look, total in enumerate(design.looks):
        added.append(log.add_images(images[start:total]))
        start = total
        geometries = {_geometry(p, height, width) for p in open_}
        log.measure(open_ + [c for c in controls if _geometry(c, height, width) in geometries], added[-1])
        last = look == len(design.looks) - 1
        still = []
        for p in open_:
            if last or leaves(p, look):
                stopped[p.id] = look
            else:
                still.append(p)
        open_ = still
        if not open_:
            break
    return {p.id: added[:stopped[p.id] + 1] for p in patches}


def confirm(log: TrialLog, patches: Sequence[Patch], controls: Sequence[Patch], images: torch.Tensor, *,
            alpha: float = 0.05, first: int = FIRST_LOOK) -> Confirmation:
    """Measure `patches` and their `controls` on `images` look by look; judge each where it stopped."""
    design = SequentialDesign.for_images(len(images), alpha, first)
    placements = log.experiment.placements
    m = max(1, len(patches))

    def leaves(p: Patch, _look: int) -> bool:
        return _settled([log.with_controls(p.id, pl) for pl in placements], m, design)

    chunks = measure_in_looks(log, patches, controls, images, design, leaves)
    stopped = {pid: len(c) - 1 for pid, c in chunks.items()}
    evaluation = log.evaluation([p.id for p in patches], [c.id for c in controls if log.chunks_of(c.id)], chunks)
    judged = judge_evaluation(evaluation, family_size=len(patches), alpha=alpha, looks=design.n_looks)
    return Confirmation(judged, stopped, design)


def _settled(results, m: int, design: SequentialDesign) -> bool:
    """Confirmed at every placement with the final thresholds (Bonferroni over the `m` patches,
    a bound Holm never exceeds), or futile at every placement. Nothing is settled on no image:
    a look whose images of A the model already gets wrong counts none, and says nothing."""
    confirmed = futile = True
    for r in results:
        counts = counts_of(r)
        if not counts.n:
            return False
        p = 1.0
        if counts.noise_flips is not None and counts.natural_flips is not None and counts.n:
            p = max(fisher_greater(int(counts.flips), counts.n, int(counts.noise_flips), counts.n),
                    fisher_greater(int(counts.flips), counts.n, int(counts.natural_flips), counts.n))
        confirmed &= p * design.n_looks * m <= design.alpha
        controls = [_nan0(c) for c in (r.noise_flip_rate, r.natural_flip_rate) if c is not None]
        futile &= _nan0(r.flip_rate) - max(controls, default=0.0) < FUTILITY_LIFT
    return confirmed or futile
