"""Findings: confirmed patches grouped by cell, the best-supported cell first, and cells grouped into features."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from debugatlas.patches import Patch, PatchResult
from debugatlas.pipeline import findings
from debugatlas.pipeline.records import PairPlan, PairTest


def _result(pid, source, cell, rate, verdict):
    r = PatchResult(pid, source, cell, False, "native-5x5", "random", 40, rate, rate, 0.1, 0.5, 0.2, (0.2, 0, 0),
                    noise_flip_rate=0.05, natural_flip_rate=0.1)
    r.verdict, r.flip_rate_ci, r.p_value = verdict, (rate - 0.1, rate + 0.05), 0.001
    return r


def _atlas(exemplars: dict, counts: np.ndarray, directions: dict | None = None, mixes: dict | None = None,
           cells: dict | None = None):
    """An atlas stand-in: each cell its own direction and class mix unless given; its valid cells
    are the cells with samples, and `cells` ({cell: class mix}) adds cells that hold no finding."""
    g = counts.shape[0]
    means = np.zeros((g, g, 16), dtype=np.float32)
    hist = np.zeros((g, g, 10), dtype=np.int64)
    for k, cell in enumerate(exemplars):
        means[cell] = (directions or {}).get(cell, np.eye(16, dtype=np.float32)[k % 16])
        hist[cell] = (mixes or {}).get(cell, np.eye(10, dtype=np.int64)[k % 10] * 5)
    for cell, mix in (cells or {}).items():
        hist[cell], counts[cell] = mix, int(np.sum(mix))
    return SimpleNamespace(exemplars=exemplars, counts=counts, mean_activation=means, class_histogram=hist,
                           valid=counts > 0)


def test_the_cell_that_holds_most_kept_patches_comes_first_whatever_one_patch_ranked(monkeypatch):
    """An optimised patch from a cell next to a feature can flip as well as the feature's own; the
    feature's cell is the one whose real exemplars and icon crops the selection half kept too."""
    neighbour, feature = (8, 18), (7, 17)
    kept = [("c8-18-ctx5", "in_context", neighbour), ("c7-17-ctx5", "in_context", feature),
            ("c7-17-ex3", "exemplar", feature), ("c7-17-crop6r", "icon_crop", feature)]
    suite = SimpleNamespace(
        patches=[Patch(pid, cell, source, torch.zeros(1, 5, 5), resize=False) for pid, source, cell in kept],
        baseline=SimpleNamespace(results=[_result("c8-18-ctx5", "in_context", neighbour, 0.91, "confirmed"),
                                          _result("c7-17-ctx5", "in_context", feature, 0.91, "confirmed"),
                                          _result("c7-17-ex3", "exemplar", feature, 1.0, "natural"),
                                          _result("c7-17-crop6r", "icon_crop", feature, 0.48, "not_confirmed")]))
    evidence = SimpleNamespace(suspected=False, to_dict=lambda: {})
    monkeypatch.setattr(findings, "feature_evidence", lambda *args, **kwargs: evidence)
    counts = np.zeros((20, 20), dtype=np.int64)
    counts[feature], counts[neighbour] = 9, 5
    atlas = _atlas({feature: [0, 1], neighbour: [2]}, counts)
    # the neighbour's exemplar is of another class: a different thing beside the feature
    acts = SimpleNamespace(labels=torch.tensor([7, 7, 1]), image_ids=torch.tensor([10, 11, 12]), positions=None,
                           spatial_shape=None)
    plan = PairPlan(1, 7, "1", "7", 3)
    out = findings.pair_findings(plan=plan, test=PairTest(suite=suite), atlas=atlas, acts=acts)
    assert [f.cell for f in out] == [feature, neighbour]
    assert out[0].patch == "c7-17-ctx5" and out[0].exemplar_ids == (10, 11)
    # equal support: more samples first; equal counts too: the selection half's order
    suite.patches = suite.patches[:2]
    out = findings.pair_findings(plan=plan, test=PairTest(suite=suite), atlas=atlas, acts=acts)
    assert [f.cell for f in out] == [feature, neighbour]
    counts[feature] = 5
    out = findings.pair_findings(plan=plan, test=PairTest(suite=suite), atlas=atlas, acts=acts)
    assert [f.cell for f in out] == [neighbour, feature]
    assert np.isclose(out[0].flip_rate, 0.91)


def test_a_cell_whose_real_crops_flip_too_is_not_synthesized_only(monkeypatch):
    real, synthetic = (3, 4), (5, 6)
    kept = [("c3-4-ctx5", "in_context", real), ("c3-4-ex0", "exemplar", real),
            ("c5-6-ctx5", "in_context", synthetic), ("c5-6-icon", "icon", synthetic),
            ("c5-6-ex1", "exemplar", synthetic)]
    results = [_result("c3-4-ctx5", "in_context", real, 0.9, "confirmed"),
               _result("c3-4-ex0", "exemplar", real, 0.6, "confirmed"),
               _result("c5-6-ctx5", "in_context", synthetic, 0.8, "confirmed"),
               _result("c5-6-icon", "icon", synthetic, 0.5, "confirmed"),
               _result("c5-6-ex1", "exemplar", synthetic, 0.3, "natural")]  # a real crop, not confirmed
    suite = SimpleNamespace(patches=[Patch(pid, cell, source, torch.zeros(1, 5, 5), resize=False)
                                     for pid, source, cell in kept],
                            baseline=SimpleNamespace(results=results))
    evidence = SimpleNamespace(suspected=False, to_dict=lambda: {})
    monkeypatch.setattr(findings, "feature_evidence", lambda *args, **kwargs: evidence)
    counts = np.zeros((8, 8), dtype=np.int64)
    atlas = _atlas({real: [0], synthetic: [1]}, counts)
    acts = SimpleNamespace(labels=torch.tensor([7, 7]), image_ids=torch.tensor([10, 11]), positions=None, spatial_shape=None)
    out = findings.pair_findings(plan=PairPlan(1, 7, "1", "7", 3), test=PairTest(suite=suite), atlas=atlas,
                                 acts=acts)
    by_cell = {f.cell: f for f in out}
    assert by_cell[real].confirmed_sources == ("exemplar", "in_context")
    assert by_cell[real].synthesized_only is False
    assert by_cell[synthetic].confirmed_sources == ("icon", "in_context")
    assert by_cell[synthetic].synthesized_only is True
    # the held-out half measured one real crop of each cell; only the first cell's beat the controls
    assert by_cell[real].real_crops_tested == 1 and by_cell[synthetic].real_crops_tested == 1


def _grouped(cells_and_rates, exemplars, directions, mixes=None, labels=None, cells=None):
    """pair_findings on confirmed icon patches of the given cells (ranked in the listed order);
    `labels`: the class of each of the 20 samples (default: all 7)."""
    kept = [(f"c{c[0]}-{c[1]}-icon", "icon", c) for c, _ in cells_and_rates]
    results = [_result(pid, source, cell, rate, "confirmed") for (pid, source, cell), (_, rate) in zip(kept, cells_and_rates)]
    suite = SimpleNamespace(patches=[Patch(pid, cell, source, torch.zeros(1, 5, 5), resize=False)
                                     for pid, source, cell in kept], baseline=SimpleNamespace(results=results))
    counts = np.zeros((10, 10), dtype=np.int64)
    for k, (c, _) in enumerate(cells_and_rates):
        counts[c] = 20 - k  # the listed order is the ranked order
    atlas = _atlas(exemplars, counts, directions, mixes, cells)
    acts = SimpleNamespace(labels=torch.full((20,), 7) if labels is None else torch.as_tensor(labels),
                           image_ids=torch.arange(100, 120), positions=None, spatial_shape=None)
    return findings.pair_findings(plan=PairPlan(1, 7, "1", "7", 3), test=PairTest(suite=suite), atlas=atlas,
                                  acts=acts)


def _direction(*weights):
    out = np.zeros(16, dtype=np.float32)
    out[:len(weights)] = weights
    return out


def test_one_feature_over_several_cells_is_one_finding(monkeypatch):
    evidence = SimpleNamespace(suspected=False, to_dict=lambda: {})
    monkeypatch.setattr(findings, "feature_evidence", lambda *args, **kwargs: evidence)
    a, b, c, other = (2, 2), (2, 3), (7, 7), (5, 0)
    out = _grouped([(a, 0.8), (b, 0.7), (other, 0.6), (c, 0.5)],
                   {a: [0, 1], b: [2, 3], c: [4], other: [5, 6]},
                   {a: _direction(1, 0.1), b: _direction(1, 0.2), c: _direction(0.9, 0.1), other: _direction(0, 0, 1)})
    # a, b and c point the same way (two adjacent, one apart): one feature led by a; `other` stays apart
    assert [f.cell for f in out] == [a, other]
    assert [m.cell for m in out[0].cells] == [a, b, c] and [m.flip_rate for m in out[0].cells] == [0.8, 0.7, 0.5]
    assert out[0].flip_rate == 0.8 and out[0].patch == "c2-2-icon"  # the leader's patch and held-out rate
    assert out[0].exemplar_ids == (100, 101, 102, 103, 104) and out[1].exemplar_ids == (105, 106)


def test_shared_images_or_one_island_of_the_same_mix_join_a_feature_and_distinct_ones_stay_apart(monkeypatch):
    evidence = SimpleNamespace(suspected=False, to_dict=lambda: {})
    monkeypatch.setattr(findings, "feature_evidence", lambda *args, **kwargs: evidence)
    sevens = np.eye(10, dtype=np.int64)[7] * 9
    a, b, left, right = (1, 1), (8, 8), (4, 2), (4, 5)
    apart = {a: _direction(1), b: _direction(0, 1), left: _direction(0, 0, 1), right: _direction(0, 0, 0, 1)}
    exemplars = {a: [0, 1, 2], b: [1, 2, 9], left: [10], right: [11]}
    # a and b share two of three exemplar images; left and right point apart, touch no common cell,
    # and hold exemplars of the same class
    out = _grouped([(a, 0.9), (b, 0.8), (left, 0.7), (right, 0.6)], exemplars, apart, {left: sevens, right: sevens})
    assert [[m.cell for m in f.cells] for f in out] == [[a, b], [left], [right]]
    # two cells of 7s between them make one island of the same mix: left and right are one feature
    path = {(4, 3): sevens, (5, 4): sevens + np.eye(10, dtype=np.int64)[1]}
    out = _grouped([(left, 0.7), (right, 0.6)], exemplars, apart, {left: sevens, right: sevens}, cells=path)
    assert [[m.cell for m in f.cells] for f in out] == [[left, right]]
    # the same path through a cell of another mix, or ends whose exemplars are of other classes: apart
    other = {(4, 3): sevens, (5, 4): np.eye(10, dtype=np.int64)[1] * 9}
    out = _grouped([(left, 0.7), (right, 0.6)], exemplars, apart, {left: sevens, right: sevens}, cells=other)
    assert [f.cell for f in out] == [left, right]
    labels = [7] * 20
    labels[11] = 1  # right's exemplar is a 1
    out = _grouped([(left, 0.7), (right, 0.6)], exemplars, apart, {left: sevens, right: sevens}, labels=labels,
                   cells=path)
    assert [f.cell for f in out] == [left, right]


def _two_close_cells(kept, results) -> dict:
    """`pair_findings` arguments for pair 1 -> 7 with the patches `kept` [(id, source, cell)] and their
    held-out `results`, on two cells (2, 2) and (2, 3) of nearly the same direction, three 7s and a 1."""
    a, b = (2, 2), (2, 3)
    suite = SimpleNamespace(patches=[Patch(pid, cell, source, torch.zeros(1, 5, 5), resize=False)
                                     for pid, source, cell in kept], baseline=SimpleNamespace(results=results))
    counts = np.zeros((10, 10), dtype=np.int64)
    counts[a], counts[b] = 20, 19
    atlas = _atlas({a: [0, 1], b: [2, 3]}, counts, {a: _direction(1, 0.1), b: _direction(1, 0.2)})
    acts = SimpleNamespace(labels=torch.tensor([7, 7, 7, 1]), image_ids=torch.tensor([10, 11, 12, 13]),
                           positions=None, spatial_shape=None)
    return {"plan": PairPlan(1, 7, "1", "7", 3), "test": PairTest(suite=suite), "atlas": atlas, "acts": acts}


def test_a_feature_is_judged_over_all_its_cells_with_the_real_crops_of_every_one(monkeypatch):
    calls = []

    def judge(atlas, **kwargs):
        calls.append(kwargs)
        together = len(kwargs["cells"]) > 1
        return SimpleNamespace(suspected=together, to_dict=lambda: {"cells": [list(c) for c in kwargs["cells"]]})

    monkeypatch.setattr(findings, "feature_evidence", judge)
    a, b = (2, 2), (2, 3)
    kept = [("c2-2-icon", "icon", a), ("c2-3-icon", "icon", b), ("c2-3-ex0", "exemplar", b), ("c2-2-ex1", "exemplar", a)]
    results = [_result("c2-2-icon", "icon", a, 0.8, "confirmed"), _result("c2-3-icon", "icon", b, 0.7, "confirmed"),
               _result("c2-2-ex1", "exemplar", a, 0.6, "confirmed"),
               _result("c2-3-ex0", "exemplar", b, 0.5, "not_confirmed")]
    out = findings.pair_findings(**_two_close_cells(kept, results))
    # one feature, flagged on the evidence of both cells together; each cell judged alone is not
    assert len(out) == 1 and out[0].suspected_shortcut and out[0].shortcut_evidence == {"cells": [[2, 2], [2, 3]]}
    assert [m.suspected_shortcut for m in out[0].cells] == [False, False]
    together = next(c for c in calls if len(c["cells"]) == 2)
    # every real crop of its cells, in the selection half's order; the exemplar images' classes, one per image
    assert [r.patch_id for r in together["real"]] == ["c2-3-ex0", "c2-2-ex1"]
    assert sorted(together["exemplar_labels"]) == [1, 7, 7, 7] and together["b"] == 7


def test_a_feature_whose_union_misses_the_flag_is_flagged_on_a_cell_that_meets_it_alone(monkeypatch):
    """Where a feature meets the rest of the atlas its cells hold other classes' samples too and
    dilute the union's enrichment; one of its cells meeting the flag alone flags the feature, on
    that cell's evidence. No cell meeting it: no flag."""
    a, b = (2, 2), (2, 3)

    def judge_with(flagged):
        def judge(atlas, **kwargs):
            cells = [tuple(c) for c in kwargs["cells"]]
            hit = len(cells) == 1 and cells[0] in flagged
            return SimpleNamespace(suspected=hit, to_dict=lambda: {"cells": [list(c) for c in cells]})
        return judge

    kept = [("c2-2-icon", "icon", a), ("c2-3-icon", "icon", b)]
    results = [_result("c2-2-icon", "icon", a, 0.8, "confirmed"), _result("c2-3-icon", "icon", b, 0.7, "confirmed")]
    run = _two_close_cells(kept, results)
    monkeypatch.setattr(findings, "feature_evidence", judge_with({b}))
    (out,) = findings.pair_findings(**run)
    assert out.suspected_shortcut and out.shortcut_evidence == {"cells": [[2, 3]]}
    assert [m.suspected_shortcut for m in out.cells] == [False, True]
    monkeypatch.setattr(findings, "feature_evidence", judge_with(set()))
    (out,) = findings.pair_findings(**run)
    assert not out.suspected_shortcut and out.shortcut_evidence == {"cells": [[2, 2], [2, 3]]}
