"""`ActivationSet`: the record that capture hands to every later stage."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

RULE_RANDOM, RULE_ATTRIBUTION = 0, 1
RULES = {RULE_RANDOM: "random", RULE_ATTRIBUTION: "attribution"}


@dataclass
class ActivationSet:
    """Sampled activation vectors of one layer, each pointing back to a dataset image.

    vectors:   [N, C] float16 (or the dtype asked for), on the CPU; with the on-disk store a
               tensor over a memory-mapped .npy file (indexing copies the rows into memory).
    image_ids: [N] int64, indices into the dataset that was passed.
    labels:    [N] int64 true class of the image.
    preds:     [N] int64 predicted class of the image (-1 where unknown).
    positions: [N, 2] int64 (row, col) of the vector in the layer's output; tokens are (0, t);
               pooled outputs are (-1, -1).
    layer:     the layer's name in `named_modules()`.
    spatial_shape: (H, W) of the layer output, (1, T) for tokens, None for pooled outputs.
    num_offered: how many vectors were offered to the reservoir (>= N when the cap was hit).
    rule:      [N] int8, which sampling rule chose each vector: RULE_RANDOM (0, uniformly random
               interior position) or RULE_ATTRIBUTION (1, highest attribution); None means every
               vector was chosen at random. Densities shown to a user count rule-0 vectors only.
    """

    vectors: torch.Tensor
    image_ids: torch.Tensor
    labels: torch.Tensor
    preds: torch.Tensor
    positions: torch.Tensor
    layer: str
    spatial_shape: tuple[int, int] | None
    num_offered: int = 0
    rule: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def per_image(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image ids, labels, preds) of each captured image once, in increasing id order."""
        ids = self.image_ids.numpy()
        uid, first = np.unique(ids, return_index=True)
        return uid, self.labels.numpy()[first], self.preds.numpy()[first]

    def subset(self, index: torch.Tensor | np.ndarray) -> "ActivationSet":
        """The samples selected by a boolean mask or an integer index."""
        index = torch.as_tensor(index)
        return ActivationSet(
            self.vectors[index], self.image_ids[index], self.labels[index], self.preds[index],
            self.positions[index], self.layer, self.spatial_shape, self.num_offered,
            None if self.rule is None else self.rule[index],
        )

    def rules(self) -> torch.Tensor:
        """[N] int8 rule of every vector (all RULE_RANDOM when `rule` is None)."""
        if self.rule is None:
            return torch.zeros(len(self), dtype=torch.int8)
        return self.rule.to(torch.int8)

    def random_mask(self) -> torch.Tensor:
        """[N] bool, True for vectors chosen by the uniformly random rule (the unbiased sample)."""
        return self.rules() == RULE_RANDOM
