"""`analyze()`: run every stage on a model and a dataset, and write the run directory."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..capture import ActivationSet, capture
from ..core.datasets import load_images
from ..core.errors import DebugAtlasError
from ..core.model import Normalized, layer_name, on_device, preserved_model_state, resolve_layer
from ..core.progress import progress_bar
from ..data import class_names as _class_names
from .config import AnalysisConfig

log = logging.getLogger("debugatlas")


@dataclass
class PairFinding:
    """What the run found for one confused pair (a = true class, b = predicted class).

    cells: ranked candidate confusing cells of the main atlas (confusion.ConfusingCell).
    filtered_a / filtered_b: class-filtered atlases; comparison: the two-class comparison atlas.
    icons: cell -> [C, h, w] float32 icon in [0, 1]; exemplar_crops: cell -> [n, C, h, w] crops.
    icon_atlases: "filtered_a" / "filtered_b" / "comparison" -> the atlas drawn as icons, uint8 [H, W, 3].
    examples: misclassified a→b images: dicts with id, p_b, image [C,H,W], heatmap [H,W].
    patches: the pair's patch evaluation (patches.PairPatchResult) or None.
    """

    a: int
    b: int
    a_name: str
    b_name: str
    confused: int
    cells: list = field(default_factory=list)
    filtered_a: Any = None
    filtered_b: Any = None
    comparison: Any = None
    icons: dict = field(default_factory=dict)
    icon_objective: dict = field(default_factory=dict)
    exemplar_crops: dict = field(default_factory=dict)
    icon_atlases: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)
    patches: Any = None
    notes: list = field(default_factory=list)


@dataclass
class AnalysisResult:
    """Everything one `analyze()` run produced; `summary` equals the written summary.json."""

    summary: dict
    out_dir: Path | None
    activations: ActivationSet
    attributions: torch.Tensor
    xy: np.ndarray
    atlases: dict
    pairs: list[PairFinding]
    confusion: np.ndarray
    class_names: list[str]
    config: AnalysisConfig
    icon_atlas: np.ndarray | None = None
    suites: list = field(default_factory=list)


class _Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - start, 3)
            log.info("debugatlas: %s took %.2f s", name, self.times[name])


def resolve_pairs(pairs, names: list[str]) -> list[tuple[int, int]] | None:
    """Turn `pairs` ("auto" or [(a, b), ...] by name or index) into index pairs; None means auto."""
    if pairs is None or (isinstance(pairs, str) and pairs == "auto"):
        return None
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)):
        raise DebugAtlasError(f"`pairs={pairs!r}` must be 'auto' or a list of (A, B) class pairs.")
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DebugAtlasError(f"`pairs` entry {pair!r} is not an (A, B) pair of class names.")
        idx = []
        for cls in pair:
            if isinstance(cls, (int, np.integer)) and 0 <= int(cls) < len(names):
                idx.append(int(cls))
            elif str(cls) in names:
                idx.append(names.index(str(cls)))
            else:
                import difflib

                close = difflib.get_close_matches(str(cls), names, n=3)
                raise DebugAtlasError(
                    f"`pairs` names unknown class {cls!r}. HINT: closest {close}; classes are {names}."
                )
        if idx[0] == idx[1]:
            raise DebugAtlasError(f"`pairs` entry {pair!r} names the same class twice.")
        out.append((idx[0], idx[1]))
    return out


def _fill_predictions(model: nn.Module, dataset, acts: ActivationSet, device, batch_size: int) -> None:
    """Predict the images whose prediction was not recorded (preds == -1)."""
    missing = torch.unique(acts.image_ids[acts.preds < 0])
    if missing.numel() == 0:
        return
    preds = {}
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        for start in range(0, missing.numel(), batch_size):
            ids = missing[start:start + batch_size]
            logits = model(load_images(dataset, ids).to(device))
            preds.update(zip(ids.tolist(), logits.argmax(-1).cpu().tolist()))
    fill = torch.tensor([preds.get(i, -1) for i in acts.image_ids.tolist()])
    acts.preds = torch.where(acts.preds < 0, fill, acts.preds)


def analyze(
    model: nn.Module,
    dataset,
    layer: str,
    pairs="auto",
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    class_names: Sequence[str] | None = None,
    activations: ActivationSet | None = None,
    progress: bool = False,
    title: str | None = None,
    data_description: str | None = None,
    model_spec: str | None = None,
    **options: Any,
) -> AnalysisResult:
    """Find why `model` confuses classes of `dataset`, at `layer`, and write a report to `out_dir`.

    `dataset` yields (image in [0, 1] as [C, H, W], int label); ids in the report index into it.
    `activations` skips capture (the Lightning callback passes what it captured during validation).
    `model_spec` ("pkg.module:factory") is recorded so the report can print the exact check command.
    Options (see `AnalysisConfig`) tune each stage. The model is left as found. An error leaves any
    earlier report in `out_dir` intact: files are written only once everything has been computed.
    """
    from . import stages

    config = AnalysisConfig.from_options(options)
    if normalize is not None:
        if len(normalize) != 2 or len(normalize[0]) != len(normalize[1]):
            raise DebugAtlasError(f"`normalize={normalize!r}` must be (mean, std), one value per channel.")
        if any(float(s) <= 0 for s in normalize[1]):
            raise DebugAtlasError(f"`normalize` std {list(normalize[1])!r} must be positive.")
    if len(dataset) == 0:
        raise DebugAtlasError("The dataset is empty. HINT: pass a dataset with at least one image.")
    module = resolve_layer(model, layer)
    name = layer_name(model, layer)
    timer = _Timer()
    started = time.perf_counter()
    with on_device(model, device) as dev:
        net = Normalized(model, *normalize).to(dev) if normalize is not None else model
        with timer.stage("capture"):
            acts = activations if activations is not None else capture(
                net, dataset, module, config.sampling, config.samples_per_image, config.cap, seed,
                config.batch_size, dev, progress=progress_bar(progress, "capture"),
            )
            acts.layer = layer_name(net, module)
            _fill_predictions(net, dataset, acts, dev, config.batch_size)
        num_classes = stages.num_classes(net, dataset, dev)
        names = _class_names(dataset, class_names, num_classes)
        if len(names) != num_classes:
            raise DebugAtlasError(
                f"The model predicts {num_classes} classes but there are {len(names)} class names. "
                "HINT: pass `class_names=` with one name per model output."
            )
        wanted = resolve_pairs(pairs, names)
        _, labels, preds = acts.per_image()
        confusion, chosen = stages.confusion(labels, preds, num_classes, wanted, config)
        with timer.stage("attribution"):
            attributions = stages.attributions(net, module, dataset, acts, config, dev, progress,
                                               num_classes, chosen)
        with timer.stage("layout"):
            xy, atlases, layout_params = stages.atlases(acts, attributions, config, seed, dev)
        findings = []
        with timer.stage("layout"):
            for a, b in chosen:
                findings.append(stages.pair_finding(
                    acts, attributions, atlases[config.grid_size], a, b, names, confusion, config, seed, dev))
        with timer.stage("render"):
            icon_atlas, icons = stages.render(net, module, dataset, acts, atlases[config.grid_size],
                                              findings, config, seed, dev) if config.render else (None, {})
        with timer.stage("patches"):
            suites = stages.patches(net, module, dataset, acts, attributions, atlases[config.grid_size],
                                   findings, icons, names, config, seed, dev,
                                   progress) if config.patches and config.render else None
        with timer.stage("attribution"):
            stages.examples(net, dataset, acts, findings, config, dev)
    timer.times["total"] = round(time.perf_counter() - started, 3)
    result = AnalysisResult(
        summary={}, out_dir=Path(out_dir) if out_dir is not None else None, activations=acts,
        attributions=attributions, xy=xy, atlases=atlases, pairs=findings, confusion=confusion,
        class_names=names, config=config, icon_atlas=icon_atlas, suites=suites or [],
    )
    result.summary = stages.summary(result, name, labels, preds, timer.times, layout_params, seed,
                                    normalize)
    result.summary["config"]["model_spec"] = model_spec
    if out_dir is not None:
        from ..report.rundir import write_run

        write_run(Path(out_dir), result, dataset, net, title=title, data_description=data_description)
    return result
