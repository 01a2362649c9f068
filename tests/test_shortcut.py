"""shortcut.py: the suspected-shortcut flag on hand-made atlases, and the effective receptive field."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from debugatlas.atlas import build_atlas
from debugatlas.capture import ActivationSet
from debugatlas.core import DebugAtlasError
from debugatlas.shortcut import (
    effective_field_fraction, is_suspected_shortcut, shortcut_candidates, shortcut_evidence,
)


def _atlas(cells_labels: dict, g: int = 5):
    """An atlas whose cell (i, j) holds one sample per entry of cells_labels[(i, j)] with those labels."""
    xy, labels = [], []
    for (i, j), labs in cells_labels.items():
        for lab in labs:
            xy.append([(i + 0.5) / g, (j + 0.5) / g])
            labels.append(lab)
    n = len(labels)
    gen = torch.Generator().manual_seed(0)
    acts = ActivationSet(torch.rand(n, 3, generator=gen).half(), torch.arange(n), torch.tensor(labels),
                         torch.tensor(labels), torch.zeros(n, 2, dtype=torch.long), "layer2", (4, 4), n)
    atlas = build_atlas(np.array(xy), acts, torch.zeros(n, 2), grid_size=g, n_exemplars=4)
    return atlas, acts.labels


def test_an_island_of_b_with_a_small_field_is_flagged():
    # cell (3, 3): 6 samples of B=1, its neighbour (3, 4): 4 more -> island purity 1.0;
    # the ring at distance 2..3: (1, 1) 1 of 4 and (5, 5) 0 of 4 are B -> neighbour purity 0.125
    atlas, labels = _atlas({(3, 3): [1] * 6, (3, 4): [1] * 4, (1, 1): [0, 0, 0, 1], (5, 5): [0] * 4,
                            (0, 8): [1] * 9}, g=9)
    ev = shortcut_evidence(atlas, labels, (3, 3), 1, field_fraction=0.1)
    assert ev.purity == 1.0 and ev.island_purity == 1.0 and ev.neighbour_samples == 8
    assert ev.neighbour_purity == 0.125 and ev.purity_gap == 0.875
    assert ev.exemplar_b_share == 1.0 and ev.suspected
    assert ev.to_dict()["cell"] == [3, 3] and ev.to_dict()["suspected"] is True
    # each criterion alone withdraws the flag
    assert not shortcut_evidence(atlas, labels, (3, 3), 1, field_fraction=0.4).suspected
    assert not shortcut_evidence(atlas, labels, (3, 3), 1, field_fraction=0.1, confirmed=False).suspected
    assert not shortcut_evidence(atlas, labels, (3, 3), 0, field_fraction=0.1).suspected  # wrong class
    assert not is_suspected_shortcut(0.5, 0.1, 1.0, 0.1)  # exemplars only half from B
    ranked = shortcut_candidates(atlas, labels, 1)
    assert {c for c, _ in ranked[:2]} == {(3, 3), (3, 4)} and ranked[0][1] == 0.875


def test_a_b_cell_inside_a_b_region_or_next_to_a_is_not_flagged():
    # a natural B feature: the ring is B-rich too (7 of 8 samples), gap 1 - 0.875 < 0.5
    atlas, labels = _atlas({(3, 3): [1] * 6, (1, 3): [1, 1, 1, 1], (5, 3): [1, 1, 1, 0]}, g=7)
    ev = shortcut_evidence(atlas, labels, (3, 3), 1, field_fraction=0.05)
    assert ev.neighbour_purity == pytest.approx(7 / 8) and not ev.suspected
    # a lone B cell beside a cell of A: island purity 2 / 8, gap 0.25
    atlas, labels = _atlas({(3, 3): [1, 1], (3, 4): [0] * 6, (1, 1): [0] * 5}, g=7)
    ev = shortcut_evidence(atlas, labels, (3, 3), 1, field_fraction=0.05)
    assert ev.island_purity == 0.25 and ev.neighbour_purity == 0.0 and not ev.suspected


def test_ring_widens_then_falls_back_to_the_atlas_share():
    # nothing within distance 3; at distance 4 a cell with 5 samples of A -> neighbour purity 0
    atlas, labels = _atlas({(4, 4): [1] * 4, (0, 0): [0] * 5}, g=9)
    ev = shortcut_evidence(atlas, labels, (4, 4), 1, field_fraction=0.1)
    assert ev.neighbour_samples == 5 and ev.neighbour_purity == 0.0 and ev.suspected
    # beyond distance 6 nothing is looked at: the atlas-wide share of B (4 of 9) stands in
    atlas, labels = _atlas({(7, 7): [1] * 4, (0, 0): [0] * 5}, g=15)
    ev = shortcut_evidence(atlas, labels, (7, 7), 1, field_fraction=0.1)
    assert ev.neighbour_samples == 0 and ev.neighbour_purity == pytest.approx(4 / 9)
    assert ev.purity_gap == pytest.approx(5 / 9) and ev.suspected


def test_bad_inputs_are_explained():
    atlas, labels = _atlas({(2, 2): [1] * 4})
    assert not shortcut_evidence(atlas, labels, (0, 0), 1, field_fraction=0.1).suspected  # an empty cell
    with pytest.raises(DebugAtlasError, match="outside"):
        shortcut_evidence(atlas, labels, (7, 0), 1, field_fraction=0.1)
    with pytest.raises(DebugAtlasError, match="field_fraction"):
        shortcut_evidence(atlas, labels, (2, 2), 1, field_fraction=3.0)
    with pytest.raises(DebugAtlasError, match="labels"):
        shortcut_evidence(atlas, labels[:2], (2, 2), 1, field_fraction=0.1)


def test_effective_field_of_hand_made_layers():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.ones_(conv.weight)
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 1, 8, 8))
    # a 3x3 box filter: 9 equal gradients, 90 % of the mass needs all 9 of the 64 pixels
    assert effective_field_fraction(model, "0", (1, 8, 8)) == 9 / 64
    ident = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(64, 2))
    assert effective_field_fraction(ident, "0", (1, 8, 8)) == 1 / 64
    assert effective_field_fraction(ident, "1", (1, 8, 8)) == 1.0  # pooled / flat output sees everything
    model.train()
    effective_field_fraction(model, "0", (1, 8, 8))
    assert model.training and conv.weight.requires_grad  # left as found
