"""The small seeded run whose summary.json is stored in tests/data/expected_summary.json."""
from __future__ import annotations

import torch

OPTIONS = dict(samples_per_image=2, grid_size=10, grid_sizes=(10,), n_pairs=2, layout_epochs=50,
               filter_top_n=200, render_steps=16, patch_cells=4, crop_sizes=(4, 6), n_random=2,
               max_patch_images=40, min_count=2, n_exemplars=4, n_examples=2, top_cells=8, render_cells=8,
               choosing_precision="bfloat16")  # not "auto": the same choice on a CPU without native bfloat16


def golden_run(out_dir=None):
    """Train SmallCNN(width=8) on the digits for 4 epochs, analyse 300 validation digits at layer3."""
    from torch.utils.data import Subset

    from debugatlas import analyze
    from debugatlas.data import digits
    from debugatlas.models import SmallCNN, train_classifier

    train, val = digits(size=16, seed=0)
    torch.manual_seed(0)
    model = train_classifier(SmallCNN(1, 10, width=8), train, epochs=4, lr=3e-3, seed=0)
    data = Subset(val, range(300))
    data.classes = val.classes
    return analyze(model, data, "layer3", out_dir=out_dir, seed=0, **OPTIONS)
