"""PCA, `Layout(method="pca")`: scikit-learn's PCA, of unit rows for ``metric="cosine"``."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._settings import Settings
from .normalize import unit_rows


def fit(x: np.ndarray, s: Settings) -> tuple[np.ndarray, dict[str, Any]]:
    """`sklearn.decomposition.PCA` of `x` [N, C] float32 (every row scaled to unit length first for
    "cosine"): (raw layout [N, n_components], whether rows were scaled and the explained variance
    ratio of each component)."""
    from sklearn.decomposition import PCA

    cosine = s.metric == "cosine"
    pca = PCA(n_components=s.n_components, random_state=s.seed)
    raw = pca.fit_transform(unit_rows(x) if cosine else x)
    return raw, {"row_normalized": cosine,
                 "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_]}
