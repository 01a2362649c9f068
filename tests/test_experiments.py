"""The experiment scripts' plumbing: the ImageNet shark/baseball script end to end on a randomly
initialised GoogLeNet and generated images (no download), and the planted-trigger geometry helper."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
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
