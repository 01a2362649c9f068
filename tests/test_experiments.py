"""The experiment scripts' plumbing: the ImageNet shark/baseball script end to end on a randomly
initialised GoogLeNet and generated images (no download), the planted-trigger geometry helper,
RESULTS.md rebuilt from a run directory, and the trainer's time limit."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _load(name: str):
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        spec = importlib.util.spec_from_file_location(f"_exp_{name}", EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXPERIMENTS))


@pytest.mark.slow
def test_imagenet_plumbing_mode_runs_end_to_end(tmp_path):
    script = _load("imagenet_shark_baseball")
    out = tmp_path / "run"
    code = script.main(["--random-init", "--generated", "--image-size", "64", "--per-class", "4", "--quick",
                        "--out", str(out), "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["baseball", "great white shark", "grey whale"]
    assert [(p["a"], p["b"]) for p in summary["pairs"]] == [("baseball", "great white shark")]
    assert summary["layer"] == "model.inception4d"
    table = json.loads((out / "paper_table.json").read_text())
    assert set(table) == {"baseball → great white shark", "grey whale → great white shark"}
    assert "Plumbing run" in (out / "RESULTS.md").read_text()
    assert (out / "index.html").exists()


def test_three_class_head_selects_imagenet_logits():
    script = _load("imagenet_shark_baseball")
    inner = torch.nn.Linear(4, 1000)
    head = script.ClassSubset(inner, [429, 2, 147])
    x = torch.randn(2, 4)
    assert torch.equal(head(x), inner(x)[:, [429, 2, 147]])


def test_trigger_box_matches_planted_shortcut():
    from debugatlas.data import PlantedShortcut

    script = _load("planted_shortcut")
    for trigger in ("checker", "cross"):
        shortcut = PlantedShortcut(target=0, fraction=1.0, size=5, trigger=trigger, seed=3)
        for index in range(20):
            pasted = shortcut.apply(torch.full((3, 32, 32), 0.5), index)
            r0, r1, c0, c1 = script.trigger_box(shortcut, index, 32, 32)
            changed = np.argwhere((pasted != 0.5).any(0).numpy())
            assert changed[:, 0].min() >= r0 and changed[:, 0].max() < r1
            assert changed[:, 1].min() >= c0 and changed[:, 1].max() < c1


def test_cifar10_results_rebuild_from_a_run_directory(tmp_path, trained_cnn, digits_data, capsys):
    from debugatlas import analyze

    out = tmp_path / "run"
    analyze(trained_cnn, digits_data[1], "layer3", pairs="auto", out_dir=out, seed=0, layout="pca", grid_size=8,
            grid_sizes=(8,), render_steps=4, n_pairs=1, patch_cells=3, max_patch_images=16, n_random=2,
            n_examples=1)
    script = _load("cifar10")
    assert script.main(["--from-run", str(out), "--note", "Device: test"]) == 0
    text = (out / "RESULTS.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    pair = summary["pairs"][0]
    assert f"### {pair['a']} → {pair['b']}" in text and "- Device: test" in text
    from debugatlas.artifacts.paths import SUITE_FILE, suite_dir

    meta = json.loads((out / suite_dir(0) / SUITE_FILE).read_text())["metadata"]
    assert 3 <= len(meta["candidate_cells"])  # the best-screened cells, then the purest islands of B
    assert f"Candidate cells tried: {len(meta['candidate_cells'])};" in text  # read back from that metadata
    assert script.main(["--from-run", str(tmp_path / "missing")]) == 2
    assert "summary.json does not exist" in capsys.readouterr().err


def test_train_classifier_stops_at_the_time_limit_and_keeps_a_history(digits_data):
    from debugatlas.models import SmallCNN, train_classifier

    history: list[dict] = []
    train_classifier(SmallCNN(1, 10, width=4), digits_data[0], epochs=5, seed=0, max_seconds=0.0, history=history)
    assert [h["epoch"] for h in history] == [1]  # the first epoch ends past 0 s
    assert history[0]["loss"] > 0 and history[0]["seconds"] > 0
