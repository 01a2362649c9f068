"""AtlasCallback inside a real Lightning Trainer: fit, validate, resume, sanity check, bad layer,
state per layer, failures that do not stop training, the run's timeline and its default folder."""
from __future__ import annotations

import csv
import json
import logging
import re

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from debugatlas import DebugAtlasError
from debugatlas.lightning import AtlasCallback, ClassifierModule
from debugatlas.models import SmallCNN

FAST = {"layout": "pca", "render": False, "patches": False, "grid_sizes": (10,), "grid_size": 10, "n_pairs": 1}


def _trainer(tmp_path, callback, epochs=2, **kw):
    return pl.Trainer(max_epochs=epochs, callbacks=callback if isinstance(callback, list) else [callback], default_root_dir=tmp_path, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_train_batches=5,
                      num_sanity_val_steps=1, **kw)


def _loaders(digits_data):
    train, val = digits_data
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64)


def _module():
    torch.manual_seed(0)
    return ClassifierModule(SmallCNN(1, 10, width=8))


@pytest.mark.slow
def test_fit_writes_a_report_per_due_epoch_and_leaves_no_hooks(digits_data, tmp_path):
    callback = AtlasCallback("model.layer3", every_n_epochs=2, strict=True, options={**FAST, "samples_per_image": 2})
    module = _module()
    _trainer(tmp_path, callback, epochs=4).fit(module, *_loaders(digits_data))
    assert sorted(p.name for p in (tmp_path / "atlas").iterdir()) == ["epoch_1", "epoch_3", "index.html"]
    timeline = (tmp_path / "atlas" / "index.html").read_text()
    assert re.findall(r'href="(epoch_\d+/index.html)"', timeline)[:2] == ["epoch_1/index.html", "epoch_3/index.html"]
    summary = json.loads((tmp_path / "atlas" / "epoch_3" / "summary.json").read_text())
    # The sanity check did not leak samples: exactly the validation set, twice per image.
    assert summary["num_samples"] == 2 * len(digits_data[1]) and summary["num_images"] == len(digits_data[1])
    assert summary["layer"] == "model.layer3"
    assert summary["config"]["samples_per_image"] == 2  # the capture settings the callback used
    assert all(not m._forward_hooks for m in module.modules())
    assert callback.state_dict() == {"last_epoch_analyzed": 3, "runs": callback.runs, "failed_epochs": 0}


def test_validate_runs_inside_inference_mode(digits_data, tmp_path):
    callback = AtlasCallback("model.layer3", strict=True, options=FAST)
    module = _module()
    _trainer(tmp_path, callback).validate(module, _loaders(digits_data)[1])
    summary = json.loads((tmp_path / "atlas" / "epoch_0" / "summary.json").read_text())
    assert summary["pairs"] and summary["pairs"][0]["confusing_cells"]


@pytest.mark.slow
def test_resume_restores_callback_state(digits_data, tmp_path):
    callback = AtlasCallback("model.layer3", strict=True, options=FAST)
    trainer = _trainer(tmp_path, callback, epochs=1)
    trainer.fit(_module(), *_loaders(digits_data))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = AtlasCallback("model.layer3", strict=True, options=FAST)
    _trainer(tmp_path, resumed, epochs=2).fit(_module(), *_loaders(digits_data), ckpt_path=ckpt)
    assert [r["epoch"] for r in resumed.runs] == [0, 1]
    assert resumed.last_epoch_analyzed == 1


def test_unknown_layer_fails_in_setup_with_closest_names(digits_data, tmp_path):
    callback = AtlasCallback("model.layer4", strict=True, options=FAST)
    with pytest.raises(DebugAtlasError, match=r"AtlasCallback\(layer='model.layer4'\).*model.layer3"):
        _trainer(tmp_path, callback).fit(_module(), *_loaders(digits_data))


def test_bad_arguments_fail_in_init():
    with pytest.raises(DebugAtlasError, match="every_n_epochs"):
        AtlasCallback("x", every_n_epochs=0)
    with pytest.raises(DebugAtlasError, match=r"Unknown analysis option\(s\) \['grid'\].*HINT: .*grid_size"):
        AtlasCallback("x", options={"grid": 3})
    with pytest.raises(DebugAtlasError, match=r"no keyword or analysis option \['grid'\]\. HINT: .*grid_size"):
        AtlasCallback("x", grid=3)
    with pytest.raises(DebugAtlasError, match=r"no keyword .*'dirpth': \['dirpath'\].*the keywords are \['layer'"):
        AtlasCallback("x", dirpth="out")


def test_shuffled_validation_loader_is_refused(digits_data, tmp_path):
    callback = AtlasCallback("model.layer3", strict=True, options=FAST)
    val = DataLoader(digits_data[1], batch_size=64, shuffle=True)
    with pytest.raises(DebugAtlasError, match="shuffle=False"):
        _trainer(tmp_path, callback, epochs=1).fit(_module(), _loaders(digits_data)[0], val)


def test_images_and_metrics_reach_tensorboard(digits_data, tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = AtlasCallback("model.layer3", strict=True, options=FAST)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=5, enable_checkpointing=False,
                         default_root_dir=tmp_path)
    trainer.fit(_module(), *_loaders(digits_data))
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    pair = callback.last_result.summary["pairs"][0]
    name = f"{pair['a']}→{pair['b']}"
    assert {"atlas/atlas_10", f"atlas/{name}/comparison"} <= set(events.Tags()["images"])
    assert {"atlas/accuracy", f"atlas/{name}/confused"} <= set(events.Tags()["scalars"])
    assert events.Scalars(f"atlas/{name}/confused")[-1].value == pair["confused"]
    accuracy = events.Scalars("atlas/accuracy")[-1].value
    assert accuracy == pytest.approx(callback.last_result.summary["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_two_callbacks_on_different_layers_keep_their_own_state(digits_data, tmp_path):
    first = AtlasCallback("model.layer3", subdir="l3_{epoch}", strict=True, options=FAST)
    second = AtlasCallback("model.layer2", every_n_epochs=2, subdir="l2_{epoch}", strict=True, options=FAST)
    assert first.state_key != second.state_key
    # the same settings give the same key whether pairs came from Python or from YAML
    assert AtlasCallback("x", pairs=[("1", "7")]).state_key == AtlasCallback("x", pairs=[["1", "7"]]).state_key
    trainer = _trainer(tmp_path, [first, second], epochs=2, limit_val_batches=2)
    trainer.fit(_module(), *_loaders(digits_data))
    assert (first.last_epoch_analyzed, second.last_epoch_analyzed) == (1, 1)
    assert [r["epoch"] for r in first.runs] == [0, 1] and [r["epoch"] for r in second.runs] == [1]
    ckpt = tmp_path / "two.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    assert saved[first.state_key]["runs"][0]["dir"].endswith("l3_0")
    assert [r["epoch"] for r in saved[second.state_key]["runs"]] == [1]
    # restored in the other order: each callback gets its own state back
    again = [AtlasCallback("model.layer2", every_n_epochs=2, subdir="l2_{epoch}", strict=True, options=FAST),
             AtlasCallback("model.layer3", subdir="l3_{epoch}", strict=True, options=FAST)]
    _trainer(tmp_path, again, epochs=2, limit_val_batches=2).fit(_module(), *_loaders(digits_data), ckpt_path=ckpt)
    assert [r["epoch"] for r in again[0].runs] == [1] and [r["epoch"] for r in again[1].runs] == [0, 1]


class _FailsAtFirst(AtlasCallback):
    """Its first analysis fails (a planted bug), the later ones run."""

    def _analyze(self, trainer, pl_module, dataset, acts, epoch: int) -> None:
        if epoch == 0:
            raise RuntimeError("planted failure in the analysis\nwith a second line")
        super()._analyze(trainer, pl_module, dataset, acts, epoch)


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("debugatlas")]


def test_a_failed_epoch_is_logged_counted_and_shown_and_training_goes_on(digits_data, tmp_path, caplog):
    # the one test of the broad except (lenient, the default): epoch 0's analysis fails, epoch 1's
    # runs; any other error it catches fails here
    from pytorch_lightning.loggers import CSVLogger

    callback = _FailsAtFirst("model.layer3", options=FAST)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=2, limit_val_batches=2,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="debugatlas"):
        trainer.fit(_module(), *_loaders(digits_data))
    assert trainer.current_epoch == 2 and trainer.state.finished
    (error,) = _errors(caplog)
    assert error == ("`AtlasCallback(layer='model.layer3')` could not analyse epoch 0 (1 failed so far), training "
                     "goes on: RuntimeError: planted failure in the analysis. HINT: pass `strict=True` to raise it "
                     "where it happens")  # one line: the cause's first line and a hint
    assert [r for r in caplog.records if r.levelno >= logging.ERROR][0].exc_info is not None  # and its traceback
    with open(f"{logger.log_dir}/metrics.csv", newline="") as handle:
        counted = [float(r["atlas/failed_epochs"]) for r in csv.DictReader(handle) if r.get("atlas/failed_epochs")]
    assert counted == [1.0, 1.0]  # after the failure, and with epoch 1's analysis
    assert callback.state_dict()["failed_epochs"] == 1
    assert [(r["epoch"], r.get("failed")) for r in callback.runs] == [
        (0, "RuntimeError: planted failure in the analysis"), (1, None)]
    timeline = (callback.dirpath / "index.html").read_text()
    assert "2 analysed epochs, 1 failed" in timeline
    assert timeline.count("analysis failed: RuntimeError: planted failure in the analysis — HINT: pass") == 1
    assert re.findall(r'href="(epoch_\d+/index.html)"', timeline)[0] == "epoch_1/index.html"  # no link to epoch 0


def test_strict_raises_a_failed_analysis_where_it_happens(digits_data, tmp_path, caplog):
    # a real mistake that only the analysis can see: a pair naming a class the data lacks
    callback = AtlasCallback("model.layer3", pairs=[("1", "nine")], strict=True, options=FAST)
    module = _module()
    with caplog.at_level(logging.WARNING, logger="debugatlas"), \
            pytest.raises(DebugAtlasError, match="unknown class 'nine'.*HINT: classes are"):
        _trainer(tmp_path, callback, epochs=1, limit_val_batches=2).fit(module, *_loaders(digits_data))
    assert not _errors(caplog) and callback.failed_epochs == 0
    assert all(not m._forward_hooks for m in module.modules())


def test_the_cause_of_a_failure_is_one_line_with_the_errors_own_hint():
    from debugatlas.lightning.callback import _one_line

    error = DebugAtlasError("`pairs` names unknown class 'nine'.\nHINT: classes are ['0', '1'] (2 classes).")
    assert _one_line(error) == ("DebugAtlasError: `pairs` names unknown class 'nine'", "classes are ['0', '1'] (2 classes).")
    assert _one_line(RuntimeError("first line\nsecond")) == ("RuntimeError: first line", None)
    assert _one_line(KeyError()) == ("KeyError", None)


@pytest.mark.slow
def test_a_fresh_model_that_predicts_one_class_trains_through(digits_data, tmp_path, caplog):
    # Epoch 0 predicts class 0 for every image: no image of A is classified correctly, so no patch
    # rate can be measured (None, or no rows). The callback analyses, renders, patch-tests, and
    # training goes on.
    module = _module()
    module.lr = 1e-4
    with torch.no_grad():
        module.model.fc.bias.copy_(torch.tensor([60.0] + [0.0] * 9))
    options = dict(FAST, render=True, patches=True, render_steps=4, render_cells=2, patch_cells=2, n_random=1,
                   max_patch_images=16, top_cells=4)
    callback = AtlasCallback("model.layer3", strict=True, options=options)
    trainer = _trainer(tmp_path, callback, epochs=2, limit_val_batches=2)
    with caplog.at_level(logging.INFO, logger="debugatlas"):
        trainer.fit(module, *_loaders(digits_data))
    summary = callback.last_result.summary
    assert summary["accuracy"] < 0.2 and summary["pairs"] and all(p["b"] == "0" for p in summary["pairs"])
    rates = [p.get("flip_rate") for pair in summary["pairs"] for p in pair["patches"]]
    assert all(r is None for r in rates)
    assert [r["epoch"] for r in callback.runs] == [0, 1]
    assert all(r["pairs"][0]["best_flip_rate"] is None for r in callback.runs)
    said = [r.getMessage() for r in caplog.records if r.name == "debugatlas.lightning"]
    assert any("epoch 1" in m and "done after" in m and "s left" in m for m in said)
    assert "—" in (tmp_path / "atlas" / "index.html").read_text()  # missing rates shown as gaps


@pytest.mark.slow
def test_reports_go_under_the_loggers_version_folder(digits_data, tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    for _ in range(2):
        callback = AtlasCallback("model.layer3", strict=True, options=FAST)
        trainer = pl.Trainer(max_epochs=1, callbacks=[callback], logger=CSVLogger(tmp_path, name="runs"),
                             enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2,
                             enable_checkpointing=False, default_root_dir=tmp_path)
        trainer.fit(_module(), *_loaders(digits_data))
    for version in ("version_0", "version_1"):
        assert (tmp_path / "runs" / version / "atlas" / "epoch_0" / "summary.json").is_file()
        assert (tmp_path / "runs" / version / "atlas" / "index.html").is_file()


def test_capture_options_through_options_reach_the_capture(digits_data, tmp_path):
    # the route a LightningCLI YAML takes: capture settings inside `options=`, not as keywords
    options = {**FAST, "sampling": "guided", "cap": 300, "samples_per_image": 2}
    callback = AtlasCallback("model.layer3", strict=True, options=options)
    assert (callback.recorder.cap, callback.recorder.samples_per_image) == (300, 2)
    _trainer(tmp_path, callback, epochs=1, limit_val_batches=2).fit(_module(), *_loaders(digits_data))
    config = json.loads((tmp_path / "atlas" / "epoch_0" / "summary.json").read_text())["config"]
    assert (config["sampling"], config["cap"], config["samples_per_image"]) == ("guided", 300, 2)


def test_options_have_one_route_and_a_keyword_option_is_sent_there():
    for keywords in ({"cap": 10}, {"render": False, "store_dir": "vectors"}, {"normalize": ((0.5,), (0.25,))}):
        with pytest.raises(DebugAtlasError, match=r"go in `options=`.*HINT: `AtlasCallback\(\.\.\., options=") as info:
            AtlasCallback("x", **keywords)
        assert f"options={keywords!r}" in str(info.value)
    with pytest.raises(DebugAtlasError, match=r"options=\{'samples_per_image': 'auto'\}.*HINT"):
        AtlasCallback("x", options={"samples_per_image": "auto"})
    with pytest.raises(DebugAtlasError, match="must be a mapping.*HINT"):
        AtlasCallback("x", options=[("cap", 10)])


def test_every_option_reaches_its_place(tmp_path):
    callback = AtlasCallback("x", seed=3, options={
        "sampling": "guided", "cap": 300, "samples_per_image": 2, "store_dir": tmp_path, "disk_threshold_bytes": 0,
        "normalize": ((0.5,), (0.25,)), "class_names": ["a", "b"], "model_spec": "pkg.mod:make", "render": False})
    recorder = callback.recorder
    assert (recorder.sampling, recorder.cap, recorder.samples_per_image, recorder.seed) == ("random", 300, 2, 3)
    assert (recorder.store_dir, recorder.disk_threshold_bytes) == (tmp_path, 0)
    assert callback.guided and callback.cap == 300
    assert callback.capture_options == {"sampling": "guided", "samples_per_image": 2, "cap": 300}
    assert (callback.normalize, callback.class_names, callback.model_spec) == (
        ((0.5,), (0.25,)), ["a", "b"], "pkg.mod:make")
    assert callback.analysis_options == {"render": False}
