"""The selection / confirmation split: seeded, by image id, balanced per class, recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest

from debugatlas.core import DebugAtlasError
from debugatlas.patches.split import split_images


def _data(n=301, k=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(10 * n)[:n]
    return ids, rng.integers(0, k, n)


def test_halves_are_disjoint_and_cover_every_image():
    ids, labels = _data()
    split = split_images(ids, labels, seed=3)
    sel, conf = split.ids("selection"), split.ids("confirmation")
    assert np.intersect1d(sel, conf).size == 0
    assert np.array_equal(np.sort(np.concatenate([sel, conf])), np.sort(ids))
    for cls in range(4):
        n = int((labels == cls).sum())
        assert split.ids("selection", cls).size == n // 2 and split.ids("confirmation", cls).size == n - n // 2
        members = set(ids[labels == cls].tolist())
        assert set(split.ids("selection", cls).tolist()) <= members


def test_same_seed_same_split_in_any_order_and_with_repeats():
    ids, labels = _data()
    first = split_images(ids, labels, seed=7)
    order = np.random.default_rng(1).permutation(ids.size)
    again = split_images(np.concatenate([ids[order], ids[:50]]), np.concatenate([labels[order], labels[:50]]), seed=7)
    assert np.array_equal(first.selection, again.selection) and np.array_equal(first.confirmation, again.confirmation)
    other = split_images(ids, labels, seed=8)
    assert not np.array_equal(first.selection, other.selection)


def test_an_image_keeps_its_half_when_others_are_added():
    ids, labels = _data()
    small = split_images(ids[:150], np.zeros(150, int), seed=2)
    large = split_images(ids, np.zeros(ids.size, int), seed=2)
    # ordering by hash is shared, so the smaller selection is the start of the larger one's order
    assert np.isin(small.selection, large.selection).mean() > 0.9


def test_selection_rate_is_unbiased_over_seeds():
    ids = np.arange(40)
    hits = np.zeros(40)
    for seed in range(200):
        hits[split_images(ids, np.zeros(40, int), seed).selection] += 1
    assert hits.sum() == 200 * 20 and 60 < hits.min() and hits.max() < 140  # every id about half the time


def test_mask_record_and_small_classes():
    split = split_images([5, 6, 7, 9], [0, 0, 1, 2], seed=0, fraction=0.5)
    assert split.ids("confirmation", 1).tolist() == [7] and split.ids("selection", 2).size == 0
    record = json.loads(json.dumps(split.to_dict(["zero", "one", "two"])))
    assert record["seed"] == 0 and record["selection"]["n_images"] == 1 and record["confirmation"]["n_images"] == 3
    assert record["confirmation"]["per_class"] == {"zero": 1, "one": 1, "two": 1}
    assert sorted(record["selection"]["image_ids"] + record["confirmation"]["image_ids"]) == [5, 6, 7, 9]
    vectors = np.array([5, 5, 6, 9, 7])
    assert split.mask(vectors, "confirmation").tolist() == [v in split.confirmation for v in vectors]
    assert "image_ids" not in split.to_dict(include_ids=False)["selection"]


def test_bad_inputs():
    with pytest.raises(DebugAtlasError, match="two labels"):
        split_images([1, 1], [0, 1], seed=0)
    with pytest.raises(DebugAtlasError, match="fraction"):
        split_images([1], [0], seed=0, fraction=1.0)
    with pytest.raises(DebugAtlasError, match="one label per id"):
        split_images([1, 2], [0], seed=0)
    with pytest.raises(DebugAtlasError, match="half"):
        split_images([1], [0], seed=0).ids("test")
