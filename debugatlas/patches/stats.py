"""Intervals and verdicts for patch tests: Wilson 95 % intervals and the decision rule.

The decision rule (`DECISION_RULE`, quoted in reports): a candidate is compared with each of its
two controls of the same geometry and placement (a noise patch and a natural crop of an image of
B, measured on the same images) by a one-sided Fisher exact test (H0: its flip probability is no
higher than the control's). Its p-value is the larger of the two (it must beat both), and the
p-values of all candidates are Holm-adjusted for the number of candidates in the family
(`family_size`; the pipeline measures on held-out images and passes the number of patches tested
on them). Verdicts:
"confirmed" (adjusted p <= alpha), "natural" (not confirmed, yet it beats the noise control, so
it does no better than the measured crop of a real B: the feature is simply part of B),
"not_confirmed" (everything else, including a candidate whose natural control is missing).

Counts are per image: for a placement with several positions per image ("random"), the image's
flip fraction is one observation and the count is flip_rate x n_images, rounded. The fraction's
variance is at most that of one coin flip, so treating it as one is conservative.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from ..core.errors import DebugAtlasError

VERDICTS = ("confirmed", "natural", "not_confirmed")
Z95 = 1.959963984540054
DECISION_RULE = (
    "A patch is confirmed when its flip rate beats both controls of the same geometry and placement "
    "(a noise patch and a crop of a real image of B, on the same images): one-sided Fisher exact test "
    "against each control, p = the larger of the two, measured on held-out images that took no part in "
    "choosing the patch and Holm-adjusted over every patch tested on them, confirmed when the adjusted "
    "p <= {alpha}. 'natural': not confirmed but above the noise control "
    "(no better than a crop of a real B). Otherwise 'not_confirmed'. Rates carry Wilson 95 % intervals; "
    "with several positions per image the image is the unit (count = flip rate x images)."
)


@dataclass(frozen=True)
class TrialCounts:
    """Flips of one candidate and its two controls on the same `n` images.

    flips, noise_flips, natural_flips: images flipped (may be fractional: rate x n); a control is
    None when it was not measured (then the candidate cannot be confirmed).
    """

    flips: float
    n: int
    noise_flips: float | None
    natural_flips: float | None


@dataclass(frozen=True)
class Judgement:
    """Verdict of one candidate.

    verdict: one of VERDICTS. p_value: Holm-adjusted p of the harder of the two comparisons (1.0
    when nothing was measured). p_noise / p_natural: raw one-sided p against each control.
    flip_rate_ci: Wilson 95 % interval (lo, hi) of the candidate's flip rate.
    """

    verdict: str
    p_value: float
    p_noise: float
    p_natural: float
    flip_rate_ci: tuple[float, float]


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) of a proportion; (0.0, 1.0) when n is 0."""
    n = int(n)
    if n < 0 or not 0 <= successes <= n:
        raise DebugAtlasError(f"`wilson_interval({successes!r}, {n!r})`: need 0 <= successes <= n.")
    if n == 0:
        return (0.0, 1.0)
    p, z2 = successes / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_greater(x: int, n1: int, y: int, n2: int) -> float:
    """One-sided Fisher exact p: P(X >= x) for X hypergeometric given x + y flips in n1 + n2 trials.

    Small p means the first proportion (x / n1) is higher than the second (y / n2).
    """
    x, n1, y, n2 = (int(v) for v in (x, n1, y, n2))
    if min(x, n1, y, n2) < 0 or x > n1 or y > n2:
        raise DebugAtlasError(f"`fisher_greater({x}, {n1}, {y}, {n2})`: need 0 <= x <= n1 and 0 <= y <= n2.")
    total, flips = n1 + n2, x + y
    if n1 == 0 or n2 == 0 or flips in (0, total):
        return 1.0
    hi = min(n1, flips)
    base = _log_comb(total, n1)
    logs = [_log_comb(flips, k) + _log_comb(total - flips, n1 - k) - base for k in range(x, hi + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def holm(p_values: Sequence[float], m: int | None = None) -> list[float]:
    """Holm step-down adjusted p-values, in the input order, for a family of `m` hypotheses.

    `m` >= len(p_values): hypotheses screened but not listed count as p = 1 (they only raise the
    multipliers of the listed ones).
    """
    m = len(p_values) if m is None else int(m)
    if m < len(p_values):
        raise DebugAtlasError(f"`m={m}` is smaller than the {len(p_values)} p-values given.")
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def z_for_looks(looks: int = 1) -> float:
    """The Wilson z of a 95 % interval that holds at any of `looks` looks (level 1 - 0.05 / looks)."""
    looks = int(looks)
    if looks < 1:
        raise DebugAtlasError(f"`looks={looks!r}` must be an integer >= 1.")
    if looks == 1:
        return Z95
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - 0.025 / looks)


def judge(counts: Sequence[TrialCounts], family_size: int | None = None, alpha: float = 0.05,
          looks: int = 1) -> list[Judgement]:
    """Verdict, adjusted p and Wilson interval per candidate (see the module docstring).

    counts: one TrialCounts per candidate measured; family_size: how many hypotheses the Holm
    correction covers (default len(counts); more when candidates tested but not listed count as
    well). looks: the number of looks of a sequential experiment that may have stopped each
    candidate at any of them (`patches.sequential`): each raw p-value is multiplied by it before
    the Holm correction and each interval is taken at level 1 - 0.05 / looks, which keeps the
    error rate and the 95 % coverage whatever the stopping rule.
    """
    looks = int(looks)
    z = z_for_looks(looks)
    if not 0 < float(alpha) < 1:
        raise DebugAtlasError(f"`alpha={alpha!r}` must be in (0, 1).")
    family_size = len(counts) if family_size is None else int(family_size)
    if family_size < len(counts):
        raise DebugAtlasError(
            f"`family_size={family_size}` is smaller than the {len(counts)} candidates judged. "
            "HINT: pass the number of candidates in the family (every patch tested on these images)."
        )
    raw_noise, raw_natural, ints = [], [], []
    for k, c in enumerate(counts):
        n = int(c.n)
        if n < 0:
            raise DebugAtlasError(f"`counts[{k}].n={c.n!r}` must be >= 0.")
        x = _count(c.flips, n, k, "flips")
        noise = None if c.noise_flips is None else _count(c.noise_flips, n, k, "noise_flips")
        natural = None if c.natural_flips is None else _count(c.natural_flips, n, k, "natural_flips")
        raw_noise.append(1.0 if noise is None else min(1.0, looks * fisher_greater(x, n, noise, n)))
        raw_natural.append(1.0 if natural is None else min(1.0, looks * fisher_greater(x, n, natural, n)))
        ints.append((x, n, natural is not None))
    adj_both = holm([max(p, q) for p, q in zip(raw_noise, raw_natural)], family_size)
    adj_noise = holm(raw_noise, family_size)
    out = []
    for (x, n, has_natural), p_noise, p_natural, both, noise in zip(ints, raw_noise, raw_natural, adj_both, adj_noise):
        if both <= alpha:
            verdict = "confirmed"
        elif noise <= alpha and has_natural:
            verdict = "natural"
        else:
            verdict = "not_confirmed"
        out.append(Judgement(verdict, both, p_noise, p_natural, wilson_interval(x, n, z)))
    return out


def _count(value: float, n: int, k: int, name: str) -> int:
    if value is None or value != value or not -1e-6 <= value <= n + 1e-6:
        raise DebugAtlasError(f"`counts[{k}].{name}={value!r}` must be a count in [0, n={n}].")
    return int(round(value))


def counts_of(result) -> TrialCounts:
    """TrialCounts of a candidate `PatchResult` (per image: rate x n_images, rounded)."""
    n = int(result.n_images)

    def per_image(rate):
        return None if rate is None or rate != rate else round(float(rate) * n)

    return TrialCounts(per_image(result.flip_rate) or 0, n, per_image(result.noise_flip_rate),
                       per_image(result.natural_flip_rate))


def judge_evaluation(evaluation, family_size: int | None = None, alpha: float = 0.05, looks: int = 1):
    """A copy of a `PatchEvaluation` whose candidate results carry verdict, p_value and flip_rate_ci.

    Each placement is its own family (Holm over `family_size` candidates, default the number of
    distinct candidates in `evaluation`); controls get only their interval. `looks`: see `judge`.
    """
    results = list(evaluation.results)
    n_candidates = len({r.patch_id for r in results if not r.is_control})
    filled = {}
    for placement in evaluation.placements:
        idx = [i for i, r in enumerate(results) if r.placement == placement and not r.is_control]
        judged = judge([counts_of(results[i]) for i in idx],
                       n_candidates if family_size is None else family_size, alpha, looks)
        for i, j in zip(idx, judged):
            filled[i] = replace(results[i], verdict=j.verdict, p_value=j.p_value, flip_rate_ci=j.flip_rate_ci)
    for i, r in enumerate(results):
        if i not in filled:
            n = int(r.n_images)
            x = 0 if r.flip_rate != r.flip_rate else round(r.flip_rate * n)
            filled[i] = replace(r, flip_rate_ci=wilson_interval(x, n, z_for_looks(looks)))
    return replace(evaluation, results=[filled[i] for i in range(len(results))])
