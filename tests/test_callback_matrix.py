"""AtlasCallback at its defaults on the paths users take, each checked on what it logged.

Factors: the logger (TensorBoard, CSV, W&B offline, MLflow with a file store) × the report folder
(the default `dirpath` or a given one) × the package (`lightning.pytorch` or `pytorch_lightning`)
× how the options arrive (`options=` from Python, or a LightningCLI YAML file). The full product is
32 two-epoch fits, minutes on two cores; `CASES` is a pairwise (all-pairs) covering design of 8
cases instead: every pair of values of any two factors occurs in at least one case. The faults
seen so far need two factors to show (CSV × the default folder, `options=`/YAML × capture
settings), and 8 is the least any all-pairs design can have (4 loggers × 2 routes), so the design
meets each such fault at a quarter of the cost. `test_the_cases_cover_every_pair_of_factor_values`
checks that property; `DEBUGATLAS_FULL_MATRIX=1` runs the full product instead.

Each case trains a tiny model for two epochs with the smallest options that still run every stage
(capture with guided sampling, PCA layout, an 8×8 grid, icons in 4 steps, patch tests on a few
images, one example) and every other argument at its default, except `strict=True`, so that a bug
fails the case with its traceback. It asserts: no ERROR record from debugatlas, every epoch wrote
its report (index.html, summary.json) and its timeline entry in the folder the README names, the
capture settings reached summary.json whichever route they took, and the logger holds the images
and scalars where the README's "Inside training" section says.
"""
from __future__ import annotations

import csv
import importlib
import itertools
import json
import logging
import os
import re
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from debugatlas.lightning import AtlasCallback
from debugatlas.models import SmallCNN

pytest.importorskip("lightning", reason="the `lightning` package is in the dev extra")

LOGGERS = ("tensorboard", "csv", "wandb", "mlflow")
DIRPATHS = ("default", "given")
PACKAGES = ("lightning.pytorch", "pytorch_lightning")
ROUTES = ("options", "yaml")  # the options as one mapping, from Python and from a LightningCLI YAML

# (logger, dirpath, package, route): every logger meets every route once; the folder and the
# package alternate so that each of their values meets every value of the other factors
PAIRWISE = [(logger, DIRPATHS[(i + j + 1) % 2], PACKAGES[(i // 2 + j) % 2], route)
            for i, logger in enumerate(LOGGERS) for j, route in enumerate(ROUTES)]
FULL = list(itertools.product(LOGGERS, DIRPATHS, PACKAGES, ROUTES))
CASES = FULL if os.environ.get("DEBUGATLAS_FULL_MATRIX") == "1" else PAIRWISE

CAPTURE = {"sampling": "guided", "cap": 5000, "samples_per_image": 2}  # the keys of issue 27
# every stage, at its smallest: icons in 4 steps, patch tests on a few images, one example
FAST = {"layout": "pca", "grid_size": 8, "grid_sizes": [8], "n_pairs": 1, "top_cells": 4, "render_steps": 4,
        "render_cells": 2, "patch_cells": 2, "n_random": 1, "max_patch_images": 32, "selection_images": 8,
        "n_examples": 1}
GRID = FAST["grid_size"]
LAYER = "model.layer3"


def test_the_cases_cover_every_pair_of_factor_values():
    factors = (LOGGERS, DIRPATHS, PACKAGES, ROUTES)
    for (a, values_a), (b, values_b) in itertools.combinations(enumerate(factors), 2):
        seen = {(case[a], case[b]) for case in PAIRWISE}
        assert seen == set(itertools.product(values_a, values_b)), (a, b)
    assert len(set(PAIRWISE)) == len(PAIRWISE) == 8 and set(PAIRWISE) <= set(FULL)


def test_the_callback_is_a_callback_of_both_packages():
    import lightning.pytorch
    import pytorch_lightning

    callback = AtlasCallback(LAYER)
    assert isinstance(callback, lightning.pytorch.Callback) and isinstance(callback, pytorch_lightning.Callback)
    # a lone callback, not in a list, is recognised by the unified package's Trainer too
    trainer = lightning.pytorch.Trainer(callbacks=callback, logger=False, enable_checkpointing=False,
                                        enable_progress_bar=False, enable_model_summary=False)
    assert callback in trainer.callbacks


# -- a tiny project, written against one of the two packages -----------------------------------------
def _project(package: str):
    """(LightningModule, LightningDataModule) classes of `package`, as a user of it writes them."""
    pl = importlib.import_module(package)

    class TinyClassifier(pl.LightningModule):
        def __init__(self, width: int = 8, lr: float = 3e-3) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model, self.lr = SmallCNN(1, 10, width=width), lr

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            loss = torch.nn.functional.cross_entropy(self(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.lr)

    class Digits(pl.LightningDataModule):
        def __init__(self, size: int = 16, batch_size: int = 32) -> None:
            super().__init__()
            self.size, self.batch_size = size, batch_size

        def setup(self, stage: str) -> None:
            from debugatlas.data import digits

            self.train, self.val = digits(size=self.size)

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

        def val_dataloader(self):
            return DataLoader(self.val, batch_size=self.batch_size)

    return TinyClassifier, Digits


TRAINER = {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False}


def _logger_spec(kind: str, package: str, tmp: Path) -> tuple[str, dict]:
    """(class path, init args) of the logger, as a YAML config names it."""
    name, args = {
        "tensorboard": ("TensorBoardLogger", {"save_dir": str(tmp), "name": "tb"}),
        "csv": ("CSVLogger", {"save_dir": str(tmp), "name": "csv"}),
        "wandb": ("WandbLogger", {"project": "atlas", "save_dir": str(tmp), "offline": True}),
        "mlflow": ("MLFlowLogger", {"experiment_name": "atlas", "tracking_uri": f"file:{tmp / 'mlruns'}"}),
    }[kind]
    return f"{package}.loggers.{name}", args


def _fit_from_python(package, logger_spec, dirpath, tmp):
    pl = importlib.import_module(package)
    path, args = logger_spec
    module, cls = path.rsplit(".", 1)
    logger = getattr(importlib.import_module(module), cls)(**args)
    given = {"strict": True} if dirpath is None else {"strict": True, "dirpath": dirpath}
    callback = AtlasCallback(LAYER, **given, options={**CAPTURE, **FAST})
    model_class, data_class = _project(package)
    trainer = pl.Trainer(callbacks=[callback], logger=logger, default_root_dir=tmp, **TRAINER)
    trainer.fit(model_class(), datamodule=data_class())
    return trainer, callback


def _fit_from_yaml(package, logger_spec, dirpath, tmp):
    cli_module = importlib.import_module(f"{package}.cli")
    path, args = logger_spec
    init_args = {"layer": LAYER, "strict": True, "options": {**CAPTURE, **FAST}}
    if dirpath is not None:
        init_args["dirpath"] = str(dirpath)
    config = {"seed_everything": 0,
              "trainer": {**TRAINER, "default_root_dir": str(tmp),
                          "logger": {"class_path": path, "init_args": args},
                          "callbacks": [{"class_path": "debugatlas.AtlasCallback", "init_args": init_args}]}}
    file = tmp / "config.yaml"
    file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    model_class, data_class = _project(package)
    cli = cli_module.LightningCLI(model_class, data_class, args=["fit", "--config", str(file)],
                                  save_config_kwargs={"overwrite": True})
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, AtlasCallback)]
    return cli.trainer, callback


# -- what each logger holds ------------------------------------------------------------------------------
def _pairs_by_epoch(callback) -> list[str]:
    """The analysed pair of epochs 0 and 1 ("auto" may pick another one each epoch), as named in scalars."""
    return [f"{r['pairs'][0]['a']}→{r['pairs'][0]['b']}" for r in callback.runs]


def _mlflow(name: str) -> str:
    return name.replace("→", "-to-")


def _check_tensorboard(logger, callback) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert len(events.Images(f"atlas/atlas_{GRID}")) == len(events.Images("atlas/icon_atlas")) == 2  # one per epoch
    for tag in ("atlas/accuracy", "atlas/num_samples", "atlas/confirmed_findings"):
        assert len(events.Scalars(tag)) == 2, tag
    assert [e.value for e in events.Scalars("atlas/failed_epochs")] == [0.0, 0.0]
    for name in _pairs_by_epoch(callback):
        assert events.Scalars(f"atlas/{name}/confused") and events.Images(f"atlas/{name}/comparison")
        assert events.Images(f"atlas/{name}/comparison_icons")


def _check_csv(logger, callback) -> None:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("atlas/accuracy")]
    assert [float(r["atlas/failed_epochs"]) for r in rows] == [0.0, 0.0]
    for epoch, (row, name) in enumerate(zip(rows, _pairs_by_epoch(callback))):
        assert row[f"atlas/{name}/confused"]
        folder = Path(logger.log_dir) / "atlas" / f"epoch_{epoch}"
        # the report's own folder (the default dirpath) is logged in place; elsewhere copies are named by pair
        file_name = "pair0" if folder == callback.dirpath / f"epoch_{epoch}" else name.replace("→", "_")
        assert {f"atlas_{GRID}.png", "icon_atlas.png", f"{file_name}_comparison.png",
                f"{file_name}_comparison_icons.png"} <= {p.name for p in folder.glob("*.png")}, folder


def _check_wandb(logger, callback) -> None:
    from test_loggers import _wandb_history

    logger.experiment.finish()
    (run_dir,) = (Path(logger.save_dir) / "wandb").glob("offline-run-*")
    # W&B's service process may still be writing the run's transaction log when finish() returns
    deadline = time.monotonic() + 30
    while True:
        history = _wandb_history(next(run_dir.glob("run-*.wandb")))
        if len(history.get("atlas/accuracy", [])) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(history["atlas/accuracy"]) == 2 and history["atlas/failed_epochs"] == [0, 0]
    for key in (f"atlas/atlas_{GRID}", "atlas/icon_atlas"):
        files = history[f"{key}/filenames"]
        assert len(files) == 2 and all((run_dir / "files" / f[0]).is_file() for f in files), key
    for name in _pairs_by_epoch(callback):
        assert history[f"atlas/{name}/confused"]
        assert list((run_dir / "files" / "media" / "images" / "atlas" / name).glob("comparison_*.png"))
        assert list((run_dir / "files" / "media" / "images" / "atlas" / name).glob("comparison_icons_*.png"))


def _check_mlflow(logger, callback) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=logger._tracking_uri)
    assert len(client.get_metric_history(logger.run_id, "atlas/accuracy")) == 2
    assert [m.value for m in client.get_metric_history(logger.run_id, "atlas/failed_epochs")] == [0.0, 0.0]
    for epoch, name in enumerate(_pairs_by_epoch(callback)):
        assert client.get_metric_history(logger.run_id, f"atlas/{_mlflow(name)}/confused")
        files = {f.path for f in client.list_artifacts(logger.run_id, f"atlas/epoch_{epoch}")}
        wanted = (f"atlas_{GRID}.png", "icon_atlas.png", f"{_mlflow(name)}_comparison.png",
                  f"{_mlflow(name)}_comparison_icons.png")
        assert {f"atlas/epoch_{epoch}/{f}" for f in wanted} <= files


def _default_folder(kind: str, logger, tmp: Path) -> Path:
    """The report folder without `dirpath`, as the README spells it for each logger."""
    if kind in ("tensorboard", "csv"):
        return tmp / {"tensorboard": "tb", "csv": "csv"}[kind] / "version_0" / "atlas"
    if kind == "wandb":
        return tmp / "atlas" / str(logger.version) / "atlas"  # <save_dir>/<project>/<run id>
    return tmp / "mlruns" / str(logger.experiment_id) / str(logger.run_id) / "atlas"


CHECKS = {"tensorboard": _check_tensorboard, "csv": _check_csv, "wandb": _check_wandb, "mlflow": _check_mlflow}


@pytest.mark.slow
@pytest.mark.parametrize("logger_kind, dirpath, package, route", CASES, ids=["-".join(c) for c in CASES])
def test_the_callback_at_its_defaults(logger_kind, dirpath, package, route, tmp_path, monkeypatch, caplog):
    if logger_kind == "wandb":
        pytest.importorskip("wandb", reason="wandb is in the dev extra")
        for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}.items():
            monkeypatch.setenv(key, value)
    if logger_kind == "mlflow":
        pytest.importorskip("mlflow", reason="mlflow is in the dev extra")
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for opting-in users
    given = tmp_path / "reports" if dirpath == "given" else None
    spec = _logger_spec(logger_kind, package, tmp_path)
    with caplog.at_level(logging.WARNING, logger="debugatlas"):
        if route == "yaml":
            trainer, callback = _fit_from_yaml(package, spec, given, tmp_path)
        else:
            trainer, callback = _fit_from_python(package, spec, given, tmp_path)
    said = [f"{r.levelname}: {r.getMessage()}" for r in caplog.records if r.name.startswith("debugatlas")]
    assert not [m for m in said if m.startswith(("ERROR", "CRITICAL"))], said
    assert trainer.state.finished and callback.failed_epochs == 0
    # the report folder: the one given, or beside the checkpoints, as ModelCheckpoint places them
    expected = given if given is not None else _default_folder(logger_kind, trainer.logger, tmp_path)
    assert given is not None or expected == Path(trainer.checkpoint_callback.dirpath).parent / "atlas"
    assert callback.dirpath == expected
    assert [(r["epoch"], r.get("failed")) for r in callback.runs] == [(0, None), (1, None)]
    measured = []
    for epoch in (0, 1):
        assert (expected / f"epoch_{epoch}" / "index.html").is_file()
        summary = json.loads((expected / f"epoch_{epoch}" / "summary.json").read_text())
        assert {k: summary["config"][k] for k in CAPTURE} == CAPTURE  # the same capture, whichever route it took
        assert {"capture", "attribution", "layout", "render", "patches"} <= set(summary["timings_s"])
        measured += [p["n_images"] for pair in summary["pairs"] for p in pair["patches"]]
    assert measured and max(measured) > 0  # the patch stage tested patches on images of A
    timeline = (expected / "index.html").read_text()
    assert re.findall(r'href="(epoch_\d+/index.html)">epoch', timeline) == ["epoch_0/index.html", "epoch_1/index.html"]
    CHECKS[logger_kind](trainer.logger, callback)
