"""Findings: confirmed patches grouped by cell, the best-supported cell first."""
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
    monkeypatch.setattr(findings, "shortcut_evidence", lambda *args, **kwargs: evidence)
    counts = np.zeros((20, 20), dtype=np.int64)
    counts[feature], counts[neighbour] = 9, 5
    atlas = SimpleNamespace(exemplars={feature: [0, 1], neighbour: [2]}, counts=counts)
    acts = SimpleNamespace(labels=torch.tensor([7, 7, 7]), image_ids=torch.tensor([10, 11, 12]))
    plan = PairPlan(1, 7, "1", "7", 3)
    out = findings.pair_findings(plan=plan, test=PairTest(suite=suite), atlas=atlas, acts=acts, field_fraction=0.1)
    assert [f.cell for f in out] == [feature, neighbour]
    assert out[0].patch == "c7-17-ctx5" and out[0].exemplar_ids == (10, 11)
    # equal support: more samples first; equal counts too: the selection half's order
    suite.patches = suite.patches[:2]
    out = findings.pair_findings(plan=plan, test=PairTest(suite=suite), atlas=atlas, acts=acts, field_fraction=0.1)
    assert [f.cell for f in out] == [feature, neighbour]
    counts[feature] = 5
    out = findings.pair_findings(plan=plan, test=PairTest(suite=suite), atlas=atlas, acts=acts, field_fraction=0.1)
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
    monkeypatch.setattr(findings, "shortcut_evidence", lambda *args, **kwargs: evidence)
    counts = np.zeros((8, 8), dtype=np.int64)
    atlas = SimpleNamespace(exemplars={real: [0], synthetic: [1]}, counts=counts)
    acts = SimpleNamespace(labels=torch.tensor([7, 7]), image_ids=torch.tensor([10, 11]))
    out = findings.pair_findings(plan=PairPlan(1, 7, "1", "7", 3), test=PairTest(suite=suite), atlas=atlas,
                                 acts=acts, field_fraction=0.1)
    by_cell = {f.cell: f for f in out}
    assert by_cell[real].confirmed_sources == ("exemplar", "in_context")
    assert by_cell[real].synthesized_only is False
    assert by_cell[synthetic].confirmed_sources == ("icon", "in_context")
    assert by_cell[synthetic].synthesized_only is True
    # the held-out half measured one real crop of each cell; only the first cell's beat the controls
    assert by_cell[real].real_crops_tested == 1 and by_cell[synthetic].real_crops_tested == 1
