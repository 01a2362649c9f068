import numpy as np
import pytest
import torch

from debugatlas.core import DebugAtlasError
from debugatlas.atlas import (
    MIN_FILTER_SAMPLES, Atlas, bin_points, build_atlas, class_filter_mask, class_filtered_atlas, comparison_atlas,
    comparison_mask, filter_overlap, view_samples,
)
from debugatlas.capture import ActivationSet


def make_acts(n=300, c=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centers = rng.normal(size=(k, c)) * 3
    vectors = centers[labels] + rng.normal(size=(n, c))
    preds = np.where(rng.random(n) < 0.8, labels, rng.integers(0, k, n))
    acts = ActivationSet(
        vectors=torch.tensor(vectors, dtype=torch.float16),
        image_ids=torch.arange(n),
        labels=torch.tensor(labels),
        preds=torch.tensor(preds),
        positions=torch.zeros(n, 2, dtype=torch.long),
        layer="layer3",
        spatial_shape=(6, 6),
        num_offered=n,
    )
    attr = torch.tensor(rng.normal(size=(n, k)), dtype=torch.float32)
    return acts, attr


def border_points(g, rng, n=400):
    """Random points, points exactly on every border k/G, and the corners 0 and 1."""
    edges = np.arange(g + 1) / g
    pts = [rng.random((n, 2))]
    pts.append(np.stack([edges, rng.random(g + 1)], 1))
    pts.append(np.stack([rng.random(g + 1), edges], 1))
    pts.append(np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [np.nextafter(1.0, 0), 0.5]]))
    return np.concatenate(pts)


@pytest.mark.parametrize("g", [1, 7, 20, 40, 49, 80])
def test_every_point_in_exactly_one_cell(g):
    rng = np.random.default_rng(g)
    xy = border_points(g, rng)
    cells = bin_points(xy, g)
    assert cells.shape == xy.shape and cells.dtype == np.int64
    assert cells.min() >= 0 and cells.max() <= g - 1
    edges = np.arange(g + 1) / g
    for axis in range(2):
        v, k = xy[:, axis], cells[:, axis]
        inside = (edges[k] <= v) & ((v < edges[k + 1]) | ((k == g - 1) & (v == 1.0)))
        assert inside.all()
        # membership counted over all cells by interval tests: exactly one cell holds each point
        member = (edges[None, :-1] <= v[:, None]) & (v[:, None] < edges[None, 1:])
        member[:, -1] |= v == 1.0
        assert (member.sum(1) == 1).all()
        assert (member.argmax(1) == k).all()
    # a point on a border goes to the cell above it
    on = np.arange(g) / g
    assert (bin_points(np.stack([on, on], 1), g) == np.arange(g)[:, None]).all()
    assert (bin_points([[1.0, 1.0]], g) == g - 1).all()


def test_bin_points_bad_inputs():
    with pytest.raises(DebugAtlasError, match="grid_size"):
        bin_points(np.zeros((3, 2)), 0)
    with pytest.raises(DebugAtlasError, match="grid_size"):
        bin_points(np.zeros((3, 2)), 2.5)
    with pytest.raises(DebugAtlasError, match=r"\[N, 2\]"):
        bin_points(np.zeros((3, 3)), 4)
    with pytest.raises(DebugAtlasError, match="HINT"):
        bin_points([[0.5, 1.2]], 4)
    with pytest.raises(DebugAtlasError, match="NaN"):
        bin_points([[np.nan, 0.2]], 4)


def brute_force(xy, acts, attr, g, index):
    vec = acts.vectors.float().numpy()
    lab = acts.labels.numpy()
    cells = {}
    for r, p in enumerate(index):
        i = min(int(np.floor(xy[r, 0] * g)), g - 1)
        j = min(int(np.floor(xy[r, 1] * g)), g - 1)
        cells.setdefault((i, j), []).append(p)
    return cells, vec, lab


@pytest.mark.parametrize("g", [1, 5, 20, 80])
def test_build_atlas_matches_loop_reference(g):
    acts, attr = make_acts(n=250, k=4)
    rng = np.random.default_rng(1)
    xy = rng.random((len(acts), 2))
    atlas = build_atlas(xy, acts, attr, grid_size=g, n_exemplars=5)
    n, c = acts.vectors.shape
    assert isinstance(atlas, Atlas)
    assert atlas.counts.shape == (g, g) and atlas.counts.dtype == np.int64
    assert atlas.mean_activation.shape == (g, g, c) and atlas.mean_activation.dtype == np.float32
    assert atlas.class_histogram.shape == (g, g, 4)
    assert atlas.mean_attribution.shape == (g, g, 4) and atlas.mean_attribution.dtype == np.float32
    assert atlas.counts.sum() == n
    assert (atlas.class_histogram.sum(-1) == atlas.counts).all()
    cells, vec, lab = brute_force(xy, acts, attr, g, np.arange(n))
    attr_np = attr.numpy()
    assert set(cells) == {cell for cell in zip(*np.nonzero(atlas.counts))}
    for (i, j), members in cells.items():
        assert atlas.counts[i, j] == len(members)
        np.testing.assert_allclose(atlas.mean_activation[i, j], vec[members].mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(atlas.mean_attribution[i, j], attr_np[members].mean(0), rtol=1e-5, atol=1e-5)
        assert (atlas.class_histogram[i, j] == np.bincount(lab[members], minlength=4)).all()
        assert sorted(atlas.members((i, j)).tolist()) == sorted(members)
        ex = atlas.exemplars[(i, j)]
        assert len(ex) == min(5, len(members)) and set(ex) <= set(members)
        mean = atlas.mean_activation[i, j]
        cos_all = {m: vec[m] @ mean / (np.linalg.norm(vec[m]) * np.linalg.norm(mean)) for m in members}
        cos_ex = [cos_all[m] for m in ex]
        assert all(x >= y - 1e-9 for x, y in zip(cos_ex, cos_ex[1:]))
        rest = [cos_all[m] for m in members if m not in ex]
        assert not rest or min(cos_ex) >= max(rest) - 1e-9
    assert (atlas.mean_activation[atlas.counts == 0] == 0).all()


def test_atlas_with_sample_index_and_borders():
    acts, attr = make_acts(n=120, k=3)
    index = np.array([5, 7, 11, 40, 41, 90, 119])
    xy = np.array([[0, 0], [0.25, 0.25], [0.5, 0.5], [0.75, 0.75], [1, 1], [0.2499, 0.5], [1, 0]])
    atlas = build_atlas(xy, acts, attr, grid_size=4, sample_index=index, layout_params={"method": "x"})
    assert atlas.cells.tolist() == [[0, 0], [1, 1], [2, 2], [3, 3], [3, 3], [0, 2], [3, 0]]
    assert atlas.counts.sum() == 7 and atlas.counts[3, 3] == 2
    assert sorted(atlas.members((3, 3)).tolist()) == [40, 41]
    assert set(atlas.exemplars[(3, 3)]) == {40, 41}
    np.testing.assert_allclose(atlas.mean_attribution[3, 3], attr[[40, 41]].mean(0).numpy(), rtol=1e-6)
    assert atlas.layout_params == {"method": "x"}
    assert atlas.sample_index.tolist() == index.tolist()


def test_min_count_masks_cells():
    acts, attr = make_acts(n=10, k=2)
    xy = np.array([[0.1, 0.1]] * 5 + [[0.9, 0.9]] * 3 + [[0.1, 0.9]] * 2)
    atlas = build_atlas(xy, acts, attr, grid_size=2, min_count=3, n_exemplars=2)
    assert atlas.valid.tolist() == [[True, False], [False, True]]
    assert atlas.valid_cells() == [(0, 0), (1, 1)]
    assert set(atlas.exemplars) == {(0, 0), (1, 1)}
    assert all(len(v) == 2 for v in atlas.exemplars.values())
    assert atlas.counts[0, 1] == 2  # counted, just not valid


def test_build_atlas_bad_inputs():
    acts, attr = make_acts(n=20, k=3)
    xy = np.random.default_rng(0).random((20, 2))
    with pytest.raises(DebugAtlasError, match="attributions"):
        build_atlas(xy, acts, attr[:10])
    with pytest.raises(DebugAtlasError, match="rows"):
        build_atlas(xy[:5], acts, attr)
    with pytest.raises(DebugAtlasError, match="min_count"):
        build_atlas(xy, acts, attr, min_count=0)
    with pytest.raises(DebugAtlasError, match="sample_index"):
        build_atlas(xy[:2], acts, attr, sample_index=[0, 20])
    with pytest.raises(DebugAtlasError, match="ActivationSet"):
        build_atlas(xy, acts.vectors, attr)
    bad = attr.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(DebugAtlasError, match="NaN"):
        build_atlas(xy, acts, bad)


def test_filter_overlap_is_the_share_of_filtered_samples_in_both():
    attr = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [0.5, 0.4, 0.9], [1.0, 0.9, 0.0], [0.0, 0.0, 5.0]])
    # filters of 0 and 1 with top_n=1: {0, 3} | {0} and {1} | {1}: nothing shared
    assert filter_overlap(attr, 0, 1, 1) == 0.0
    # top_n=2: {0, 3} and {1, 0}: one of three
    assert filter_overlap(attr, 0, 1, 2) == pytest.approx(1 / 3)
    assert filter_overlap(attr, 0, 1, 5) == 1.0  # top_n >= samples: both filters hold everything


def test_class_filter_mask_hand_made():
    attr = np.array([
        [3.0, 1.0, 0.0],   # winner 0
        [0.0, 2.0, 1.5],   # winner 1
        [0.5, 0.4, 0.9],   # winner 2, third-largest attribution to 1? no: 0.4
        [1.0, 0.9, 0.0],   # winner 0, attribution to 1 = 0.9 (2nd largest)
        [0.0, 0.0, 5.0],   # winner 2
    ])
    assert class_filter_mask(attr, 1, 0).tolist() == [False, True, False, False, False]
    assert class_filter_mask(attr, 1, 2).tolist() == [True, True, False, False, False]
    assert class_filter_mask(attr, 1, 3).tolist() == [True, True, False, True, False]
    assert class_filter_mask(attr, 2, 1).tolist() == [False, False, True, False, True]
    assert class_filter_mask(torch.tensor(attr), 0, 100).all()
    with pytest.raises(DebugAtlasError, match="target=3"):
        class_filter_mask(attr, 3, 2)
    with pytest.raises(DebugAtlasError, match="top_n"):
        class_filter_mask(attr, 0, -1)


@pytest.fixture
def fake_umap(monkeypatch):
    """Replace UMAP's optimisation (seconds of compilation), umap-learn's and the torch backend's, by a
    seeded random embedding; Layout's own checks (n_neighbors < number of samples) still run."""
    from debugatlas.layout import _torch, _umap_learn

    seen = []

    def fit(x, settings, shared=None):
        seen.append(int(settings.n_neighbors))
        return np.random.default_rng(0).normal(size=(x.shape[0], settings.n_components)), {}

    monkeypatch.setattr(_umap_learn, "fit", fit)
    monkeypatch.setattr(_torch, "fit", fit)  # the default backend on every device
    return seen


def test_class_filtered_atlas_small_class_reduces_neighbors(fake_umap):
    acts, attr = make_acts(n=200, k=4)
    atlas = class_filtered_atlas(acts, attr, target=2, top_n=10, grid_size=5,
                                 layout={"method": "umap", "n_neighbors": 50})
    mask = class_filter_mask(attr, 2, 10)
    n = int(mask.sum())
    assert sorted(atlas.sample_index.tolist()) == np.flatnonzero(mask).tolist()
    assert atlas.counts.sum() == n
    assert 0 <= atlas.xy.min() and atlas.xy.max() <= 1
    params = atlas.layout_params
    assert params["n_neighbors_requested"] == 50
    assert params["n_neighbors"] == fake_umap[-1] == min(50, n - 1)
    assert params["method"] == "umap" and params["filter"]["target"] == 2
    for cell, members in atlas.exemplars.items():
        assert set(members) <= set(atlas.members(cell).tolist())
    # exactly five samples: n_neighbors 4; a large class keeps the requested value
    attr5 = attr.clone()
    attr5[:, 3] = -10.0
    attr5[:5, 3] = 10.0
    small = class_filtered_atlas(acts, attr5, target=3, top_n=0, grid_size=4, layout={"n_neighbors": 50})
    assert small.layout_params["n_neighbors"] == 4 and small.counts.sum() == 5
    big = class_filtered_atlas(acts, attr, target=0, top_n=150, layout={"n_neighbors": 15}, seed=3)
    assert big.layout_params["n_neighbors"] == 15 and big.layout_params["seed"] == 3


def test_class_filtered_atlas_pca_matches_mask():
    acts, attr = make_acts(n=200, k=4)
    atlas = class_filtered_atlas(acts, attr, target=1, top_n=20, grid_size=20, layout={"method": "pca"})
    assert atlas.sample_index.tolist() == np.flatnonzero(class_filter_mask(attr, 1, 20)).tolist()
    assert atlas.grid_size == 20 and atlas.counts.sum() == atlas.sample_index.size


def test_class_filtered_atlas_too_few_samples_names_class():
    acts, attr = make_acts(n=40, k=4)
    attr = attr.clone()
    attr[:, 3] = -10.0  # class 3 never wins
    with pytest.raises(DebugAtlasError, match=r"class 3.*HINT"):
        class_filtered_atlas(acts, attr, target=3, top_n=2, layout={"method": "pca"})


def test_comparison_atlas_x_follows_attribution_difference():
    acts, attr = make_acts(n=200, k=4)
    atlas = comparison_atlas(acts, attr, a=0, b=1, grid_size=10, layout={"method": "pca"})
    xy = atlas.xy
    assert xy.shape == (atlas.sample_index.size, 2)
    assert xy.min() >= 0 and xy.max() <= 1
    idx = atlas.sample_index
    labels, preds = acts.labels.numpy(), acts.preds.numpy()
    relevant = np.isin(labels, (0, 1)) | np.isin(preds, (0, 1))
    expected = relevant | class_filter_mask(attr, 0, 2000) | class_filter_mask(attr, 1, 2000)
    assert idx.tolist() == np.flatnonzero(expected).tolist()
    assert np.array_equal(comparison_mask(acts, attr, 0, 1, 2000), expected)
    small = comparison_atlas(acts, attr, a=0, b=1, top_n=3, layout={"method": "pca"})
    expected = relevant | class_filter_mask(attr, 0, 3) | class_filter_mask(attr, 1, 3)
    assert small.sample_index.tolist() == np.flatnonzero(expected).tolist()
    assert np.array_equal(comparison_mask(acts, attr, 0, 1, 3), expected)
    diff = (attr[idx, 0] - attr[idx, 1]).numpy()
    order = np.argsort(diff, kind="stable")
    assert (np.diff(xy[order, 0]) >= -1e-7).all()  # x is monotone in attr_a - attr_b
    assert xy[np.argmax(diff), 0] == pytest.approx(1.0)
    assert xy[np.argmin(diff), 0] == pytest.approx(0.0)
    zero = np.abs(diff) < 1e-3
    if zero.any():
        assert np.allclose(xy[zero, 0], 0.5, atol=1e-2)
    assert atlas.layout_params["filter"] == {"kind": "comparison", "a": 0, "b": 1, "top_n": 2000}
    assert atlas.counts.sum() == idx.size


def test_comparison_atlas_bad_inputs():
    acts, attr = make_acts(n=50, k=3)
    with pytest.raises(DebugAtlasError, match="same class"):
        comparison_atlas(acts, attr, a=1, b=1)
    with pytest.raises(DebugAtlasError, match="b=7"):
        comparison_atlas(acts, attr, a=1, b=7)
    with pytest.raises(DebugAtlasError, match="b=7"):
        comparison_mask(acts, attr, 1, 7, 10)
    with pytest.raises(DebugAtlasError, match=r"classes 1 and 2.*HINT: raise `top_n`"):
        comparison_atlas(acts.subset(np.arange(4)), attr[:4], a=1, b=2, layout={"method": "pca"})
    with pytest.raises(TypeError):
        comparison_atlas(acts, attr, 1, 2)  # the classes are named: a=..., b=...


def test_a_view_needs_the_minimum_of_samples_and_names_the_option_that_widens_it():
    mask = np.zeros(10, dtype=bool)
    mask[[1, 3, 5, 7]] = True
    with pytest.raises(DebugAtlasError, match=r"The filter selects only 4 samples; at least 5.*HINT: raise `filter_top_n`"):
        view_samples(mask, "The filter", "filter_top_n")
    mask[9] = True
    assert view_samples(mask, "The filter").tolist() == [1, 3, 5, 7, 9] and MIN_FILTER_SAMPLES == 5


def test_comparison_atlas_umap_one_dimensional(fake_umap):
    acts, attr = make_acts(n=120, k=3)
    atlas = comparison_atlas(acts, attr, a=2, b=0, grid_size=8, layout={"n_neighbors": 500})
    assert atlas.layout_params["n_components"] == 1
    assert atlas.layout_params["n_neighbors"] == atlas.sample_index.size - 1
    assert 0 <= atlas.xy.min() and atlas.xy.max() <= 1


def test_density_counts_random_samples_only_and_cells_are_unchanged():
    acts, attr = make_acts(n=8)
    # four points in cell (0, 0), four in (1, 1) of a 2x2 grid; three of the latter chosen by attribution
    xy = np.array([[0.1, 0.1]] * 4 + [[0.9, 0.9]] * 4)
    plain = build_atlas(xy, acts, attr, grid_size=2)
    acts.rule = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.int8)
    guided = build_atlas(xy, acts, attr, grid_size=2)
    assert guided.counts.tolist() == plain.counts.tolist() == [[4, 0], [0, 4]]
    assert np.array_equal(guided.mean_activation, plain.mean_activation)
    assert guided.exemplars == plain.exemplars
    assert guided.random_counts.tolist() == [[4, 0], [0, 1]]
    assert guided.density().tolist() == [[0.8, 0.0], [0.0, 0.2]]
    assert plain.density().tolist() == [[0.5, 0.0], [0.0, 0.5]]
    acts.rule = torch.ones(8, dtype=torch.int8)  # no random sample at all: share of every sample
    assert build_atlas(xy, acts, attr, grid_size=2).density().tolist() == [[0.5, 0.0], [0.0, 0.5]]
    # a class-filtered subset counts the random samples among its own members
    acts.rule = torch.tensor([1, 0, 0, 0, 0, 1, 1, 1], dtype=torch.int8)
    sub = build_atlas(xy[[0, 1, 5]], acts, attr, grid_size=2, sample_index=[0, 1, 5])
    assert sub.random_counts.tolist() == [[1, 0], [0, 0]] and sub.counts.tolist() == [[2, 0], [0, 1]]
