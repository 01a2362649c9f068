"""Rendering after the package is first imported inside `torch.inference_mode()` (Lightning validation)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Run in a fresh interpreter: any earlier import in the test session would create the module-level
# tensors outside inference mode and hide the bug.
SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from torch import nn

    assert not any(m.startswith("debugatlas") for m in sys.modules)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1))
    with torch.inference_mode():
        from debugatlas.render import COLOR_MATRIX, FeatureInversion
        from debugatlas.render.param import decorrelate_colors
        from debugatlas.core import gradient_context
        with gradient_context(model):
            result = FeatureInversion(model, "2", (3, 16, 16), steps=3, seed=0).invert(torch.randn(2, 8))
    assert not COLOR_MATRIX.is_inference()
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    decorrelate_colors(x).sum().backward()
    icons = result.icons
    print("ICONS", "x".join(map(str, icons.shape)), bool(torch.isfinite(icons).all()),
          float(icons.min()), float(icons.max()))
""")


@pytest.mark.slow
def test_icons_render_when_first_imported_in_inference_mode():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("ICONS"))
    _, shape, finite, low, high = line.split()
    assert shape == "2x3x16x16" and finite == "True"
    assert 0.0 <= float(low) < float(high) <= 1.0


ANALYZE = textwrap.dedent("""
    import sys
    import torch
    from torch import nn

    assert not any(m.startswith("debugatlas") for m in sys.modules)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("layer1", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
    model.add_module("layer2", nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(8, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():                 # as in `trainer.validate`: data and package made here
        from debugatlas.data import TensorImageDataset
        from debugatlas.pipeline import analyze

        data = TensorImageDataset(torch.rand(30, 3, 16, 16), [i % 3 for i in range(30)], ["a", "b", "c"])
        result = analyze(model, data, "layer2", layout="pca", grid_size=4, grid_sizes=(4,), n_pairs=1,
                         n_examples=1, render_steps=4, render_cells=2, patch_cells=2, max_patch_images=10,
                         n_random=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    print("RUN", result.summary["num_samples"], len(result.pairs), len(result.pairs[0].icons))
""")


@pytest.mark.slow
def test_analyze_with_icons_and_patches_inside_inference_mode_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-c", ANALYZE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, samples, pairs, icons = next(l for l in done.stdout.splitlines() if l.startswith("RUN")).split()
    assert int(samples) > 30 and pairs == "1" and int(icons) >= 1
