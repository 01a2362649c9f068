"""Rendering after the package is first imported inside `torch.inference_mode()` (Lightning validation)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

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


def test_icons_render_when_first_imported_in_inference_mode():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("ICONS"))
    _, shape, finite, low, high = line.split()
    assert shape == "2x3x16x16" and finite == "True"
    assert 0.0 <= float(low) < float(high) <= 1.0
