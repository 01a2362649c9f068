"""Reading a user's dataset: checked `(image, label)` items, batches in index order, class names."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from .data_checks import as_image_tensor
from .errors import DebugAtlasError


def iterate_dataset(dataset, batch_size: int = 128) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (image_ids, images, labels) batches of a map-style dataset in index order.

    Checks that items are `(image, label)` with a float image tensor in [0, 1] of shape [C, H, W].
    """
    n = len(dataset)
    if n == 0:
        raise DebugAtlasError("The dataset is empty. HINT: pass a dataset with at least one image.")
    for start in range(0, n, batch_size):
        ids = list(range(start, min(n, start + batch_size)))
        images, labels = zip(*(_check_item(dataset[i], i) for i in ids))
        yield torch.tensor(ids), torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _check_item(item, index: int) -> tuple[torch.Tensor, int]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DebugAtlasError(
            f"dataset[{index}] is a {type(item).__name__}, not an (image, label) pair. "
            "HINT: wrap the dataset so that it yields (image tensor in [0, 1], int label)."
        )
    return as_image_tensor(item[0], index).float(), int(item[1])


def load_images(dataset, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Stack the images `dataset[i][0]` for the given ids into [N, C, H, W] float32."""
    ids = torch.as_tensor(ids).tolist()
    return torch.stack([_check_item(dataset[i], i)[0] for i in ids])
