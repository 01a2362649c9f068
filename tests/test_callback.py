"""AtlasCallback inside a real Lightning Trainer: fit, validate, resume, sanity check, bad layer."""
from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from debugatlas import DebugAtlasError
from debugatlas.lightning import AtlasCallback, ClassifierModule
from debugatlas.models import SmallCNN

FAST = {"layout": "pca", "render": False, "patches": False, "grid_sizes": (10,), "grid_size": 10, "n_pairs": 1}


def _trainer(tmp_path, callback, epochs=2, **kw):
    return pl.Trainer(max_epochs=epochs, callbacks=[callback], default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_train_batches=5,
                      num_sanity_val_steps=1, **kw)


def _loaders(digits_data):
    train, val = digits_data
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64)


def _module():
    torch.manual_seed(0)
    return ClassifierModule(SmallCNN(1, 10, width=8))


def test_fit_writes_a_report_per_due_epoch_and_leaves_no_hooks(digits_data, tmp_path):
    callback = AtlasCallback("model.layer3", every_n_epochs=2, samples_per_image=2, **FAST)
    module = _module()
    _trainer(tmp_path, callback, epochs=4).fit(module, *_loaders(digits_data))
    assert sorted(p.name for p in (tmp_path / "atlas").iterdir()) == ["epoch_1", "epoch_3"]
    summary = json.loads((tmp_path / "atlas" / "epoch_3" / "summary.json").read_text())
    # The sanity check did not leak samples: exactly the validation set, twice per image.
    assert summary["num_samples"] == 2 * len(digits_data[1]) and summary["num_images"] == len(digits_data[1])
    assert summary["layer"] == "model.layer3"
    assert summary["config"]["samples_per_image"] == 2  # the capture settings the callback used
    assert all(not m._forward_hooks for m in module.modules())
    assert callback.state_dict() == {"last_epoch_analyzed": 3, "runs": callback.runs}


def test_validate_runs_inside_inference_mode(digits_data, tmp_path):
    callback = AtlasCallback("model.layer3", **FAST)
    module = _module()
    _trainer(tmp_path, callback).validate(module, _loaders(digits_data)[1])
    summary = json.loads((tmp_path / "atlas" / "epoch_0" / "summary.json").read_text())
    assert summary["pairs"] and summary["pairs"][0]["confusing_cells"]


def test_resume_restores_callback_state(digits_data, tmp_path):
    callback = AtlasCallback("model.layer3", **FAST)
    trainer = _trainer(tmp_path, callback, epochs=1)
    trainer.fit(_module(), *_loaders(digits_data))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = AtlasCallback("model.layer3", **FAST)
    _trainer(tmp_path, resumed, epochs=2).fit(_module(), *_loaders(digits_data), ckpt_path=ckpt)
    assert [r["epoch"] for r in resumed.runs] == [0, 1]
    assert resumed.last_epoch_analyzed == 1


def test_unknown_layer_fails_in_setup_with_closest_names(digits_data, tmp_path):
    callback = AtlasCallback("model.layer4", **FAST)
    with pytest.raises(DebugAtlasError, match=r"AtlasCallback\(layer='model.layer4'\).*model.layer3"):
        _trainer(tmp_path, callback).fit(_module(), *_loaders(digits_data))


def test_bad_arguments_fail_in_init():
    with pytest.raises(DebugAtlasError, match="every_n_epochs"):
        AtlasCallback("x", every_n_epochs=0)
    with pytest.raises(DebugAtlasError, match="Unknown analysis option"):
        AtlasCallback("x", grid=3)


def test_shuffled_validation_loader_is_refused(digits_data, tmp_path):
    callback = AtlasCallback("model.layer3", **FAST)
    val = DataLoader(digits_data[1], batch_size=64, shuffle=True)
    with pytest.raises(DebugAtlasError, match="shuffle=False"):
        _trainer(tmp_path, callback, epochs=1).fit(_module(), _loaders(digits_data)[0], val)


def test_images_and_metrics_reach_tensorboard(digits_data, tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = AtlasCallback("model.layer3", **FAST)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=5, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.fit(_module(), *_loaders(digits_data))
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert {"atlas/atlas_10", "atlas/pair0_comparison"} <= set(events.Tags()["images"])
    assert {"atlas/accuracy", "atlas/pair0_confused"} <= set(events.Tags()["scalars"])
    accuracy = events.Scalars("atlas/accuracy")[-1].value
    assert accuracy == pytest.approx(callback.last_result.summary["accuracy"], abs=1e-6)
