"""AtlasCallback from a LightningCLI YAML config (jsonargparse), as the README shows it."""
from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from debugatlas.lightning import AtlasCallback, ClassifierModule
from debugatlas.models import SmallCNN

pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse[signatures] (in the dev extra)")

CONFIG = """\
seed_everything: 0
trainer:
  max_epochs: 1
  limit_train_batches: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: debugatlas.AtlasCallback
      init_args:
        layer: model.layer3
        pairs: [["3", "8"], ["8", "<b>"]]
        strict: true
        options: {{layout: pca, render: false, patches: false, grid_size: 8, grid_sizes: [8], samples_per_image: 2}}
model:
  width: 4
data:
  size: 16
"""


class TinyClassifier(ClassifierModule):
    """SmallCNN on 16 px digits, built from plain arguments as a YAML config gives them."""

    def __init__(self, width: int = 4, lr: float = 1e-2) -> None:
        torch.manual_seed(0)
        super().__init__(SmallCNN(1, 10, width=width), lr=lr)


class DigitsData(pl.LightningDataModule):
    def __init__(self, size: int = 16, batch_size: int = 64) -> None:
        super().__init__()
        self.size, self.batch_size = size, batch_size

    def setup(self, stage: str) -> None:
        from debugatlas.data import digits

        self.train, self.val = digits(size=self.size)
        self.val.classes = [str(k) for k in range(9)] + ["<b>"]  # a name that must be escaped

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=self.batch_size)


def test_callback_from_a_lightning_cli_yaml_config(tmp_path):
    from pytorch_lightning.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    cli = LightningCLI(TinyClassifier, DigitsData, args=["fit", "--config", str(config)],
                       save_config_kwargs={"overwrite": True})
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, AtlasCallback)]
    assert callback.pairs == (("3", "8"), ("8", "<b>")) and callback.analysis_options["grid_size"] == 8
    summary = json.loads((tmp_path / "atlas" / "epoch_0" / "summary.json").read_text())
    assert [(p["a"], p["b"]) for p in summary["pairs"]] == [("3", "8"), ("8", "<b>")]
    assert summary["config"]["samples_per_image"] == 2 and summary["num_samples"] == 2 * len(cli.datamodule.val)
    timeline = (tmp_path / "atlas" / "index.html").read_text()
    assert "8 → &lt;b&gt;" in timeline and "<b>" not in timeline


def test_a_bad_option_in_the_yaml_fails_with_the_valid_names(tmp_path, capsys):
    from pytorch_lightning.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(root=tmp_path).replace("grid_size: 8,", "grid: 8,"))
    with pytest.raises((SystemExit, Exception)) as info:
        LightningCLI(TinyClassifier, DigitsData, args=["--config", str(config)], run=False)
    said = str(info.value) + capsys.readouterr().err
    assert "Unknown analysis option(s) ['grid']" in said and "grid_size" in said
