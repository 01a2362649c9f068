"""The pipeline's findings on a small seeded run match the stored expected summary, field by field.

`tests/data/expected_summary.json` was written by `tests/_golden.py:golden_run()`; a deliberate change
of what a run finds regenerates it (and says why in the commit).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _golden import golden_run

pytestmark = pytest.mark.slow  # trains digit models / runs a full analysis

EXPECTED = Path(__file__).parent / "data" / "expected_summary.json"
RATE_TOL = 1e-6


@pytest.fixture(scope="module")
def runs():
    return json.loads(EXPECTED.read_text()), golden_run().summary


def test_same_images_predictions_and_pairs(runs):
    expected, got = runs
    for key in ("schema_version", "layer", "num_samples", "num_images", "classes", "confusion_matrix"):
        assert got[key] == expected[key], key
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    assert [(p["a"], p["b"], p["confused"]) for p in got["pairs"]] == \
        [(p["a"], p["b"], p["confused"]) for p in expected["pairs"]]


def test_same_ranked_cells(runs):
    expected, got = runs
    for want, have in zip(expected["pairs"], got["pairs"]):
        assert [c["cell"] for c in have["confusing_cells"]] == [c["cell"] for c in want["confusing_cells"]]
        for w, h in zip(want["confusing_cells"], have["confusing_cells"]):
            assert h["score"] == pytest.approx(w["score"], rel=1e-4, abs=1e-6)
            assert (h["count"], h["count_a"], h["exemplar_ids"]) == (w["count"], w["count_a"], w["exemplar_ids"])


def test_same_patch_rows(runs):
    expected, got = runs
    for want, have in zip(expected["pairs"], got["pairs"]):
        assert [(r["id"], r["placement"]) for r in have["patches"]] == [(r["id"], r["placement"]) for r in want["patches"]]
        for w, h in zip(want["patches"], have["patches"]):
            for key in ("flip_rate", "noise_flip_rate", "natural_flip_rate", "size_frac"):
                assert h[key] == pytest.approx(w[key], abs=RATE_TOL, nan_ok=True), (h["id"], key)
            assert (h["n_images"], h["cell"], h["file"]) == (w["n_images"], w["cell"], w["file"])
