"""`Layout` as a scikit-learn estimator (get_params / set_params / clone) and the rule of
backend="auto", pinned both through `_backend` and through what a fit records."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from debugatlas import DebugAtlasError
from debugatlas.layout import Layout

NAMES = ["method", "n_components", "n_neighbors", "min_dist", "metric", "seed", "perplexity", "knn",
         "device", "n_epochs", "pca_dims", "backend"]


def test_get_params_are_the_constructor_parameters_as_stored():
    layout = Layout("tsne", seed=4, device="cpu", pca_dims=8)
    params = layout.get_params()
    assert list(params) == NAMES and params == layout.get_params(deep=False)
    assert params["method"] == "tsne" and params["seed"] == 4 and params["device"] == "cpu"
    assert params["pca_dims"] == 8 and params["backend"] == "auto" and params["n_epochs"] is None


def test_clone_gives_an_unfitted_estimator_with_equal_params():
    from sklearn.base import clone

    x = torch.rand(40, 6)
    fitted = Layout("pca", metric="euclidean", n_components=1, seed=7).fit(x)
    copy = clone(fitted)
    assert type(copy) is Layout and copy is not fitted
    assert copy.get_params() == fitted.get_params()
    assert not any(hasattr(copy, name) for name in ("embedding_", "raw_embedding_", "params_"))
    np.testing.assert_array_equal(copy.fit(x).embedding_, fitted.embedding_)


def test_set_params_changes_settings_and_returns_self():
    layout = Layout()
    assert layout.set_params(method="pca", seed=2) is layout
    assert layout.method == "pca" and layout.seed == 2 and not hasattr(layout, "embedding_")
    assert layout.fit(torch.rand(30, 5)).params_["seed"] == 2


def test_set_params_with_an_unknown_name_names_the_valid_ones():
    layout = Layout()
    with pytest.raises(DebugAtlasError, match=r"no parameter 'n_neighbours'.*'n_neighbors'.*'backend'\]"
                                              r".*HINT: did you mean 'n_neighbors'\?") as err:
        layout.set_params(seed=9, n_neighbours=10)
    assert all(repr(name) in str(err.value) for name in NAMES)
    assert layout.seed == 0  # nothing changed
    with pytest.raises(DebugAtlasError, match=r"no parameter 'zzz'; valid parameters are \[") as err:
        layout.set_params(zzz=1)
    assert "HINT" not in str(err.value)


def test_auto_picks_torch_for_cosine_and_euclidean_at_every_size_else_umap_learn():
    for device in (None, "cpu", "cuda"):
        for n in (3, 4095, 4096, 49_999, 50_000, 10**7):
            for metric in ("cosine", "euclidean"):
                assert Layout(device=device, metric=metric)._backend(n) == "torch"
            assert Layout(device=device, metric="manhattan")._backend(n) == "umap-learn"
    x = torch.rand(30, 6)
    for metric in ("cosine", "euclidean"):
        assert Layout(metric=metric, n_neighbors=5, n_epochs=5).fit(x).params_["backend"] == "torch"


def test_bad_backend_hint_says_what_auto_picks():
    with pytest.raises(DebugAtlasError, match=r'HINT: "auto" picks "torch" for the cosine and euclidean '
                                              r'metrics at every size and on every device, and "umap-learn" '
                                              r'for any other metric'):
        Layout(backend="fast").fit(torch.rand(60, 8))
