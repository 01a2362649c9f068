"""Held-out confirmation: the analysed images of each class split into a selection and a confirmation half.

Candidates are screened and ranked on the selection half; every reported rate is measured on the
confirmation half. The split depends only on the seed and the image ids (dataset indices): each
id gets a seeded 64-bit hash, and within each class the ids with the smallest hashes form the
selection half. The same seed and ids give the same split in any order; no image is in both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import DebugAtlasError

HALVES = ("selection", "confirmation")
SPLIT_RULE = ("per class, images ordered by a seeded hash of their id; the first `fraction` "
              "(rounded down) form the selection half, the rest the confirmation half")
_MASK = (1 << 64) - 1


def _hash(ids: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (id + seed-derived offset): a fixed, platform-independent uint64 per id."""
    offset = np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK)
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + offset
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class Split:
    """Image ids of each half, sorted int64 arrays, with their labels.

    selection / confirmation: ids [n] int64; selection_labels / confirmation_labels: [n] int64.
    seed, fraction: how it was drawn (the selection share of each class, rounded down).
    """

    seed: int
    fraction: float
    selection: np.ndarray
    confirmation: np.ndarray
    selection_labels: np.ndarray
    confirmation_labels: np.ndarray

    def ids(self, half: str, cls: int | None = None) -> np.ndarray:
        """Sorted ids of one half ("selection" or "confirmation"), optionally of class `cls` only."""
        if half not in HALVES:
            raise DebugAtlasError(f"`half={half!r}` is not one of {list(HALVES)}.")
        ids, labels = (self.selection, self.selection_labels) if half == "selection" else (
            self.confirmation, self.confirmation_labels)
        return ids if cls is None else ids[labels == int(cls)]

    def mask(self, image_ids: Any, half: str) -> np.ndarray:
        """Bool [n]: which of `image_ids` (e.g. an ActivationSet's per-vector ids) are in `half`."""
        return np.isin(np.asarray(image_ids, dtype=np.int64).reshape(-1), self.ids(half))

    def to_dict(self, class_names: list[str] | None = None, include_ids: bool = True) -> dict:
        """The record for summary.json's `config.split`: rule, seed, counts per class, and the ids."""
        def per_class(labels: np.ndarray) -> dict:
            values, counts = np.unique(labels, return_counts=True)
            name = (lambda c: class_names[c]) if class_names is not None else str  # noqa: E731
            return {name(int(c)): int(n) for c, n in zip(values, counts)}

        out: dict = {"rule": SPLIT_RULE, "seed": int(self.seed), "fraction": float(self.fraction)}
        for half in HALVES:
            ids = self.ids(half)
            entry = {"n_images": int(ids.size),
                     "per_class": per_class(getattr(self, f"{half}_labels"))}
            if include_ids:
                entry["image_ids"] = [int(i) for i in ids]
            out[half] = entry
        return out


def split_images(image_ids: Any, labels: Any, seed: int, fraction: float = 0.5) -> Split:
    """Split the images of each class by id into a selection and a confirmation half.

    image_ids, labels: [n] per image, or per sampled vector (repeated ids are taken once; an id
    with two labels is an error). Each class puts floor(fraction x its images) into selection, so
    a class with one image has it in the confirmation half.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise DebugAtlasError(f"`fraction={fraction!r}` must be in (0, 1): the selection share of each class.")
    ids = np.asarray(image_ids).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    if ids.shape != lab.shape:
        raise DebugAtlasError(
            f"`image_ids` has {ids.size} entries and `labels` has {lab.size}. HINT: pass one label per id."
        )
    if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
        raise DebugAtlasError("`image_ids` must be non-negative integer dataset indices.")
    ids, lab = ids.astype(np.int64), lab.astype(np.int64)
    pairs = np.unique(np.stack([ids, lab], 1), axis=0) if ids.size else np.zeros((0, 2), np.int64)
    uniq, counts = np.unique(pairs[:, 0], return_counts=True)
    if (counts > 1).any():
        bad = int(uniq[counts > 1][0])
        raise DebugAtlasError(f"Image id {bad} has two labels {sorted(set(lab[ids == bad].tolist()))}. "
                              "HINT: pass the ids and labels of the same images.")
    ids, lab = pairs[:, 0], pairs[:, 1]
    keys = _hash(ids, seed)
    chosen = np.zeros(ids.size, dtype=bool)
    for cls in np.unique(lab):
        members = np.flatnonzero(lab == cls)
        order = members[np.lexsort((ids[members], keys[members]))]
        chosen[order[: int(np.floor(float(fraction) * members.size))]] = True
    return Split(int(seed), float(fraction), ids[chosen], ids[~chosen], lab[chosen], lab[~chosen])
