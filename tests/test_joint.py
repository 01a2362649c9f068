"""Two patches together (`patches.joint`): a pair that flips only together is stated as such; a
patch that flips alone is not a pair; two placebo patches are a pair in at most 5 % of runs.

The models are hash classifiers as in test_sequential: each distinct image is a fresh coin with a
known probability, `p` on images that hold the features the model needs, `q` on the others.
"""
from __future__ import annotations

import torch
from torch import nn

from debugatlas.patches import Patch
from debugatlas.patches.joint import judge_joint, joint_positions, measure_pairs
from debugatlas.patches.trials import Experiment

GREY, WHITE = 128 / 255, 1.0


class NeedsBoth(nn.Module):
    """Class 1 (B) with probability `p` on images holding a 3 x 3 block of grey *and* one of white
    (or grey alone, with `grey_alone`), `q` on the others; class 0 (A) else."""

    def __init__(self, p: float, q: float, grey_alone: bool = False, side: int = 12) -> None:
        super().__init__()
        self.p, self.q, self.grey_alone = p, q, grey_alone
        self.register_buffer("w", torch.rand(side * side, generator=torch.Generator().manual_seed(0)) * 97 + 3)

    @staticmethod
    def _holds(x: torch.Tensor, value: float) -> torch.Tensor:
        hit = ((x[:, :1] - value).abs() < 1e-4).float()
        return nn.functional.avg_pool2d(hit, 3, stride=1).flatten(1).amax(1) > 0.999

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.frac(torch.sin(x.flatten(1).double() @ self.w.double() * 12.9898) * 43758.5453).abs().float()
        grey, white = self._holds(x, GREY), self._holds(x, WHITE)
        marked = grey if self.grey_alone else grey & white
        b = u < torch.where(marked, torch.full_like(u, self.p), torch.full_like(u, self.q))
        logits = torch.zeros(len(x), 3)
        logits[b, 1] = 5.0
        logits[~b, 0] = 5.0
        return logits


def _patches():
    return [Patch("c1-1-icon", (1, 1), "icon", torch.full((1, 3, 3), GREY), resize=False),
            Patch("c5-5-icon", (5, 5), "icon", torch.full((1, 3, 3), WHITE), resize=False)]


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed)) * 0.4  # never grey or white


def _judged(model, images, seed: int, family: int):
    ((first, second, fractions),) = measure_pairs(model, images, _patches(), _experiment(seed))
    return judge_joint(first, second, fractions, family=family)


def _experiment(seed: int) -> Experiment:
    return Experiment(0, 1, sizes=(0.25,), placements=("random",), n_random=4, seed=seed, max_batch=4096)


def test_two_halves_that_flip_only_together_are_stated_as_a_pair():
    result = _judged(NeedsBoth(0.9, 0.05), _images(60, 1), 0, family=3)
    assert result.verdict == "together" and result.patches == ("c1-1-icon", "c5-5-icon")
    alone = max(result.first_alone, result.second_alone)
    assert result.flip_rate > 0.7 and alone < 0.2 and result.noise_flip_rate < 0.2
    assert result.n_images > 40 and result.flip_rate_ci[0] > alone


def test_a_patch_that_flips_alone_does_not_make_a_pair():
    result = _judged(NeedsBoth(0.9, 0.05, grey_alone=True), _images(60, 1), 0, family=3)
    assert result.first_alone > 0.7 and result.verdict == "not_together"


def test_placebo_pairs_act_together_in_at_most_five_percent_of_runs():
    """Neither patch does anything: every condition flips with the same probability."""
    runs = 200
    together = sum(_judged(NeedsBoth(0.3, 0.3), _images(40, 100 + k), k, family=1).together for k in range(runs))
    assert together / runs <= 0.05


def test_the_two_positions_never_overlap_where_there_is_room():
    for (r1, c1), (r2, c2) in joint_positions(12, 12, (3, 3), (4, 2), 50, seed=3):
        assert r1 + 3 <= r2 or r2 + 4 <= r1 or c1 + 3 <= c2 or c2 + 2 <= c1
