"""Wilson intervals, the one-sided Fisher test, Holm adjustment and patch verdicts."""
from __future__ import annotations

import json
import math

import pytest
import scipy.stats

from debugatlas.core import DebugAtlasError
from debugatlas.patches.stats import (
    TrialCounts, fisher_greater, holm, judge, judge_evaluation, wilson_interval,
)
from debugatlas.patches.types import PatchEvaluation, PatchResult


def test_wilson_hand_computed():
    # z = 1.96: 8/20 -> centre (0.4 + z^2/40) / (1 + z^2/20) = 0.41611, half 0.19731
    assert wilson_interval(8, 20) == pytest.approx((0.21881, 0.61342), abs=1e-5)
    # 0/10 -> hi = (z^2/20) / (1 + z^2/10) * 2 = 0.27753; 10/10 mirrors it
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(41, 100)
    assert lo < 0.41 < hi and hi - lo < wilson_interval(4.1, 10)[1] - wilson_interval(4.1, 10)[0]
    with pytest.raises(DebugAtlasError, match="successes"):
        wilson_interval(11, 10)


@pytest.mark.parametrize("x,n1,y,n2", [(8, 20, 2, 20), (3, 3, 0, 3), (5, 40, 5, 40), (0, 10, 4, 10),
                                       (30, 100, 10, 100), (7, 12, 1, 15)])
def test_fisher_matches_scipy(x, n1, y, n2):
    expected = scipy.stats.fisher_exact([[x, n1 - x], [y, n2 - y]], alternative="greater").pvalue
    assert fisher_greater(x, n1, y, n2) == pytest.approx(min(1.0, expected), rel=1e-9)


def test_fisher_hand_computed():
    # 3/3 against 0/3: only one of the C(6, 3) = 20 equally likely splits is as extreme
    assert fisher_greater(3, 3, 0, 3) == pytest.approx(1 / 20)
    assert fisher_greater(3, 3, 3, 3) == 1.0 and fisher_greater(0, 5, 0, 5) == 1.0


def test_holm_hand_computed():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # five screened, two listed: multipliers 5 and 4
    assert holm([0.002, 0.02], m=5) == pytest.approx([0.01, 0.08])
    assert holm([0.5, 0.6], m=4) == [1.0, 1.0]
    with pytest.raises(DebugAtlasError, match="smaller"):
        holm([0.1, 0.2], m=1)


def test_verdicts():
    trigger = TrialCounts(flips=40, n=50, noise_flips=2, natural_flips=3)
    like_b = TrialCounts(flips=30, n=50, noise_flips=1, natural_flips=30)   # equal to its natural crop
    nothing = TrialCounts(flips=2, n=50, noise_flips=2, natural_flips=3)
    big_square = TrialCounts(flips=50, n=50, noise_flips=50, natural_flips=50)
    no_natural = TrialCounts(flips=40, n=50, noise_flips=2, natural_flips=None)
    judged = judge([trigger, like_b, nothing, big_square, no_natural], family_size=300)
    assert [j.verdict for j in judged] == ["confirmed", "natural", "not_confirmed", "not_confirmed", "not_confirmed"]
    raw = max(fisher_greater(40, 50, 2, 50), fisher_greater(40, 50, 3, 50))
    assert judged[0].p_value == pytest.approx(min(1.0, 300 * raw))
    assert judged[0].flip_rate_ci == pytest.approx(wilson_interval(40, 50))
    assert judged[3].p_value == 1.0 and judged[1].p_natural == pytest.approx(fisher_greater(30, 50, 30, 50))


def test_correction_decides_a_borderline_candidate():
    c = TrialCounts(flips=12, n=30, noise_flips=2, natural_flips=2)
    raw = fisher_greater(12, 30, 2, 30)
    assert 1e-4 < raw < 0.01
    assert judge([c])[0].verdict == "confirmed"
    assert judge([c], family_size=int(math.ceil(0.05 / raw)) + 1)[0].verdict == "not_confirmed"


def test_tiny_samples_are_not_confirmed():
    # three images, all flipped, noise none: p = 1/20 before any correction
    assert judge([TrialCounts(3, 3, 0, 0)], family_size=2)[0].verdict == "not_confirmed"
    nothing = judge([TrialCounts(0, 0, 0, 0)])[0]
    assert nothing.verdict == "not_confirmed" and nothing.flip_rate_ci == (0.0, 1.0)


def test_judge_bad_inputs():
    with pytest.raises(DebugAtlasError, match="family_size"):
        judge([TrialCounts(1, 5, 0, 0)] * 3, family_size=2)
    with pytest.raises(DebugAtlasError, match="noise_flips"):
        judge([TrialCounts(1, 5, 7, 0)])
    with pytest.raises(DebugAtlasError, match="alpha"):
        judge([], alpha=1.5)


def _result(pid, source, placement, rate, noise=None, natural=None, n=40):
    return PatchResult(pid, source, None if source in ("noise", "natural") else (1, 2), True, "resized",
                       placement, n, rate, rate, 0.1, 0.2, 0.25, (0.25, 0, 0), noise, natural)


def test_judge_evaluation_fills_results_and_round_trips():
    results = [_result("trig", "icon", "random", 0.8, 0.05, 0.1), _result("trig", "icon", "static", 0.1, 0.05, 0.1),
               _result("noise-resized", "noise", "random", 0.05), _result("natural-resized", "natural", "random", 0.1),
               _result("noise-resized", "noise", "static", 0.05), _result("natural-resized", "natural", "static", 0.1)]
    ev = PatchEvaluation(0, 1, 40, 50, (0.25,), ("static", "random"), 4, 0, results)
    judged = judge_evaluation(ev, family_size=10)
    assert ev.results[0].verdict is None  # the input is left as it was
    trig = judged.get("trig", "random")
    assert trig.verdict == "confirmed" and trig.flips == 32
    assert trig.flip_rate_ci == pytest.approx(wilson_interval(32, 40))
    assert judged.get("trig", "static").verdict == "not_confirmed"
    noise = judged.get("noise-resized", "random")
    assert noise.verdict is None and noise.flip_rate_ci == pytest.approx(wilson_interval(2, 40))
    back = PatchEvaluation.from_dict(json.loads(json.dumps(judged.to_dict())))
    assert back.get("trig", "random") == trig
    unjudged = {k: v for k, v in trig.to_dict().items() if k not in ("verdict", "p_value", "flip_rate_ci")}
    assert PatchResult.from_dict(unjudged).verdict is None  # results saved without verdicts load
