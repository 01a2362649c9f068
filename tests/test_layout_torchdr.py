"""`Layout(backend="torchdr")`: clusters kept apart, settings mapped onto `torchdr.UMAP`, seeded
and leaving torch's global generator as found, clear errors for bad settings and a missing torchdr."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from debugatlas import DebugAtlasError
from debugatlas.layout import Layout, normalize_layout

FAST = {"backend": "torchdr", "n_neighbors": 15, "n_epochs": 200}


def _gaussians(n_per: int = 200, k: int = 3, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated Gaussian clusters: [k * n_per, dim] float32 and their labels."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.normal(size=(k, dim))
    labels = np.repeat(np.arange(k), n_per)
    return (centres[labels] + rng.normal(size=(k * n_per, dim))).astype(np.float32), labels


def _knn_accuracy(xy: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """How often a point's label is the majority label of its k nearest neighbours in the layout."""
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    votes = labels[np.argsort(d, axis=1)[:, :k]]
    majority = np.array([np.bincount(row).argmax() for row in votes])
    return float((majority == labels).mean())


@pytest.fixture(scope="module")
def clusters_fit():
    x, labels = _gaussians()
    return x, labels, Layout(metric="euclidean", seed=0, **FAST).fit(x)


def test_torchdr_layout_keeps_clusters_apart_shape_and_range(clusters_fit):
    from sklearn.manifold import trustworthiness

    x, labels, layout = clusters_fit
    emb = layout.embedding_
    assert emb.shape == (len(x), 2) and emb.dtype == np.float32
    assert emb.min() >= 0 and emb.max() <= 1
    assert layout.raw_embedding_.shape == (len(x), 2) and layout.raw_embedding_.dtype == np.float32
    np.testing.assert_allclose(normalize_layout(layout.raw_embedding_), emb)
    assert _knn_accuracy(emb, labels) > 0.98
    shuffled = emb[np.random.default_rng(1).permutation(len(x))]
    assert _knn_accuracy(shuffled, labels) < 0.6  # the control: chance is about 1/3
    assert trustworthiness(x, emb, n_neighbors=10) > 0.85
    assert trustworthiness(x, shuffled, n_neighbors=10) < 0.6


def test_torchdr_params_record_what_ran(clusters_fit):
    x, _, layout = clusters_fit
    p = layout.params_
    assert json.loads(json.dumps(p)) == p
    assert p["backend"] == "torchdr" and p["method"] == "umap" and p["metric"] == "euclidean"
    assert p["n_neighbors"] == 15 and p["n_epochs"] == 200 and p["n_epochs_run"] == 200
    assert p["n_samples"] == len(x) and p["pca_dims"] is None and p["degenerate"] is None
    assert p["knn"] == "exact (torchdr, torch, cpu)" and p["init"] == "pca (torchdr)"
    assert p["graph"] == "fuzzy simplicial set (torchdr, cpu)"
    assert p["optimizer"] == "SGD with negative sampling (torchdr, cpu)"
    assert set(p["stage_seconds"]) == {"pca", "umap"}
    assert p["versions"]["torchdr"][0].isdigit()


def test_torchdr_same_seed_same_layout_and_global_generator_restored(clusters_fit):
    x, _, first = clusters_fit
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    numpy_state = np.random.get_state()[1].copy()
    again = Layout(metric="euclidean", seed=0, **FAST).fit(x)
    np.testing.assert_array_equal(torch.rand(3), expected)  # torch's global stream as if never used
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)
    np.testing.assert_array_equal(again.raw_embedding_, first.raw_embedding_)
    other = Layout(metric="euclidean", seed=1, **FAST).fit(x)
    assert not np.allclose(other.raw_embedding_, first.raw_embedding_)


def test_torchdr_cosine_ignores_vector_length():
    """Rows scaled by powers of two have bit-identical unit rows, so the cosine layout is the
    same; the euclidean layout is not (the metric reaches TorchDR and differs)."""
    x, labels = _gaussians(n_per=100, k=2, dim=16, seed=2)
    x = np.abs(x)  # non-negative, like ReLU activations
    scaled = x * 2.0 ** np.random.default_rng(0).integers(-3, 4, size=(len(x), 1))
    cosine = Layout(metric="cosine", **FAST)
    np.testing.assert_array_equal(cosine.fit(scaled).raw_embedding_, cosine.fit(x).raw_embedding_)
    assert _knn_accuracy(cosine.embedding_, labels) > 0.98
    euclidean = Layout(metric="euclidean", **FAST)
    assert not np.allclose(euclidean.fit(scaled).raw_embedding_, euclidean.fit(x).raw_embedding_)


class _RecordingUMAP:
    """Stands in for `torchdr.UMAP`: records its settings and input, returns a seeded layout."""

    calls: list[dict] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def fit_transform(self, x: torch.Tensor) -> torch.Tensor:
        _RecordingUMAP.calls.append({"kwargs": self.kwargs, "x": x.clone()})
        self.n_iter_ = torch.tensor(self.kwargs["max_iter"] - 1)
        return torch.randn(x.shape[0], self.kwargs["n_components"])


def test_settings_reach_torchdr_umap(monkeypatch):
    import torchdr

    monkeypatch.setattr(torchdr, "UMAP", _RecordingUMAP)
    monkeypatch.setattr(_RecordingUMAP, "calls", [])
    x, _ = _gaussians(n_per=50, k=2, dim=12)
    Layout(backend="torchdr", n_neighbors=7, min_dist=0.2, n_components=1, seed=5).fit(x)
    Layout(backend="torchdr", metric="euclidean", pca_dims=4, n_epochs=30).fit(x)
    Layout(backend="torchdr", n_neighbors=2).fit(np.random.default_rng(0).random((10_001, 3)))
    (cos, euc, large) = _RecordingUMAP.calls
    assert cos["kwargs"] == {
        "n_neighbors": 7, "n_components": 1, "min_dist": 0.2, "metric": "angular", "max_iter": 500,
        "device": "cpu", "backend": None, "random_state": None, "compile": False, "distributed": False,
    }
    torch.testing.assert_close(cos["x"].norm(dim=1), torch.ones(len(x)))  # cosine: unit rows
    assert euc["kwargs"]["metric"] == "euclidean" and euc["kwargs"]["max_iter"] == 30
    assert euc["x"].shape == (len(x), 4)  # projected on 4 principal components first
    assert large["kwargs"]["max_iter"] == 200  # n_epochs=None: 200 above 10,000 vectors


def test_bad_settings_for_the_torchdr_backend():
    x = torch.rand(60, 8)
    bad = [({"method": "tsne"}, r"method='tsne', backend='torchdr'.*UMAP only. HINT: use method='umap'"),
           ({"method": "pca"}, "UMAP only"),
           ({"metric": "manhattan"}, r"supports \['cosine', 'euclidean'\]. HINT: use backend='umap-learn'"),
           ({"metric": "correlation"}, "metric='correlation'"),
           ({"knn": "nndescent"}, "finds exact neighbours in torch")]
    for kwargs, message in bad:
        with pytest.raises(DebugAtlasError, match=message):
            Layout(backend="torchdr", **kwargs).fit(x)


def test_auto_never_picks_torchdr():
    for device in ("cpu", "cuda"):
        assert {Layout(device=device, metric=m)._backend(n) for m in ("cosine", "euclidean", "manhattan")
                for n in (100, 10**6)} == {"umap-learn", "torch"}


def test_missing_torchdr_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdr", None)  # `import torchdr` now raises ImportError
    with pytest.raises(DebugAtlasError, match=r"backend='torchdr'.*HINT: `pip install torchdr`"):
        Layout(backend="torchdr").fit(torch.rand(60, 8))
