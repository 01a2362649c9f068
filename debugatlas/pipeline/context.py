"""`RunContext`: what every stage of one analysis needs, passed as one value instead of long argument lists."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..core.datasets import load_images
from ..core.progress import RunProgress
from .config import AnalysisConfig

log = logging.getLogger("debugatlas")


class StageTimer:
    """Wall-clock seconds and model forwards per stage name, summed over repeated entries.

    times: {stage: seconds}. forwards: {stage: images passed through the model}, counted by
    `counting` (a forward pre-hook on the analysed model, one count per image of each batch,
    whether the forward runs to the logits or stops at the layer). Stages may nest
    ("patches" holds "patches.screening", ...); each name keeps its own sum.
    """

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.forwards: dict[str, int] = {}
        self._images = 0

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start, images = time.perf_counter(), self._images
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - start, 3)
            self.forwards[name] = self.forwards.get(name, 0) + self._images - images
            log.info("debugatlas: %s took %.2f s", name, self.times[name])

    @contextlib.contextmanager
    def counting(self, model: nn.Module) -> Iterator[None]:
        """Count the images of every forward of `model` while inside; the hook is always removed."""
        def count(_module, inputs):
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() > 0:
                self._images += int(inputs[0].shape[0])

        handle = model.register_forward_pre_hook(count)
        try:
            yield
        finally:
            handle.remove()


@dataclass(frozen=True)
class RunContext:
    """One analysis run.

    model:  the network as analysed, in [0, 1] pixel space (wrapped by `Normalized` when the run
            normalises), on `device`.
    layer:  the analysed layer's name in `model.named_modules()`; module: that layer.
    dataset: yields (image [C, H, W] in [0, 1], label); sample ids index into it.
    class_names: one name per model output. seed: every random choice of the run derives from it.
    progress: the run's one progress bar (None: silent). timer: seconds per stage (summary.json's
    `timings_s`).
    """

    model: nn.Module
    layer: str
    module: nn.Module
    dataset: Any
    device: torch.device
    seed: int
    config: AnalysisConfig
    class_names: tuple[str, ...] = ()
    progress: RunProgress | None = None
    timer: StageTimer = field(default_factory=StageTimer)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def images(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The dataset images with these ids, [N, C, H, W] float32 on the CPU."""
        return load_images(self.dataset, ids)

    def bar(self, detail: str | None = None):
        """The `progress(done, total)` callback of the running stage, or None when progress is off;
        `detail` (what the stage works on, e.g. a pair) is shown beside the stage's name."""
        return self.progress.callback(detail) if self.progress is not None else None

    @contextlib.contextmanager
    def stage(self, name: str, shown_as: str | None = None) -> Iterator[None]:
        """Time one stage (summed under `name`) and show it on the progress bar (as `shown_as`)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.timer.stage(name))
            if self.progress is not None:
                stack.enter_context(self.progress.stage(shown_as or name))
            yield
