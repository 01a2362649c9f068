"""The small seeded run whose summary.json is stored in tests/data/expected_summary.json.

The model is not retrained by the tests: a model trained on one CPU is another model on another
(other kernels, other rounding), and every number after it moves. Its weights are shipped in
`tests/data/golden_cnn.pt` (SmallCNN(width=8), digits at 16 px, 4 epochs, seed 0).

    python tests/_golden.py --write   # the expected summary from the shipped weights (a deliberate
                                      # change of what a run finds; say why in the commit)
    python tests/_golden.py --train   # retrain the shipped weights (then --write as well)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
WEIGHTS = DATA / "golden_cnn.pt"
EXPECTED = DATA / "expected_summary.json"
OPTIONS = dict(samples_per_image=2, grid_size=10, grid_sizes=(10,), n_pairs=2, layout_epochs=50,
               filter_top_n=200, render_steps=16, patch_cells=4, crop_sizes=(4, 6), n_random=2,
               max_patch_images=40, min_count=2, n_exemplars=4, n_examples=2, top_cells=8, render_cells=8,
               choosing_precision="bfloat16")  # not "auto": the same choice on a CPU without native bfloat16


def golden_model():
    """SmallCNN(width=8) with the shipped weights, in eval mode."""
    from debugatlas.models import SmallCNN

    model = SmallCNN(1, 10, width=8)
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.eval()


def golden_data():
    """The 300 validation digits at 16 px the golden run analyses."""
    from torch.utils.data import Subset

    from debugatlas.data import digits

    _, val = digits(size=16, seed=0)
    data = Subset(val, range(300))
    data.classes = val.classes
    return data


def golden_run(out_dir=None, **changes):
    """Analyse the 300 golden digits with the shipped model at layer3 (`changes` override OPTIONS)."""
    from debugatlas import analyze

    return analyze(golden_model(), golden_data(), "layer3", out_dir=out_dir, seed=0, **{**OPTIONS, **changes})


def _train() -> None:
    from debugatlas.data import digits
    from debugatlas.models import SmallCNN, train_classifier

    train, _ = digits(size=16, seed=0)
    torch.manual_seed(0)
    model = train_classifier(SmallCNN(1, 10, width=8), train, epochs=4, lr=3e-3, seed=0)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, WEIGHTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", action="store_true", help="retrain the shipped weights")
    parser.add_argument("--write", action="store_true", help="write the expected summary")
    args = parser.parse_args()
    if args.train:
        _train()
        print(f"written {WEIGHTS}")
    if args.write:
        EXPECTED.write_text(json.dumps(golden_run().summary, indent=1, sort_keys=True) + "\n")
        print(f"written {EXPECTED}")


if __name__ == "__main__":
    main()
