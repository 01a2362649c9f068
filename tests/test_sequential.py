"""The sequential confirmation and the candidate race: error rate, coverage, early stopping, oracles.

The models here are hash classifiers: a pseudo-random function of the pixels decides B or A, so
every distinct image is a fresh coin and a flip probability is known exactly. `MarkerModel`
flips with probability `p` when the image holds a 2 x 2 block of the marker grey, `q` otherwise:
a patch of that grey has flip rate p, a noise patch or a crop of another image has q.
"""
from __future__ import annotations

import torch
from torch import nn

from debugatlas.patches import Patch, control_patches, evaluate_patches
from debugatlas.patches.race import chunk_sizes, race
from debugatlas.patches.sequential import SequentialDesign, confirm
from debugatlas.patches.stats import judge_evaluation, z_for_looks
from debugatlas.patches.trials import Experiment, TrialLog

GREY = 128 / 255


class MarkerModel(nn.Module):
    """Class 1 (B) with probability `p` on images holding a 2x2 block of `GREY`, `q` on others; class 0 (A) else."""

    def __init__(self, p: float, q: float, side: int = 8) -> None:
        super().__init__()
        self.p, self.q = p, q
        self.register_buffer("w", torch.rand(side * side, generator=torch.Generator().manual_seed(0)) * 97 + 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).double()
        u = torch.frac(torch.sin(flat @ self.w.double() * 12.9898) * 43758.5453).abs().float()
        grey = ((x[:, :1] - GREY).abs() < 1e-4).float()
        marked = nn.functional.avg_pool2d(grey, 2, stride=1).flatten(1).amax(1) > 0.999
        rate = torch.where(marked, torch.full_like(u, self.p), torch.full_like(u, self.q))
        b = u < rate
        logits = torch.zeros(len(x), 3)
        logits[b, 1] = 5.0
        logits[~b, 0] = 5.0
        return logits


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _setup(p: float, q: float, seed: int, n_patches: int = 1, marker: bool = True):
    model = MarkerModel(p, q)
    exp = Experiment(0, 1, sizes=(0.25,), placements=("static", "random"), n_random=4, seed=seed, max_batch=4096)
    gen = torch.Generator().manual_seed(1000 + seed)
    patches = []
    for k in range(n_patches):
        image = torch.full((1, 2, 2), GREY) if marker else torch.rand(1, 2, 2, generator=gen)
        patches.append(Patch(f"c{k}-0-icon", (k, 0), "icon", image).quantized())
    controls = [c.quantized() for c in control_patches(patches, _images(20, 99 + seed), (1, 8, 8), (0.25,), seed)]
    return model, exp, patches, controls


def test_placebo_patches_are_confirmed_in_at_most_five_percent_of_experiments():
    """H0 true for every patch (same flip probability as the controls): the family-wise false alarm
    rate of the sequential rule, over 120 experiments of 4 patches on 100 images, stays <= 5 %."""
    alarms = 0
    runs = 120
    for seed in range(runs):
        model, exp, patches, controls = _setup(0.3, 0.3, seed, n_patches=4, marker=False)
        log = TrialLog(model, exp, (1, 8, 8))
        result = confirm(log, patches, controls, _images(100, seed))
        alarms += any(r.verdict == "confirmed" for r in result.evaluation.candidates())
    assert alarms / runs <= 0.05


def test_intervals_cover_the_true_rate_at_the_look_where_the_patch_stopped():
    """A marker patch with flip probability 0.55 against 0.15: at its stopping look (often the
    first), the reported interval covers 0.55 in >= 95 % of experiments at the static placement
    (one coin per image)."""
    covered = stopped_early = 0
    runs = 150
    for seed in range(runs):
        model, exp, patches, controls = _setup(0.55, 0.15, seed)
        log = TrialLog(model, exp, (1, 8, 8))
        result = confirm(log, patches, controls, _images(100, 500 + seed))
        r = result.evaluation.get(patches[0].id, "static")
        lo, hi = r.flip_rate_ci
        covered += lo <= 0.55 <= hi
        stopped_early += result.stopped_at[patches[0].id] < len(result.design.looks) - 1
    assert covered / runs >= 0.95
    assert stopped_early / runs > 0.5  # the verdict was settled before all 100 images were used


def test_a_strong_patch_is_confirmed_at_the_first_look_and_a_dud_stops_there_too():
    model, exp, patches, controls = _setup(0.95, 0.05, 3)
    dud = Patch("c9-9-icon", (9, 9), "icon", torch.rand(1, 2, 2, generator=torch.Generator().manual_seed(5))).quantized()
    log = TrialLog(model, exp, (1, 8, 8))
    result = confirm(log, patches + [dud], controls, _images(100, 7))
    assert result.design.looks == (16, 48, 100)
    assert result.stopped_at == {patches[0].id: 0, dud.id: 0}
    assert result.evaluation.get(patches[0].id, "random").verdict == "confirmed"
    assert result.evaluation.get(dud.id, "random").verdict == "not_confirmed"
    assert result.evaluation.get(patches[0].id, "random").n_images == log.n_images([0])
    assert log.forwards < 100 * 5 * 4  # far fewer than every patch and control on every image


def test_a_look_that_counts_no_image_settles_nothing():
    """Images of A the model already gets wrong are not counted; a first look made of them only
    holds no evidence, so no patch may leave there as futile: it is measured on the next looks."""
    model, exp, patches, controls = _setup(0.95, 0.3, 4)
    pool = _images(400, 11)
    wrong = model(pool).argmax(1) != 0
    images = torch.cat([pool[wrong][:16], pool[~wrong][:84]])
    log = TrialLog(model, exp, (1, 8, 8))
    result = confirm(log, patches, controls, images)
    assert log.n_images([0]) == 0 and result.stopped_at[patches[0].id] >= 1
    found = result.evaluation.get(patches[0].id, "random")
    assert found.n_images > 0 and found.verdict == "confirmed"


def test_with_one_look_the_sequential_rule_is_the_fixed_sample_rule():
    """Up to `FIRST_LOOK` images there is one look: the same rates, verdicts and intervals as
    `evaluate_patches` + `judge_evaluation` on the same images, measured patch by patch, as oracle."""
    model, exp, patches, controls = _setup(0.6, 0.2, 11, n_patches=2)
    images = _images(16, 12)
    log = TrialLog(model, exp, (1, 8, 8))
    result = confirm(log, patches, controls, images)
    oracle = judge_evaluation(evaluate_patches(model, images, patches, exp.with_(batched=False), controls=controls),
                              family_size=len(patches))
    for want in oracle.candidates():
        got = result.evaluation.get(want.patch_id, want.placement)
        assert (got.n_images, got.flip_rate, got.noise_flip_rate, got.natural_flip_rate, got.verdict) == \
            (want.n_images, want.flip_rate, want.noise_flip_rate, want.natural_flip_rate, want.verdict)
        assert got.flip_rate_ci == want.flip_rate_ci


def test_the_interval_widens_with_the_number_of_looks():
    assert z_for_looks(1) < z_for_looks(2) < z_for_looks(4)
    assert abs(z_for_looks(4) - 2.4977) < 1e-3  # two-sided 1 - 0.05 / 4
    assert SequentialDesign.for_images(100).looks == (16, 48, 100)
    assert SequentialDesign.for_images(10).looks == (10,)


def test_chunks_double_and_a_short_remainder_joins_the_last():
    assert chunk_sizes(48, 4) == [4, 8, 16, 20]
    assert chunk_sizes(24, 4) == [4, 8, 12]
    assert chunk_sizes(3, 4) == [3]
    assert sum(chunk_sizes(1000, 4)) == 1000


def test_the_race_keeps_the_strong_patch_and_measures_weak_ones_on_the_first_chunk_only():
    model, exp, patches, controls = _setup(0.9, 0.1, 2)
    gen = torch.Generator().manual_seed(8)
    weak = [Patch(f"c{k}-1-icon", (k, 1), "icon", torch.rand(1, 2, 2, generator=gen)).quantized() for k in range(30)]
    log = TrialLog(model, exp.with_(placements=("random",)), (1, 8, 8))
    result = race(log, weak[:15] + patches + weak[15:], controls, _images(48, 4), keep=3, first=4)
    assert result.ranked[0].patch_id == patches[0].id
    assert result.rounds[0] == (4, 31) and result.rounds[1][1] == 11
    assert len(log.chunks_of(weak[0].id)) <= 2 and len(log.chunks_of(patches[0].id)) >= 2
    assert len(result.ranked) == 31


def test_a_race_round_that_counted_no_image_drops_nobody():
    """With a first chunk the model gets wrong throughout, ranking would be by the candidates'
    order alone; the strong patch, listed last, must survive to be ranked on counted images."""
    model, exp, patches, controls = _setup(0.9, 0.1, 2)
    gen = torch.Generator().manual_seed(8)
    weak = [Patch(f"c{k}-1-icon", (k, 1), "icon", torch.rand(1, 2, 2, generator=gen)).quantized() for k in range(12)]
    pool = _images(400, 13)
    wrong = model(pool).argmax(1) != 0
    log = TrialLog(model, exp.with_(placements=("random",)), (1, 8, 8))
    result = race(log, weak + patches, controls, torch.cat([pool[wrong][:4], pool[~wrong][:44]]), keep=3, first=4)
    assert log.n_images([0]) == 0 and result.rounds[1] == (8, 13)  # all 13 measured again after the empty round
    assert result.ranked[0].patch_id == patches[0].id


class _Images(torch.utils.data.Dataset):
    classes = ["a", "b", "c"]

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], 0


def _suite(p: float, q: float):
    from debugatlas.patches import PatchSuite

    model, exp, patches, controls = _setup(p, q, 21)
    log = TrialLog(model, exp, (1, 8, 8))
    judged = confirm(log, patches, controls, _images(100, 22)).evaluation
    return PatchSuite("a", "b", 0, 1, patches, controls, exp.sizes, exp.placements, exp.n_random, exp.seed,
                      judged, ["a", "b", "c"], (1, 8, 8))


def test_the_gate_stops_a_decided_patch_at_the_first_look_and_still_fails_a_worse_checkpoint():
    from debugatlas.check import check_suite

    suite = _suite(0.3, 0.05)
    assert suite.baseline.get(suite.patches[0].id, "static").verdict == "confirmed"
    data = _Images(_images(300, 23))
    same = check_suite(suite, MarkerModel(0.3, 0.05), data)
    worse = check_suite(suite, MarkerModel(0.97, 0.05), data)
    assert same.passed and not worse.passed
    for report in (same, worse):
        run = report.runs[0]
        assert run.looks == 3  # 100 images of A at most (the baseline's), in looks of 16, 48, 100
        # decided before the last look: a rate of 0.97 (or 0.3) lies clear of the baseline's bound
        assert run.evaluation.get(suite.patches[0].id, "random").n_images < 100
