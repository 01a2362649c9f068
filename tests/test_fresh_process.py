"""The callback as a user first runs it: in a fresh Python process, with nothing of debugatlas
imported before the trainer starts, so the lazily imported modules (render, report) are
first imported inside Lightning's inference mode (`trainer.validate`) or its validation loop
(`trainer.fit`), with rendering and patch tests on."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""\
    import json, sys, warnings
    warnings.filterwarnings("ignore")
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader
    from debugatlas.lightning import AtlasCallback, ClassifierModule
    from debugatlas.data import digits
    from debugatlas.models import SmallCNN

    lazy = [m for m in sys.modules if m.startswith(("debugatlas.render", "debugatlas.report"))]
    how, out = sys.argv[1], sys.argv[2]
    train, val = digits(size=16)
    torch.manual_seed(0)
    module = ClassifierModule(SmallCNN(1, 10, width=4))
    callback = AtlasCallback("model.layer3", strict=True, options=dict(
        layout="pca", grid_size=8, grid_sizes=(8,), n_pairs=1, render=True, render_steps=8, render_cells=4,
        top_cells=4, patches=True, patch_cells=2, n_random=1, max_patch_images=24))
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_train_batches=4,
                         limit_val_batches=2, num_sanity_val_steps=0, default_root_dir=out)
    loader = DataLoader(val, batch_size=64)
    if how == "validate":
        trainer.validate(module, loader, verbose=False)
    else:
        trainer.fit(module, DataLoader(train, batch_size=32, shuffle=True), loader)
    print(json.dumps({"lazy_before": lazy, "epochs": [r["epoch"] for r in callback.runs]}))
""")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["validate", "fit"])
def test_callback_in_a_fresh_process(how, tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, how, str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said == {"lazy_before": [], "epochs": [0]}  # nothing lazy was imported before the trainer ran
    summary = json.loads((tmp_path / "atlas" / "epoch_0" / "summary.json").read_text())
    assert summary["pairs"] and any(c.get("icon") for c in summary["pairs"][0]["confusing_cells"])
    assert (tmp_path / "atlas" / "epoch_0" / "index.html").is_file()
    assert (tmp_path / "atlas" / "index.html").is_file()
