"""Send an analysis' scalars and images to whichever Lightning loggers the trainer has.

Scalars are named by the pair's classes (`atlas/grid→stripes/confused`), so a pair keeps its name
across epochs whatever its rank. Images go through each logger's own API: TensorBoard
(`experiment.add_image`), Weights & Biases (`WandbLogger.log_image`), MLflow
(`MlflowClient.log_image` into the run's artifacts), CSV (PNG files beside its metrics.csv, in
`<log_dir>/atlas/epoch_<n>/`, named by pair; when the report already lies there, as it does in the
callback's default folder with a first CSV logger, its pictures are logged in place, never copied).
A logger that takes no images gets the scalars only, and one warning per logger type.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Sequence

from ..artifacts import paths
from ..artifacts.record import RunRecord
from ..report.timeline import pair_outcomes

log = logging.getLogger("debugatlas.lightning")

__all__ = ["FAILED_EPOCHS", "scalar_metrics", "report_images", "log_analysis", "log_failure"]

FAILED_EPOCHS = "atlas/failed_epochs"


def scalar_metrics(record: RunRecord, num_samples: int | None = None) -> dict[str, float]:
    """The scalars of one analysis; a rate that was not measured (None) is left out, never zero.

    atlas/accuracy, atlas/num_samples, atlas/confirmed_findings, and per pair `atlas/A→B/`:
    confused, confirmed_findings, best_flip_rate, confirmed_flip_rate, confirmed_margin.
    """
    metrics: dict[str, float] = {"atlas/accuracy": float(record.accuracy)}
    if num_samples is not None:
        metrics["atlas/num_samples"] = float(num_samples)
    outcomes = pair_outcomes(record)
    metrics["atlas/confirmed_findings"] = float(sum(o.confirmed for o in outcomes))
    for o in outcomes:
        values = {"confused": o.confused, "confirmed_findings": o.confirmed, "best_flip_rate": o.best_flip_rate,
                  "confirmed_flip_rate": o.confirmed_flip_rate, "confirmed_margin": o.confirmed_margin}
        metrics.update({f"atlas/{o.name}/{k}": float(v) for k, v in values.items() if v is not None})
    return metrics


def report_images(out: Path, record: RunRecord) -> list[tuple[str, Path]]:
    """(tag, file) of the run directory's pictures that exist: the atlases and each pair's comparison."""
    grid = record.grid_size
    found = [("atlas/icon_atlas", out / paths.ICON_ATLAS)]
    if grid is not None:
        found.append((f"atlas/atlas_{grid}", out / paths.atlas_figure_path(grid)))
    for k, o in enumerate(pair_outcomes(record)):
        found += [(f"atlas/{o.name}/comparison_icons", out / paths.view_path(k, "comparison", icons=True)),
                  (f"atlas/{o.name}/comparison", out / paths.view_path(k, "comparison"))]
    return [(tag, path) for tag, path in found if path.is_file()]


def _mlflow_key(key: str) -> str:
    """MLflow names allow letters, digits and `_ - . / space` only (Lightning drops the rest)."""
    return re.sub(r"[^a-zA-Z0-9_/. -]", "_", key.replace("→", "-to-"))


def _file_name(tag: str) -> str:
    return re.sub(r"[^\w.-]+", "_", tag.removeprefix("atlas/")).strip("_") + ".png"


def _rgb(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _place(source: Path, folder: Path, name: str) -> None:
    """`source` as `folder/name`, copied atomically; a file that already lies in `folder` (the report
    written into the logger's own folder) is logged where it is, never copied onto itself or beside."""
    from ..artifacts.atomic import write_bytes

    if os.path.samefile(source.parent, folder):
        return
    write_bytes(folder / name, source.read_bytes())


def _kind(logger: Any) -> str:
    names = {cls.__name__ for cls in type(logger).__mro__}
    for kind in ("TensorBoardLogger", "WandbLogger", "MLFlowLogger", "CSVLogger"):
        if kind in names:
            return kind
    return type(logger).__name__


def _log_images(logger: Any, kind: str, images: Sequence[tuple[str, Path]], epoch: int, step: int) -> bool:
    """Send the images through `logger`'s own API; False when it takes none."""
    if kind == "TensorBoardLogger":
        for tag, path in images:
            logger.experiment.add_image(tag, _rgb(path), step, dataformats="HWC")
    elif kind == "WandbLogger":
        for tag, path in images:
            logger.log_image(key=tag, images=[str(path)], step=step)
    elif kind == "MLFlowLogger":
        for tag, path in images:
            logger.experiment.log_image(logger.run_id, _rgb(path),
                                        artifact_file=f"atlas/epoch_{epoch}/{_file_name(_mlflow_key(tag))}")
    elif kind == "CSVLogger":
        folder = Path(logger.log_dir) / "atlas" / f"epoch_{epoch}"
        folder.mkdir(parents=True, exist_ok=True)
        for tag, path in images:
            _place(path, folder, _file_name(tag))
    else:
        return False
    return True


def _send(logger: Any, kind: str, metrics: Mapping[str, float], step: int) -> None:
    logger.log_metrics({_mlflow_key(k): v for k, v in metrics.items()} if kind == "MLFlowLogger" else dict(metrics),
                       step=step)


def log_analysis(loggers: Sequence[Any], out: Path, record: RunRecord, *, epoch: int, step: int,
                 num_samples: int | None, warned: set[str], failed_epochs: int = 0) -> None:
    """Scalars (with `atlas/failed_epochs`, the run's failed analyses so far) to every logger, images
    to those that take them; `warned` holds logger types already warned about (one warning each)."""
    metrics = {**scalar_metrics(record, num_samples), FAILED_EPOCHS: float(failed_epochs)}
    images = report_images(out, record)
    for logger in loggers:
        kind = _kind(logger)
        _send(logger, kind, metrics, step)
        if images and not _log_images(logger, kind, images, epoch, step) and kind not in warned:
            warned.add(kind)
            log.warning("`AtlasCallback` cannot send images to %s; it gets the scalars only. HINT: the atlas "
                        "pictures are in %s.", kind, out)


def log_failure(loggers: Sequence[Any], failed_epochs: int, *, step: int) -> None:
    """`atlas/failed_epochs` (the run's failed analyses so far) to every logger, after a failed epoch."""
    for logger in loggers:
        _send(logger, _kind(logger), {FAILED_EPOCHS: float(failed_epochs)}, step)
