"""Train the demo's digits CNNs once and ship their weights in `debugatlas/weights/`.

`debugatlas demo` analyses these weights, so it shows the same pairs and findings on every machine;
a model trained on a CPU is another model on another CPU. Each scenario is trained exactly as
`debugatlas demo --train` trains it (8 epochs with the callback, seed 0) and its state_dict saved.

    .venv/bin/python experiments/train_demo_model.py            # both scenarios
    .venv/bin/python experiments/train_demo_model.py --scenario natural
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from debugatlas.demo import demo_weights, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", nargs="+", default=["natural", "shortcut"], choices=["natural", "shortcut"])
    args = parser.parse_args()
    for scenario in args.scenario:
        with tempfile.TemporaryDirectory() as out:
            result = run_demo(Path(out), scenario=scenario, train=True)
            state = torch.load(Path(out) / "model.pt", map_location="cpu", weights_only=True)
        path = demo_weights(scenario)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.contiguous() for k, v in state.items()}, path)
        print(f"{scenario}: accuracy {result.summary['accuracy']:.3f}, written {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
