"""shortcut.py: the suspected-shortcut flag of a feature on hand-made atlases, and the island ranking."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from debugatlas.atlas import build_atlas
from debugatlas.capture import ActivationSet
from debugatlas.core import DebugAtlasError
from debugatlas.shortcut import MIN_ENRICHMENT, feature_evidence, is_suspected_shortcut, shortcut_candidates


def _atlas(cells_samples: dict, g: int = 5):
    """An atlas whose cell (i, j) holds the samples cells_samples[(i, j)], each (label, image id[, (row, col)])."""
    xy, labels, ids, pos = [], [], [], []
    for (i, j), samples in cells_samples.items():
        for sample in samples:
            xy.append([(i + 0.5) / g, (j + 0.5) / g])
            labels.append(sample[0])
            ids.append(sample[1])
            pos.append(sample[2] if len(sample) > 2 else (0, 0))
    n = len(labels)
    gen = torch.Generator().manual_seed(0)
    acts = ActivationSet(torch.rand(n, 3, generator=gen).half(), torch.tensor(ids), torch.tensor(labels),
                         torch.tensor(labels), torch.tensor(pos), "layer2", (4, 4), n)
    atlas = build_atlas(np.array(xy), acts, torch.zeros(n, 2), grid_size=g, n_exemplars=4)
    return atlas, acts


def _real(verdict="confirmed", cell=(1, 1), rate=0.9):
    return SimpleNamespace(patch_id=f"c{cell[0]}-{cell[1]}-ex0", cell=cell, placement="random", n_images=30,
                           flip_rate=rate, flip_rate_ci=(rate - 0.2, min(rate + 0.05, 1.0)), noise_flip_rate=0.05,
                           natural_flip_rate=0.0, verdict=verdict)


def _planted(others_in_feature: int = 0, position=None):
    """12 images of B=1, 10 of them in a feature over cells (1, 1) and (1, 2); 12 images of class 0
    and 12 of class 2 elsewhere, `others_in_feature` of class 2 inside the feature."""
    where = (lambda k: position) if position is not None else (lambda k: (k % 4, (k // 4) % 4))
    feature = [(1, 100 + k, where(k)) for k in range(10)]
    feature += [(2, 300 + k, where(k)) for k in range(others_in_feature)]
    return _atlas({(1, 1): feature[::2], (1, 2): feature[1::2],
                   (3, 3): [(1, 110), (1, 111)] + [(0, 200 + k) for k in range(12)],
                   (4, 4): [(2, 300 + k) for k in range(others_in_feature, 12)]})


def _evidence(atlas, acts, cells=((1, 1), (1, 2)), b=1, exemplar_labels=(1, 1, 1, 1), real=(_real(),)):
    return feature_evidence(atlas, labels=acts.labels, image_ids=acts.image_ids, cells=cells, b=b,
                            exemplar_labels=exemplar_labels, real=real, positions=acts.positions,
                            spatial_shape=acts.spatial_shape)


def test_a_feature_only_b_has_whose_real_crops_flip_is_flagged_over_all_its_cells():
    atlas, acts = _planted()
    ev = _evidence(atlas, acts)
    # B: 10 of 12 images in the feature; the other class showing it most has 0 of 12: (10.5 / 13) / (0.5 / 13)
    assert (ev.images_b, ev.n_images_b, ev.other_images, ev.n_images_other) == (10, 12, 0, 12)
    assert ev.enrichment == pytest.approx(21.0) and ev.purity == 1.0 and ev.exemplar_b_share == 1.0
    assert ev.real_beats_noise == ev.real_confirmed == ev.real_tested == 1 and ev.suspected
    plain = ev.to_dict()
    assert plain["cells"] == [[1, 1], [1, 2]] and plain["suspected"] is True
    assert plain["real_crop"]["patch"] == "c1-1-ex0" and plain["real_crop"]["flip_rate_ci"] == pytest.approx([0.7, 0.95])
    # one of its two cells alone holds 5 of B's images: (5.5 / 13) / (0.5 / 13) = 11, still flagged
    assert _evidence(atlas, acts, cells=[(1, 1)]).enrichment == pytest.approx(11.0)


def test_each_criterion_alone_withdraws_the_flag():
    atlas, acts = _planted()
    assert not _evidence(atlas, acts, real=(_real("not_confirmed"),)).suspected  # real pixels do not flip A
    # a real crop that beats the noise patch but not a crop of a real B (which may carry the shortcut too)
    ev = _evidence(atlas, acts, real=(_real("natural"), _real("not_confirmed")))
    assert (ev.real_beats_noise, ev.real_confirmed, ev.real_tested) == (1, 0, 2) and ev.suspected
    assert not _evidence(atlas, acts, real=()).suspected  # only synthesized patches confirmed
    assert not _evidence(atlas, acts, exemplar_labels=(1, 0, 0, 2)).suspected  # exemplars mostly not of B
    assert not _evidence(atlas, acts, b=0).suspected  # another class's feature
    # a natural feature of B that another class shares: 3 of class 2's 12 images show it, (10.5 / 13) / (3.5 / 13) = 3
    atlas, acts = _planted(others_in_feature=3)
    ev = _evidence(atlas, acts)
    assert ev.other_class == 2 and ev.other_images == 3 and ev.enrichment == pytest.approx(3.0) and ev.enrichment < MIN_ENRICHMENT
    assert not ev.suspected
    assert not is_suspected_shortcut(float("nan"), 1, 50.0) and is_suspected_shortcut(0.6, 1, MIN_ENRICHMENT)


def test_the_flag_does_not_depend_on_where_the_feature_sits_and_the_map_shows_it():
    spread, acts = _planted()
    ev = _evidence(spread, acts)
    assert ev.suspected and sum(map(sum, ev.positions)) == 10 and len(ev.positions) == 4 and ev.spot < 1.0
    fixed, acts = _planted(position=(3, 3))  # a tag at one fixed place
    ev = _evidence(fixed, acts)
    assert ev.suspected and ev.positions[3][3] == 10 and ev.spot == 1.0  # a 4 x 4 output: one position


def test_bad_inputs_are_explained():
    atlas, acts = _planted()
    assert not _evidence(atlas, acts, cells=[(0, 0)], exemplar_labels=()).suspected  # an empty cell
    with pytest.raises(DebugAtlasError, match="outside"):
        _evidence(atlas, acts, cells=[(7, 0)])
    with pytest.raises(DebugAtlasError, match="image_ids"):
        feature_evidence(atlas, labels=acts.labels[:2], image_ids=acts.image_ids, cells=[(1, 1)], b=1,
                         exemplar_labels=())
    with pytest.raises(DebugAtlasError, match="class index"):
        _evidence(atlas, acts, b=-1)


def test_islands_of_b_are_ranked_for_the_patch_tests():
    # cell (3, 3): 6 samples of B=1, its neighbour (3, 4): 4 more -> island purity 1.0;
    # the ring at distance 2..3: (1, 1) 1 of 4 and (5, 5) 0 of 4 are B -> neighbour purity 0.125
    atlas, acts = _atlas({(3, 3): [(1, k) for k in range(6)], (3, 4): [(1, 10 + k) for k in range(4)],
                          (1, 1): [(0, 20), (0, 21), (0, 22), (1, 23)], (5, 5): [(0, 30 + k) for k in range(4)],
                          (0, 8): [(1, 40 + k) for k in range(9)]}, g=9)
    ranked = shortcut_candidates(atlas, acts.labels, 1)
    assert {c for c, _ in ranked[:2]} == {(3, 3), (3, 4)} and ranked[0][1] == 0.875
    # a B cell inside a B region: the ring is B-rich too, far down the ranking
    atlas, acts = _atlas({(3, 3): [(1, k) for k in range(6)], (1, 3): [(1, 10 + k) for k in range(4)],
                          (5, 3): [(1, 20), (1, 21), (1, 22), (0, 23)]}, g=7)
    gaps = dict(shortcut_candidates(atlas, acts.labels, 1))
    assert gaps[(3, 3)] == pytest.approx(1 - 7 / 8)
