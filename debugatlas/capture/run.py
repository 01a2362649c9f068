"""`capture()`: run a model over a dataset in index order and record sampled activation vectors."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..core.datasets import iterate_dataset
from ..core.errors import DebugAtlasError
from ..core.model import model_device, preserved_model_state, resolve_layer
from .activations import ActivationSet
from .guided import capture_guided
from .recorder import GUIDED, SAMPLING
from .spec import CaptureSpec


def capture(
    model: nn.Module,
    dataset,
    layer: str,
    spec: CaptureSpec | None = None,
    *,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **settings: Any,
) -> ActivationSet:
    """Run `model` over `dataset` in index order and sample activations of `layer`.

    What is recorded is a `CaptureSpec`: `spec`, with any of its fields replaced by keyword
    (`capture(model, data, "layer3", samples_per_image=4, seed=1)` needs no spec). Predictions
    are the argmax of the model's output. The model is left as found. `sampling="guided"`: per
    image, round(samples_per_image * guided_fraction) positions at the highest attribution toward
    its predicted class and `guided_classes`, the rest uniformly random; `ActivationSet.rule`
    records which (see `capture.guided.capture_guided`). With the on-disk store (`store_dir`,
    `disk_threshold_bytes`, see `ActivationRecorder`) the returned vectors map a file that stays
    until the process ends or the directory is removed. `batch_size` images per forward pass on
    `device` (default: the model's); `progress(done, total)` after each batch.
    """
    spec = CaptureSpec.given(spec, settings, "capture(...)")
    resolve_layer(model, layer)
    if spec.sampling not in (*SAMPLING, GUIDED):
        raise DebugAtlasError(f"`capture(sampling={spec.sampling!r})` is not one of {[*SAMPLING, GUIDED]}.")
    if spec.sampling == GUIDED:
        return capture_guided(model, dataset, layer, spec, batch_size=batch_size, device=device, progress=progress)
    recorder = spec.recorder(layer)
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
