"""`capture()`: run a model over a dataset in index order and record sampled activation vectors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..core.datasets import iterate_dataset
from ..core.errors import DebugAtlasError
from ..core.model import model_device, preserved_model_state, resolve_layer
from .activations import ActivationSet
from .guided import capture_guided
from .recorder import DISK_THRESHOLD_BYTES, GUIDED, SAMPLING, ActivationRecorder


def capture(
    model: nn.Module,
    dataset,
    layer: str,
    sampling: str = "random",
    samples_per_image: int = 1,
    cap: int = 100_000,
    seed: int = 0,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float16,
    progress: Callable[[int, int], None] | None = None,
    store_dir: str | Path | None = None,
    disk_threshold_bytes: int | None = DISK_THRESHOLD_BYTES,
    guided_fraction: float = 0.5,
    guided_classes: Sequence[int] = (),
) -> ActivationSet:
    """Run `model` over `dataset` in index order and sample activations of `layer`.

    Predictions are the argmax of the model's output. The model is left as found.
    `sampling="guided"`: per image, round(samples_per_image * guided_fraction) positions at the
    highest attribution toward its predicted class and `guided_classes`, the rest uniformly random;
    `ActivationSet.rule` records which (see `capture.guided.capture_guided`).
    `store_dir`, `disk_threshold_bytes`: the on-disk store (see `ActivationRecorder`); the
    returned vectors then map a file that stays until the process ends or the directory is removed.
    """
    resolve_layer(model, layer)
    if sampling not in (*SAMPLING, GUIDED):
        raise DebugAtlasError(f"`capture(sampling={sampling!r})` is not one of {[*SAMPLING, GUIDED]}.")
    if sampling == GUIDED:
        return capture_guided(model, dataset, layer, samples_per_image=samples_per_image,
                              guided_fraction=guided_fraction, classes=guided_classes, cap=cap, seed=seed,
                              batch_size=batch_size, device=device, dtype=dtype, progress=progress,
                              store_dir=store_dir, disk_threshold_bytes=disk_threshold_bytes)
    recorder = ActivationRecorder(layer, sampling, samples_per_image, cap, seed, dtype,
                                  store_dir=store_dir, disk_threshold_bytes=disk_threshold_bytes)
    device = torch.device(device) if device is not None else model_device(model)
    n = len(dataset)
    with preserved_model_state(model), recorder.attach(model), torch.no_grad():
        model.eval()
        for ids, images, labels in iterate_dataset(dataset, batch_size):
            logits = model(images.to(device))
            recorder.commit(ids, labels, logits.argmax(-1))
            if progress is not None:
                progress(int(ids[-1]) + 1, n)
    return recorder.result()
