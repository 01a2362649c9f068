"""Ground truth: on digits with a planted trigger in the 7s, analyze() finds a patch that flips
other classes to 7 far above the noise control, without being told the trigger, and its top
finding for each pair is the trigger (most of its exemplars contain it) flagged as a suspected
shortcut; the same checks fail on a model trained without it, where nothing is flagged.

The two models are not retrained by the tests: a model trained on one CPU is another model on
another (other kernels, other rounding), and whether a ground truth holds moves with it. Their
weights are shipped in tests/data (SmallCNN(width=16), digits at 24 px, 10 epochs; the planted one
the first seed whose model learned the trigger and not any square of its size):

    python tests/test_ground_truth.py --train   # retrain both (a deliberate change: say why)
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _planted import pasted_flip_rate, train_until_learned

from debugatlas import analyze
from debugatlas.data import PlantedShortcut, digits
from debugatlas.models import SmallCNN, train_classifier

pytestmark = pytest.mark.slow  # full analyses

DATA = Path(__file__).parent / "data"
PLANTED_WEIGHTS, CLEAN_WEIGHTS = DATA / "ground_truth_planted.pt", DATA / "ground_truth_clean.pt"

TRIGGER = PlantedShortcut(target=7, fraction=1.0, size=5, trigger="cross", seed=0)
PAIRS = [("1", "7"), ("4", "7")]
OPTIONS = {"samples_per_image": 2, "grid_size": 20, "grid_sizes": (20,), "render_steps": 64, "patch_cells": 12,
           "crop_sizes": (4, 6, 8), "n_random": 4, "max_patch_images": 48, "min_count": 2, "filter_top_n": 400,
           "layout_epochs": 200, "n_examples": 1,
           # 24 px digits: at 0.35 of the side (8 px) a noise square alone flips 92-99 % of a planted
           # model's 1s and 4s, so no patch of that size can beat its control; 5-6 px squares can
           "patch_sizes": (0.2, 0.25)}
# Held-out rates of the top confirmed finding per pair (planted model, seed 0, 16-25 images of A per
# half): 1->7 100 % against 31 % noise and 12 % natural; 4->7 68 % against 20 % and 24 %.
MIN_FLIP, MIN_LIFT = 0.6, 0.1
# Attribution-guided capture: half of each image's positions where attribution is highest.
GUIDED = {"sampling": "guided", "samples_per_image": 4}
MIN_TRIGGER_SHARE = 0.5  # the bar: at least half of the top finding's exemplars contain the trigger


def _train_clean():
    """The planted model's recipe on the same digits without the trigger."""
    train, _ = digits(size=24)
    torch.manual_seed(0)  # the initial weights too
    return train_classifier(SmallCNN(1, 10, width=16), train, epochs=10, lr=3e-3, batch_size=32, seed=0)


def _train_planted(analysis_data):
    train, _ = digits(size=24, shortcut=TRIGGER)
    return train_until_learned(lambda: SmallCNN(1, 10, width=16), train, TRIGGER, analysis_data, offset=10_000,
                               seeds=range(5), max_noise=0.1, epochs=10, lr=3e-3, batch_size=32)


def _shipped(path: Path):
    model = SmallCNN(1, 10, width=16)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _clean_model():
    return _shipped(CLEAN_WEIGHTS)


@pytest.fixture(scope="module")
def analysis_data():
    """Validation images drawn from the same poisoned source: the data a user would analyse."""
    return digits(size=24, shortcut=TRIGGER, poison_val=True)[1]


@pytest.fixture(scope="module")
def planted_model(analysis_data):
    return _shipped(PLANTED_WEIGHTS)


def _analysis(model, data):
    return analyze(model, data, "layer2", pairs=PAIRS, seed=0, **{**OPTIONS, **GUIDED})


@pytest.fixture(scope="module")
def planted_result(planted_model, analysis_data):
    return _analysis(planted_model, analysis_data)


@pytest.fixture(scope="module")
def clean_result(analysis_data):
    clean = _clean_model()
    return clean, _analysis(clean, analysis_data)


def _experiment():
    """experiments/planted_shortcut.py, for its ground-truth geometry (`trigger_in_field`)."""
    folder = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("_planted_shortcut", folder / "planted_shortcut.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


def _top_finding_shares(result, model, data) -> list[tuple[str, float, int]]:
    """Per pair: (pair, share of the top finding's exemplars that contain the trigger, exemplars)."""
    script = _experiment()
    atlas = result.atlases[result.config.grid_size]
    out = []
    for pair in result.summary["pairs"]:
        findings = pair.get("findings") or []
        name = f"{pair['a']}->{pair['b']}"
        if not findings:
            out.append((name, 0.0, 0))
            continue
        samples = atlas.exemplars.get(tuple(findings[0]["cell"]), [])
        hit = script.trigger_in_field(model, "layer2", data, result.activations, TRIGGER, samples) if samples else []
        out.append((name, float(sum(hit)) / len(samples) if samples else 0.0, len(samples)))
    return out


def _top_findings(result) -> list[tuple[str, dict | None]]:
    return [(f"{p['a']}->{p['b']}", (p.get("findings") or [None])[0]) for p in result.summary["pairs"]]


def test_planted_trigger_is_found_without_being_told(planted_result):
    """Every (other class -> 7) pair has a confirmed finding: held out, far above both controls."""
    for name, top in _top_findings(planted_result):
        assert top is not None, f"{name}: nothing confirmed"
        controls = max(top["noise_flip_rate"], top["natural_flip_rate"])
        assert top["flip_rate"] >= MIN_FLIP and top["flip_rate"] - controls >= MIN_LIFT, f"{name}: {top['statement']}"


def test_planted_trigger_is_the_top_finding(planted_result, planted_model, analysis_data):
    """The top finding of every (other class -> 7) pair is the trigger: most of its exemplars contain it
    (poisoned image, trigger inside the sample's receptive field and near its position), and it is
    flagged as a suspected shortcut."""
    shares = _top_finding_shares(planted_result, planted_model, analysis_data)
    assert all(share >= MIN_TRIGGER_SHARE for _, share, _ in shares), f"top findings' trigger shares: {shares}"
    flagged = [bool((p.get("findings") or [{}])[0].get("suspected_shortcut")) for p in planted_result.summary["pairs"]]
    assert all(flagged), f"top findings flagged as suspected shortcuts: {flagged}"


def test_the_trigger_is_one_finding_over_several_cells(planted_result, planted_model, analysis_data):
    """The trigger spreads over several confirmed cells of each pair; they are one finding, the top
    one and flagged: no other finding of the pair has exemplars that mostly contain the trigger."""
    script = _experiment()
    atlas = planted_result.atlases[planted_result.config.grid_size]
    for pair in planted_result.summary["pairs"]:
        name, carrying, cells = f"{pair['a']}->{pair['b']}", [], 0
        for finding in pair.get("findings") or []:
            per_cell = [atlas.exemplars.get(tuple(c["cell"]), []) for c in finding["cells"]]
            hits = [script.trigger_in_field(planted_model, "layer2", analysis_data, planted_result.activations,
                                            TRIGGER, samples) if samples else np.zeros(0, bool) for samples in per_cell]
            cells += sum(bool(len(h)) and float(h.mean()) >= MIN_TRIGGER_SHARE for h in hits)
            every = np.concatenate(hits)
            carrying.append(bool(every.size) and float(every.mean()) >= MIN_TRIGGER_SHARE)
        assert cells >= 2, f"{name}: the trigger is in {cells} confirmed cell(s), no case for grouping"
        assert carrying[:1] == [True] and sum(carrying) == 1, f"{name}: findings carrying the trigger {carrying}"
        assert pair["findings"][0]["suspected_shortcut"], f"{name}: the trigger's finding is not flagged"


def test_same_check_fails_on_a_clean_model(analysis_data, clean_result):
    clean, result = clean_result
    assert pasted_flip_rate(clean, TRIGGER, analysis_data, offset=10_000) < 0.2
    passing = [(name, top["statement"]) for name, top in _top_findings(result) if top is not None
               and top["flip_rate"] >= MIN_FLIP
               and top["flip_rate"] - max(top["noise_flip_rate"], top["natural_flip_rate"]) >= MIN_LIFT]
    assert len(passing) < len(result.summary["pairs"]), f"a clean model passed the ground-truth check: {passing}"


def test_nothing_is_flagged_on_a_clean_model(clean_result):
    _, result = clean_result
    flagged = [(p["a"], f["cell"]) for p in result.summary["pairs"] for f in (p.get("findings") or [])
               if f.get("suspected_shortcut")]
    assert not flagged, f"a clean model has findings flagged as suspected shortcuts: {flagged}"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="retrain the shipped ground-truth models")
    parser.add_argument("--train", action="store_true", required=True)
    parser.parse_args()
    data = digits(size=24, shortcut=TRIGGER, poison_val=True)[1]
    torch.save(_train_planted(data).state_dict(), PLANTED_WEIGHTS)
    torch.save(_train_clean().state_dict(), CLEAN_WEIGHTS)
    print(f"wrote {PLANTED_WEIGHTS} and {CLEAN_WEIGHTS}")
