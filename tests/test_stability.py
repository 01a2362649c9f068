"""Stability: a finding the vectors carry recurs in other layouts; one that a single layout made up does not."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from debugatlas.artifacts.record import Finding
from debugatlas.atlas import build_atlas
from debugatlas.capture import ActivationSet
from debugatlas.core import DebugAtlasError
from debugatlas.layout import Layout
from debugatlas.pipeline.config import AnalysisConfig
from debugatlas.pipeline.stability import FEW, relayout, stability_of, variants
from debugatlas.render import whitening_matrix

CLUSTERS, PER = 12, 50
OPTIONS = {"method": "umap", "metric": "cosine", "backend": "torch", "device": "cpu", "n_epochs": 100}
GRID = 10


@pytest.fixture(scope="module")
def clustered():
    """12 clusters of 50 vectors (16 channels, ReLU); cluster 0 is class 1 (B), the rest class 0 (A).
    Every sample pushes toward B (attribution 1 to B, 0 to A), so only the feature decides."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(CLUSTERS, 16, generator=gen) * 2
    vectors = torch.relu(centres.repeat_interleave(PER, 0) + 0.4 * torch.randn(CLUSTERS * PER, 16, generator=gen))
    cluster = torch.arange(CLUSTERS).repeat_interleave(PER)
    labels = (cluster == 0).long()
    n = len(labels)
    acts = ActivationSet(vectors.half(), torch.arange(n), labels, labels, torch.zeros(n, 2, dtype=torch.long),
                         "layer2", (4, 4), n)
    attributions = torch.stack([torch.zeros(n), torch.ones(n)], 1)
    return acts, attributions, cluster.numpy(), whitening_matrix(acts.vectors.float())


def _finding(cell) -> Finding:
    return Finding(cell=tuple(cell), statement="", patch="p", source="icon", placement="random", n_images=10,
                   flip_rate=0.5, flip_rate_ci=None, p_value=None, noise_flip_rate=None, natural_flip_rate=None,
                   exemplar_ids=(), icon=None)


def _runs(acts, attributions, atlas, whitening, k=5):
    return relayout(acts, attributions, atlas, whitening, OPTIONS, variants(0, 15, 0.05, k, len(acts)),
                    min_count=2, n_exemplars=8)


def test_a_feature_the_vectors_carry_recurs_in_every_layout(clustered):
    acts, attributions, cluster, whitening = clustered
    xy = Layout(seed=0, n_neighbors=15, min_dist=0.05, **OPTIONS).fit_transform(acts.vectors.float().numpy())
    atlas = build_atlas(xy, acts, attributions, GRID, 2, 8)
    cell = max(atlas.valid_cells(), key=lambda c: int((cluster[atlas.members(c)] == 0).sum()))
    runs = _runs(acts, attributions, atlas, whitening)
    out = stability_of(_finding(cell), 0, 1, atlas, acts, whitening, runs)
    assert out["of"] == 5 and out["recurred"] == 5, out
    assert {(l["seed"], l["n_neighbors"], l["min_dist"]) for l in out["layouts"]} == {
        (v.seed, v.n_neighbors, round(v.min_dist, 4)) for v in variants(0, 15, 0.05, 5, len(acts))}
    assert all(l["cosine"] >= 0.8 for l in out["layouts"])
    # a cell that pushes toward A in the other layouts is not the finding again, whatever it looks like
    away = stability_of(_finding(cell), 1, 0, atlas, acts, whitening, runs)
    assert away["recurred"] == 0 and all(l["cell"] is None for l in away["layouts"])


def test_a_cell_one_layout_made_up_recurs_in_at_most_one_of_five(clustered):
    acts, attributions, cluster, whitening = clustered
    # a layout of its own: one sample of every cluster thrown together in cell (5, 5), the rest where UMAP puts them
    xy = Layout(seed=0, n_neighbors=15, min_dist=0.05, **OPTIONS).fit_transform(acts.vectors.float().numpy())
    xy = np.clip(xy, 0, 1) * 0.45  # every other sample in the lower left quarter
    picked = [int(np.flatnonzero(cluster == c)[3]) for c in range(CLUSTERS)]
    xy[picked] = (5.5 / GRID, 5.5 / GRID)
    atlas = build_atlas(xy, acts, attributions, GRID, 2, 8)
    assert sorted(atlas.members((5, 5)).tolist()) == sorted(picked)
    out = stability_of(_finding((5, 5)), 0, 1, atlas, acts, whitening, _runs(acts, attributions, atlas, whitening))
    assert out["of"] == 5 and out["recurred"] <= 1 <= FEW, out


def test_variants_and_the_option_are_checked():
    got = variants(3, 50, 0.05, 7, 1000)
    assert [v.seed for v in got] == [4, 5, 6, 7, 8, 9, 10]
    assert [v.n_neighbors for v in got[:5]] == [50, 30, 80, 50, 50] and got[4].min_dist == pytest.approx(0.125)
    assert variants(0, 50, 0.05, 3, 20)[2].n_neighbors == 19  # never more neighbours than other samples
    with pytest.raises(DebugAtlasError, match="stability_layouts"):
        AnalysisConfig.from_options({"stability_layouts": -1})
