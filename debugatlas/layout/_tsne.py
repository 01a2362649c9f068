"""t-SNE, `Layout(method="tsne")`: scikit-learn's TSNE after the ``pca_dims`` projection."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._projection import project_numpy
from ._settings import Settings


def fit(x: np.ndarray, s: Settings) -> tuple[np.ndarray, dict[str, Any]]:
    """`sklearn.manifold.TSNE` of `x` [N, C] float32 with a PCA start, seeded by `s.seed`:
    (raw layout [N, n_components], the entries of ``params_`` it adds)."""
    from sklearn.manifold import TSNE

    x = project_numpy(x, s.pca_dims, s.run_device)
    tsne = TSNE(n_components=s.n_components, perplexity=s.perplexity, metric=s.metric, init="pca",
                learning_rate="auto", random_state=s.seed)
    return tsne.fit_transform(x), {"pca_dims": s.pca_dims}
