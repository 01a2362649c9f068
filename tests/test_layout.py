"""The layout package: normalisation properties, seeded UMAP / t-SNE / PCA layouts, recorded
parameters, exact neighbours, the torch backend's stages, degenerate input and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from debugatlas import DebugAtlasError
from debugatlas.layout import Layout, exact_knn, normalize_layout


def _clusters(n_per: int = 70, k: int = 3, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """k well-separated clusters of non-negative (ReLU-like) vectors, as float16 torch."""
    rng = np.random.default_rng(seed)
    centres = rng.random((k, dim)) * 3
    labels = np.repeat(np.arange(k), n_per)
    x = np.maximum(centres[labels] + 0.15 * rng.normal(size=(k * n_per, dim)), 0)
    return torch.tensor(x, dtype=torch.float16), labels


def _neighbour_purity(xy: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1)[:, :k]
    return float((labels[nn] == labels[:, None]).mean())


# -- normalize_layout ------------------------------------------------------------------------------
@pytest.mark.parametrize("dist", ["normal", "exponential", "uniform"])
def test_percentiles_map_to_the_margins_and_outliers_are_clipped(dist):
    rng = np.random.default_rng(1)
    xy = getattr(rng, dist)(size=(2000, 2)) * np.array([1.0, 250.0]) + np.array([-3.0, 40.0])
    xy[:5] = 1e6
    xy[5:10] = -1e6
    out = normalize_layout(xy)
    assert out.shape == xy.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(np.percentile(out, 1, axis=0), [0.1, 0.1], atol=1e-5)
    np.testing.assert_allclose(np.percentile(out, 99, axis=0), [0.9, 0.9], atol=1e-5)
    assert (out[:5] == 1).all() and (out[5:10] == 0).all()
    # each axis on its own: order kept, affine rescaling of the input changes nothing
    assert (np.diff(out[np.argsort(xy[:, 1]), 1]) >= 0).all()
    np.testing.assert_allclose(normalize_layout(xy * 7 - 3), out, atol=1e-6)


def test_normalize_other_percentiles_1d_and_flat_axes():
    x = np.arange(101, dtype=np.float64)
    np.testing.assert_allclose(normalize_layout(x, low=0, high=100, margin=0.0), x / 100, atol=1e-6)
    out = normalize_layout(torch.tensor(x), low=10, high=90, margin=0.25)
    assert out.shape == (101,)
    np.testing.assert_allclose(out[[10, 50, 90]], [0.25, 0.5, 0.75], atol=1e-6)
    flat = normalize_layout(np.stack([x, np.full(101, 3.0)], 1))
    assert (flat[:, 1] == 0.5).all()
    for kwargs in ({"low": 50, "high": 50}, {"low": -1}, {"margin": 0.5}):
        with pytest.raises(DebugAtlasError):
            normalize_layout(x, **kwargs)
    with pytest.raises(DebugAtlasError, match="NaN or Inf in rows \\[3\\]"):
        normalize_layout(np.where(np.arange(5) == 3, np.nan, 1.0))


# -- UMAP ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def umap_fit():
    x, labels = _clusters()
    return x, labels, Layout("umap", seed=0).fit(x)


def test_umap_layout_shape_range_and_structure(umap_fit):
    x, labels, layout = umap_fit
    emb = layout.embedding_
    assert emb.shape == (len(x), 2) and emb.dtype == np.float32
    assert emb.min() >= 0 and emb.max() <= 1
    assert layout.raw_embedding_.shape == (len(x), 2) and layout.raw_embedding_.dtype == np.float32
    np.testing.assert_allclose(normalize_layout(layout.raw_embedding_), emb)
    assert _neighbour_purity(emb, labels) > 0.95


def test_umap_same_seed_same_layout(umap_fit):
    x, _, first = umap_fit
    again = Layout("umap", seed=0).fit(x)
    np.testing.assert_array_equal(again.embedding_, first.embedding_)
    other = Layout("umap", seed=1).fit(x)
    assert not np.allclose(other.raw_embedding_, first.raw_embedding_)


@pytest.mark.slow
def test_umap_params_recorded_as_plain_values(umap_fit):
    x, _, layout = umap_fit
    p = layout.params_
    assert json.loads(json.dumps(p)) == p
    assert p["method"] == "umap" and p["n_neighbors"] == 50 and p["min_dist"] == 0.05
    assert p["metric"] == "cosine" and p["seed"] == 0 and p["n_components"] == 2
    assert p["n_samples"] == len(x) and p["n_features"] == 16 and p["degenerate"] is None
    assert p["backend"] == "torch" and p["knn"] == "exact (torch, cpu)"  # "auto" below 4,096 vectors
    assert p["graph"] == "fuzzy simplicial set (torch, cpu)" and p["optimizer"] == "batched SGD (numba, cpu)"
    assert p["normalization"] == {"low": 1.0, "high": 99.0, "margin": 0.1}
    assert set(p["versions"]) >= {"umap-learn", "scikit-learn"}
    plain = Layout("umap", backend="umap-learn", n_epochs=20).fit(x).params_
    assert plain["backend"] == "umap-learn" and plain["knn"] == "exact (umap)" and "graph" not in plain


def test_umap_with_exact_torch_neighbours_and_one_component(umap_fit):
    x, labels, _ = umap_fit
    layout = Layout("umap", n_neighbors=15, knn="exact").fit(x)
    assert layout.params_["knn"] == "exact (torch, cpu)" and layout.params_["n_neighbors"] == 15
    assert _neighbour_purity(layout.embedding_, labels) > 0.95
    line = Layout("umap", n_components=1, n_neighbors=15).fit_transform(x)
    assert line.shape == (len(x), 1) and 0 <= line.min() and line.max() <= 1


def test_exact_knn_matches_sklearn():
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(2).normal(size=(120, 8)).astype(np.float32)
    for metric in ("euclidean", "cosine"):
        idx, dist = exact_knn(torch.tensor(x), 6, metric, chunk_bytes=4 * 120 * 7)
        ref_d, ref_i = NearestNeighbors(n_neighbors=6, metric=metric).fit(x).kneighbors(x)
        assert (idx[:, 0] == np.arange(120)).all() and (dist[:, 0] == 0).all()
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_allclose(dist, ref_d, atol=1e-5)
    # zero vectors: distance 0 between two of them, 1 to any other vector (umap-learn's convention)
    z = np.vstack([np.zeros((2, 3)), np.eye(3)])
    idx, dist = exact_knn(z, 3, "cosine")
    assert set(idx[0]) == {0, 1, idx[0, 2]} and dist[0].tolist() == [0.0, 0.0, 1.0]


# -- t-SNE and PCA ---------------------------------------------------------------------------------
def test_tsne_layout_seeded():
    from threadpoolctl import threadpool_limits

    x, labels = _clusters(n_per=40)
    with threadpool_limits(1):  # OpenMP threads crawl on busy shared cores
        a = Layout("tsne", perplexity=15, seed=3).fit(x)
        b = Layout("tsne", perplexity=15, seed=3).fit(x)
    assert a.embedding_.shape == (120, 2) and 0 <= a.embedding_.min() and a.embedding_.max() <= 1
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
    assert a.params_["method"] == "tsne" and a.params_["perplexity"] == 15.0
    assert _neighbour_purity(a.embedding_, labels) > 0.95


def test_pca_layout_cosine_and_euclidean():
    x, labels = _clusters(n_per=30)
    cos = Layout("pca").fit(x)
    assert cos.embedding_.shape == (90, 2) and cos.params_["row_normalized"] is True
    assert len(cos.params_["explained_variance_ratio"]) == 2
    assert json.loads(json.dumps(cos.params_)) == cos.params_
    # scaling a vector does not move it under the cosine metric ...
    scaled = x.float() * torch.linspace(0.5, 3, 90).unsqueeze(1)
    np.testing.assert_allclose(Layout("pca").fit(scaled).raw_embedding_, cos.raw_embedding_, atol=1e-3)
    # ... but does with the euclidean one
    euc = Layout("pca", metric="euclidean", n_components=1).fit(x.numpy())
    assert euc.embedding_.shape == (90, 1) and euc.params_["row_normalized"] is False


# -- degenerate input and errors -------------------------------------------------------------------
@pytest.mark.parametrize("method", ["umap", "tsne", "pca"])
def test_identical_vectors_go_to_the_centre(method):
    same = Layout(method).fit(torch.ones(60, 4, dtype=torch.float16))
    assert (same.embedding_ == 0.5).all() and same.embedding_.shape == (60, 2)
    assert "identical" in same.params_["degenerate"]
    ray = Layout(method).fit(np.outer(np.arange(1, 61), [1.0, 2.0, 0.0]))
    assert (ray.embedding_ == 0.5).all() and "same direction" in ray.params_["degenerate"]


def test_zero_variance_features_and_repeated_vectors_still_lay_out():
    x, _ = _clusters(n_per=30)
    x = torch.cat([x, torch.zeros(90, 3, dtype=x.dtype)], 1)  # dead channels
    x[:20] = 0  # dead vectors
    layout = Layout("pca").fit(x)
    assert layout.params_["degenerate"] is None and np.isfinite(layout.embedding_).all()


def test_too_few_samples_say_how_many_are_needed():
    x = torch.rand(50, 8)
    with pytest.raises(DebugAtlasError, match=r"got 50 vectors; n_neighbors=50 needs at least 51.*HINT.*<= 49"):
        Layout("umap").fit(x)
    with pytest.raises(DebugAtlasError, match=r"got 20 vectors; perplexity=30.0 needs more than 30.0"):
        Layout("tsne").fit(x[:20])
    with pytest.raises(DebugAtlasError, match=r"got 2 vectors; n_components=2 needs at least 3"):
        Layout("pca").fit(x[:2])
    with pytest.raises(DebugAtlasError, match="1-dimensional vectors"):
        Layout("pca").fit(x[:, :1])


def test_init_only_stores_and_fit_checks_settings():
    layout = Layout(method="nope", n_components=3)
    assert layout.method == "nope" and layout.n_components == 3 and not hasattr(layout, "embedding_")
    x = torch.rand(60, 8)
    bad = [({"method": "lle"}, "method='lle'"), ({"n_components": 3}, "must be 1 or 2"),
           ({"n_neighbors": 1}, "n_neighbors=1"), ({"min_dist": 2.0}, "min_dist=2.0"),
           ({"knn": "fast"}, "knn='fast'"), ({"knn": "exact", "metric": "manhattan"}, "exact neighbours"),
           ({"method": "tsne", "perplexity": 0}, "perplexity=0")]
    for kwargs, message in bad:
        with pytest.raises(DebugAtlasError, match=message):
            Layout(**kwargs).fit(x)
    x[4, 2] = float("nan")
    with pytest.raises(DebugAtlasError, match=r"NaN or Inf in rows \[4\]"):
        Layout("pca").fit(x)
    with pytest.raises(DebugAtlasError, match=r"shape \(2, 3, 4\)"):
        Layout("pca").fit(torch.rand(2, 3, 4))


def test_pca_dims_projects_before_umap_and_matches_sklearn_pca():
    from sklearn.decomposition import PCA

    from debugatlas.layout._projection import pca_torch

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(300, 3)) @ rng.normal(size=(3, 20)) + 0.01 * rng.normal(size=(300, 20))).astype(np.float32)
    ours = pca_torch(torch.from_numpy(x), 3).numpy()
    ref = PCA(n_components=3).fit_transform(x)
    for k in range(3):  # same axes up to sign
        assert abs(abs(np.corrcoef(ours[:, k], ref[:, k])[0, 1]) - 1) < 1e-4
    layout = Layout(method="umap", n_neighbors=10, pca_dims=3, knn="exact", n_epochs=20).fit(x)
    assert layout.params_["pca_dims"] == 3 and layout.embedding_.shape == (300, 2)
    with pytest.raises(DebugAtlasError, match="pca_dims"):
        Layout(pca_dims=1).fit(x)


# -- torch backend (the fast path) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_graph():
    """Digits (1,797 x 64), its exact 15-NN and UMAP's fuzzy graph from umap-learn."""
    from sklearn.datasets import load_digits
    from umap.umap_ import fuzzy_simplicial_set

    x = load_digits().data.astype(np.float32)
    idx, dist = exact_knn(x, 15, "euclidean")
    graph, _, _ = fuzzy_simplicial_set(x, 15, np.random.RandomState(0), "euclidean",
                                       knn_indices=idx, knn_dists=dist)
    return x, idx, dist, graph.tocoo()


def _trust(x, xy):
    from sklearn.manifold import trustworthiness

    return trustworthiness(x, xy, n_neighbors=10)


@pytest.mark.parametrize("min_dist", [0.0, 0.05, 0.1, 0.5])
def test_curve_parameters_match_umap_learn(min_dist):
    from umap.umap_ import find_ab_params

    from debugatlas.layout.torch_umap import ab_params

    np.testing.assert_allclose(ab_params(1.0, min_dist), find_ab_params(1.0, min_dist), rtol=1e-6)
    a, b = ab_params(1.0, min_dist)
    assert 1 / (1 + a * 3.0 ** (2 * b)) < 0.1 < 0.9 < 1 / (1 + a * (min_dist / 2 + 1e-3) ** (2 * b))


def test_torch_fuzzy_graph_matches_umap_learn(digits_graph):
    from debugatlas.layout.torch_umap import fuzzy_graph as _fuzzy_graph

    x, idx, dist, ref = digits_graph
    head, tail, weight = _fuzzy_graph(torch.from_numpy(idx), torch.from_numpy(dist), 15)
    assert (torch.diff(head * len(x) + tail) > 0).all()  # sorted by head, then tail, no repeats
    ours = {(h, t): w for h, t, w in zip(head.tolist(), tail.tolist(), weight.tolist())}
    theirs = {(h, t): w for h, t, w in zip(ref.row.tolist(), ref.col.tolist(), ref.data.tolist())}
    assert ours.keys() == theirs.keys()
    np.testing.assert_allclose([ours[k] for k in theirs], list(theirs.values()), atol=1e-5)


@pytest.mark.slow
def test_torch_backend_close_to_umap_learn_and_deterministic(digits_graph):
    x = digits_graph[0]
    settings = dict(n_neighbors=15, metric="euclidean", knn="exact", seed=0)
    fast = Layout(backend="torch", **settings).fit(x)
    plain = Layout(backend="umap-learn", **settings).fit(x)
    assert _trust(x, fast.raw_embedding_) > _trust(x, plain.raw_embedding_) - 0.01
    again = Layout(backend="torch", **settings).fit(x)
    np.testing.assert_array_equal(again.raw_embedding_, fast.raw_embedding_)
    other = Layout(backend="torch", **{**settings, "seed": 1}).fit(x)
    assert not np.allclose(other.raw_embedding_, fast.raw_embedding_)
    p = fast.params_
    assert json.loads(json.dumps(p)) == p and plain.params_["backend"] == "umap-learn"
    assert p["backend"] == "torch" and p["knn"] == "exact (torch, cpu)" and p["init"] == "pca"
    assert p["optimizer"] == "batched SGD (numba, cpu)" and p["n_epochs_run"] == 500
    assert set(p["stage_seconds"]) == {"pca", "knn", "graph", "init", "optimise"}


@pytest.mark.slow
def test_auto_backend_as_trustworthy_as_umap_learn_with_the_paper_settings(digits_graph):
    """Default settings (cosine, 50 neighbours, min_dist 0.05): "auto" now runs the torch backend."""
    from sklearn.manifold import trustworthiness

    x = digits_graph[0]
    auto, plain = Layout(seed=0).fit(x), Layout(backend="umap-learn", seed=0).fit(x)
    assert auto.params_["backend"] == "torch"
    trust = [trustworthiness(x, f.raw_embedding_, n_neighbors=10, metric="cosine") for f in (auto, plain)]
    assert trust[0] > trust[1] - 0.01 and trust[1] > 0.97


@pytest.mark.slow
def test_compiled_epoch_kernel_is_cached_across_processes(tmp_path):
    """The first process compiles and writes the cache, a fresh one loads it (NUMBA_CACHE_DIR)."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, torch\n"
        "from debugatlas.layout.torch_umap import optimize, numba_kernel\n"
        "y = torch.rand(50, 2)\n"
        "head = torch.arange(50).repeat_interleave(2); tail = (head + torch.tensor([1, 2]).repeat(50)) % 50\n"
        "optimize(y, head, tail, torch.ones(100), 5, 1.6, 0.9, seed=0)\n"
        "s = numba_kernel().stats\n"
        "print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    first, second = ([int(v) for v in r.stdout.split()] for r in runs)
    assert first[0] == 0 and first[1] >= 1  # compiled, nothing to load
    assert second[0] >= 1 and second[1] == 0  # loaded from the cache, not compiled
    assert list(tmp_path.rglob("*.nbi")) and list(tmp_path.rglob("*.nbc"))


def _epoch_inputs(digits_graph):
    """The digits graph as `optimize` takes it, UMAP's a, b for min_dist 0.05, and a PCA start."""
    from umap.umap_ import find_ab_params

    from debugatlas.layout.torch_umap import pca_init as _pca_init

    x, _, _, g = digits_graph
    head, tail = torch.from_numpy(g.row.astype(np.int64)), torch.from_numpy(g.col.astype(np.int64))
    weight = torch.from_numpy(g.data.astype(np.float32))
    a, b = (float(v) for v in find_ab_params(1.0, 0.05))
    start = _pca_init(torch.from_numpy(x), 2, "euclidean", torch.Generator().manual_seed(0))
    return x, head, tail, weight, a, b, start


@pytest.mark.slow
def test_torch_epochs_the_gpu_code_path_agree_with_the_cpu_loop(digits_graph):
    """`_torch_epochs` (what runs on CUDA) run on the CPU: as good as the compiled loop, seeded."""
    from debugatlas.layout.torch_umap import optimize as _optimize, torch_epochs as _torch_epochs

    x, head, tail, weight, a, b, start = _epoch_inputs(digits_graph)
    loop = _optimize(start.clone(), head, tail, weight, 200, a, b, seed=0).numpy()
    rate = weight / weight.max()
    batched = [_torch_epochs(start.clone(), head, tail, rate, 200, a, b, 0, 5, 1.0).numpy() for _ in range(2)]
    np.testing.assert_array_equal(batched[0], batched[1])
    assert abs(_trust(x, batched[0]) - _trust(x, loop)) < 0.01 and _trust(x, loop) > 0.97


def test_compiled_epochs_are_the_same_for_any_thread_count(digits_graph, monkeypatch):
    import numba

    from debugatlas.layout import torch_umap
    from debugatlas.layout.torch_umap import optimize as _optimize

    monkeypatch.setattr(torch_umap, "SERIAL_BELOW", 0)  # all threads even for these 1,797 points
    _, head, tail, weight, a, b, start = _epoch_inputs(digits_graph)
    threads = numba.get_num_threads()
    runs = []
    try:
        for count in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(count)
            runs.append(_optimize(start.clone(), head, tail, weight, 50, a, b, seed=0).numpy())
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], start.numpy(), atol=0.1)  # the epochs moved the points
    monkeypatch.setattr(torch_umap, "SERIAL_BELOW", 10**9)  # one thread, as for small inputs by default
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    serial = _optimize(start.clone(), head, tail, weight, 50, a, b, seed=0).numpy()
    np.testing.assert_array_equal(serial, runs[0])
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # the thread count is restored
    numba.set_num_threads(threads)


def test_auto_backend_rule_and_bad_backend_settings():
    for n in (52, 4095, 49_999, 10**6):  # torch on either device at every size, cosine or euclidean
        assert Layout()._backend(n) == Layout(device="cuda", metric="euclidean")._backend(n) == "torch"
    assert Layout(metric="manhattan")._backend(10**6) == "umap-learn"
    assert Layout(backend="umap-learn")._backend(10**6) == "umap-learn"
    assert Layout("tsne")._backend(10**6) is None
    x = torch.rand(60, 8)
    bad = [({"backend": "gpu"}, r"backend='gpu'.*\['auto', 'umap-learn', 'torch', 'torchdr'\]"),
           ({"backend": "torch", "method": "tsne"}, "UMAP only. HINT: use method='umap'"),
           ({"backend": "torch", "metric": "manhattan"}, "HINT: use backend='umap-learn'"),
           ({"n_epochs": 0}, "n_epochs=0"), ({"device": "gpu0"}, "device='gpu0'.*HINT")]
    for kwargs, message in bad:
        with pytest.raises(DebugAtlasError, match=message):
            Layout(**kwargs).fit(x)


def test_layouts_can_share_one_neighbour_search_cut_to_their_own_n_neighbors(digits_graph):
    """The stability layouts search neighbours once, at the largest n_neighbors, and each layout
    cuts the lists to its own: the same lists as its own search, so the same layout."""
    x = digits_graph[0] + np.random.default_rng(0).normal(0, 1e-3, digits_graph[0].shape).astype(np.float32)
    settings = dict(backend="torch", metric="cosine", knn="exact", seed=0, n_epochs=30)
    narrow = Layout(n_neighbors=15, **settings)
    wide = Layout(n_neighbors=40, **settings).neighbours(x)
    assert wide[0].shape == (len(x), 40) and wide[2] == "exact (torch, cpu)"
    own_idx, own_dist = exact_knn(x, 15, "cosine")
    np.testing.assert_array_equal(wide[0][:, :15].numpy(), own_idx)
    np.testing.assert_allclose(wide[1][:, :15].numpy(), own_dist, atol=1e-6)
    alone, shared = narrow.fit(x), Layout(n_neighbors=15, **settings).fit(x, neighbours=wide)
    np.testing.assert_array_equal(shared.raw_embedding_, alone.raw_embedding_)
    assert shared.params_["knn"] == "exact (torch, cpu), shared: the first 15 of 40"
    with pytest.raises(DebugAtlasError, match="fewer than n_neighbors=40"):
        Layout(n_neighbors=40, **settings).fit(x, neighbours=Layout(n_neighbors=15, **settings).neighbours(x))
    assert Layout(n_neighbors=15, backend="umap-learn").neighbours(x) is None
