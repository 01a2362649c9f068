"""AtlasCallback's scalars and images reach every Lightning logger the trainer has: TensorBoard,
W&B (offline), MLflow (local file store), CSV, and a logger that takes no images (scalars, one warning)."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import _records as records
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from torch.utils.data import DataLoader

from debugatlas.artifacts.record import RunRecord
from debugatlas.lightning import AtlasCallback, ClassifierModule
from debugatlas.lightning.loggers import scalar_metrics
from debugatlas.models import SmallCNN

FAST = {"layout": "pca", "render": False, "patches": False, "grid_sizes": (10,), "grid_size": 10, "n_pairs": 2}


def test_scalars_are_named_by_pair_and_skip_missing_rates():
    rates = {"noise_flip_rate": 0.1, "natural_flip_rate": 0.2}
    pairs = [records.pair("grid", "stripes", 7, [records.patch_row("p", 0.5, verdict="confirmed", **rates)],
                          [records.finding("p", 0.5, None, **rates)]),
             records.pair("stripes", "grid", 3, [records.patch_row("q", None)])]
    first = scalar_metrics(RunRecord.from_dict(records.run(pairs, accuracy=0.75)), num_samples=10)
    second = scalar_metrics(RunRecord.from_dict(records.run(pairs[::-1], accuracy=0.75)), num_samples=10)
    assert first == second  # the order of the pairs does not change a name or a value
    assert first == {"atlas/accuracy": 0.75, "atlas/num_samples": 10.0, "atlas/confirmed_findings": 1.0,
                     "atlas/grid→stripes/confused": 7.0, "atlas/grid→stripes/confirmed_findings": 1.0,
                     "atlas/grid→stripes/best_flip_rate": 0.5, "atlas/grid→stripes/confirmed_flip_rate": 0.5,
                     "atlas/grid→stripes/confirmed_margin": pytest.approx(0.3),
                     "atlas/stripes→grid/confused": 3.0, "atlas/stripes→grid/confirmed_findings": 0.0}


class _MetricsOnly(Logger):
    """A logger with no image API: it records what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[dict] = []

    name = property(lambda self: "plain")
    version = property(lambda self: 0)

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append(dict(metrics))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


@pytest.fixture(scope="module")  # one fit serves the slow tests below (about a minute on 2 shared cores)
def logged_run(digits_data, tmp_path_factory):
    """One 2-epoch fit with TensorBoard, W&B (offline), MLflow (file store), CSV and a plain logger."""
    wandb = pytest.importorskip("wandb", reason="wandb is in the dev extra")
    pytest.importorskip("mlflow", reason="mlflow is in the dev extra")
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

    tmp = tmp_path_factory.mktemp("loggers")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DIR", str(tmp))
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store for opting-in users
    loggers = [TensorBoardLogger(tmp, name="tb"), WandbLogger(project="atlas", save_dir=tmp, offline=True),
               MLFlowLogger(experiment_name="atlas", tracking_uri=f"file:{tmp / 'mlruns'}"),
               CSVLogger(tmp, name="csv"), _MetricsOnly()]
    torch.manual_seed(0)
    callback = AtlasCallback("model.layer3", strict=True, options=FAST)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("debugatlas").addHandler(handler)
    try:
        train, val = digits_data
        trainer = pl.Trainer(max_epochs=2, callbacks=[callback], logger=loggers, enable_progress_bar=False,
                             enable_model_summary=False, limit_train_batches=3, enable_checkpointing=False,
                             default_root_dir=tmp)
        trainer.fit(ClassifierModule(SmallCNN(1, 10, width=4)), DataLoader(train, batch_size=32),
                    DataLoader(val, batch_size=128))
        loggers[1].experiment.finish()
        yield {"tmp": tmp, "callback": callback, "loggers": loggers, "warnings": records, "wandb": wandb}
    finally:
        logging.getLogger("debugatlas").removeHandler(handler)
        mp.undo()


def _names(callback) -> list[str]:
    return [f"{p['a']}→{p['b']}" for p in callback.last_result.summary["pairs"]]


@pytest.mark.slow
def test_tensorboard_gets_images_and_per_pair_scalars(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger, callback = logged_run["loggers"][0], logged_run["callback"]
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    name = _names(callback)[0]
    assert {"atlas/atlas_10", f"atlas/{name}/comparison"} <= set(events.Tags()["images"])
    confused = events.Scalars(f"atlas/{name}/confused")
    assert confused[-1].value == callback.last_result.summary["pairs"][0]["confused"]


def _wandb_history(path: Path) -> dict[str, list]:
    """Every history value of an offline W&B run, read from its transaction log (a LevelDB-style log
    of 32 KiB blocks after a 7-byte header; records of protobuf `Record`), by key."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, parts, history = path.read_bytes(), 7, b"", {}
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a record header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk  # full / first, or middle / last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            if record.WhichOneof("record_type") == "history":
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    history.setdefault(key, []).append(json.loads(item.value_json))
    return history


@pytest.mark.slow
def test_wandb_offline_run_holds_the_images_and_scalars(logged_run):
    callback = logged_run["callback"]
    run_dir = next((logged_run["tmp"] / "wandb").glob("offline-run-*"))
    history = _wandb_history(next(run_dir.glob("run-*.wandb")))
    name = _names(callback)[0]
    assert history[f"atlas/{name}/confused"][-1] == callback.last_result.summary["pairs"][0]["confused"]
    assert len(history["atlas/accuracy"]) == 2
    files = history["atlas/atlas_10/filenames"]
    assert len(files) == 2 and all((run_dir / "files" / f[0]).is_file() for f in files)
    assert list((run_dir / "files" / "media" / "images" / "atlas" / name).glob("comparison_*.png"))


@pytest.mark.slow
def test_mlflow_file_store_holds_the_images_and_scalars(logged_run):
    from mlflow.tracking import MlflowClient

    logger, callback = logged_run["loggers"][2], logged_run["callback"]
    client = MlflowClient(tracking_uri=logger._tracking_uri)
    metrics = client.get_run(logger.run_id).data.metrics
    pair = callback.last_result.summary["pairs"][0]
    key = f"atlas/{pair['a']}-to-{pair['b']}/confused"
    assert metrics[key] == pair["confused"] and "atlas/accuracy" in metrics
    files = {f.path for f in client.list_artifacts(logger.run_id, "atlas/epoch_1")}
    assert "atlas/epoch_1/atlas_10.png" in files
    assert f"atlas/epoch_1/{pair['a']}-to-{pair['b']}_comparison.png" in files


@pytest.mark.slow
def test_csv_logger_gets_image_files_beside_its_metrics(logged_run):
    logger, callback = logged_run["loggers"][3], logged_run["callback"]
    name = _names(callback)[0]
    with open(f"{logger.log_dir}/metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(f"atlas/{name}/confused")]
    assert len(rows) == 2  # one per epoch, under the same name
    images = {p.relative_to(logger.log_dir).as_posix() for p in Path(logger.log_dir).rglob("*.png")}
    assert {"atlas/epoch_0/atlas_10.png", "atlas/epoch_1/atlas_10.png"} <= images


@pytest.mark.slow
def test_a_logger_without_images_gets_scalars_and_one_warning(logged_run):
    plain, callback = logged_run["loggers"][4], logged_run["callback"]
    atlas = [m for m in plain.metrics if "atlas/accuracy" in m]
    assert len(atlas) == 2 and atlas[-1]["atlas/accuracy"] == callback.last_result.summary["accuracy"]
    warned = [r for r in logged_run["warnings"] if "cannot send images" in r.getMessage()]
    assert len(warned) == 1 and "_MetricsOnly" in warned[0].getMessage()


@pytest.mark.slow
def test_reports_go_under_the_first_loggers_version_folder(logged_run):
    tb = logged_run["loggers"][0]
    assert logged_run["callback"].dirpath == logged_run["tmp"] / "tb" / "version_0" / "atlas"
    assert (logged_run["callback"].dirpath / "epoch_1" / "summary.json").is_file()
    assert tb.log_dir.endswith("version_0")


def test_progress_logs_each_stage_with_the_time_left(caplog):
    from debugatlas.lightning.progress import AnalysisProgress

    now = [100.0]
    source = logging.getLogger("debugatlas")
    level, handlers = source.level, list(source.handlers)
    first = AnalysisProgress("epoch 0", None, clock=lambda: now[0])
    with first:
        now[0] = 104.0
        source.info("debugatlas: %s took %.2f s", "capture", 4.0)
    progress = AnalysisProgress("epoch 1", {"capture": 3.0, "total": 10.0}, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="debugatlas.lightning"):
        with progress:
            now[0] = 107.0
            source.info("debugatlas: %s took %.2f s", "capture", 3.0)
            source.info("something else")
            now[0] = 116.0
            source.info("debugatlas: %s took %.2f s", "layout", 9.0)
    assert first.messages == ["analysing (time left unknown (first analysis))",
                              "capture done after 4.0 s, time left unknown (first analysis)", "done in 4.0 s"]
    assert progress.messages == ["analysing (the last one took 10 s)", "capture done after 3.0 s, about 7 s left",
                                 "layout done after 12.0 s, about 0 s left", "done in 12.0 s"]
    assert [r.getMessage() for r in caplog.records if r.name == "debugatlas.lightning"][-1] == (
        "AtlasCallback: epoch 1: done in 12.0 s")
    assert (source.level, source.handlers) == (level, handlers)  # the logger is left as found


def _png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def test_csv_images_are_copied_from_elsewhere_and_logged_in_place_when_already_there(tmp_path):
    from debugatlas.lightning.loggers import log_analysis

    summary = RunRecord.from_dict(records.run([records.pair("1", "7", 3)], classes=("1", "7"), accuracy=0.5,
                                              config={"grid_size": 8}))
    logger = CSVLogger(tmp_path, name="csv")
    here = Path(logger.log_dir) / "atlas" / "epoch_0"  # the callback's default folder for this logger
    elsewhere = tmp_path / "reports" / "epoch_0"
    for out in (here, elsewhere):
        for name in ("atlas_8.png", "pair0_comparison.png"):
            _png(out / name)
    before = {p.name: p.stat().st_ino for p in here.iterdir()}
    log_analysis([logger], here, summary, epoch=0, step=0, num_samples=10, warned=set())
    # logged where they are: not copied onto themselves (SameFileError), not copied beside under a pair's name
    assert {p.name: p.stat().st_ino for p in here.iterdir()} == before
    log_analysis([logger], elsewhere, summary, epoch=1, step=1, num_samples=10, warned=set())
    copied = Path(logger.log_dir) / "atlas" / "epoch_1"
    assert sorted(p.name for p in copied.iterdir()) == ["1_7_comparison.png", "atlas_8.png"]
    assert (copied / "atlas_8.png").read_bytes() == (elsewhere / "atlas_8.png").read_bytes()


def test_csv_logger_at_the_default_dirpath_logs_the_report_in_place(digits_data, tmp_path, caplog):
    # the report lies in `<log_dir>/atlas/epoch_<n>/`, the folder the CSV images go to: its pictures
    # are the logged ones, nothing is copied onto itself or beside them
    from debugatlas.lightning.loggers import report_images

    train, val = digits_data
    callback = AtlasCallback("model.layer3", strict=True, options=FAST)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(max_epochs=1, callbacks=[callback], logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, limit_train_batches=2, limit_val_batches=2,
                         enable_checkpointing=False, default_root_dir=tmp_path)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="debugatlas"):
        trainer.fit(ClassifierModule(SmallCNN(1, 10, width=4)), DataLoader(train, batch_size=32),
                    DataLoader(val, batch_size=128))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    folder = Path(logger.log_dir) / "atlas" / "epoch_0"
    assert callback.dirpath == Path(logger.log_dir) / "atlas" and (folder / "summary.json").is_file()
    logged = {path.name for _, path in report_images(folder, callback.last_result.record)}
    assert {"atlas_10.png", "pair0_comparison.png"} <= logged
    named_by_pair = {f"{name.replace('→', '_')}_comparison.png" for name in _names(callback)}
    assert not named_by_pair & {p.name for p in folder.glob("*.png")}
