"""Layout speed and quality: the fast path vs plain umap-learn on the same sample, in one run.

Fast path: ``Layout(method="umap", knn="exact", pca_dims=...)`` (PCA in torch, exact kNN in torch,
handed to umap-learn as ``precomputed_knn``). Baseline: ``umap.UMAP`` with the same settings and
its own NN-descent search on the full vectors. Quality: scikit-learn's trustworthiness of each
embedding on the same random subsample. Numba compilation is done once on a small warm-up set
before timing. Data: a seeded mixture of Gaussian clusters on a low-dimensional subspace plus
noise, float16 like captured activations.

    .venv/bin/python experiments/bench_layout.py [--n 20000] [--dim 512] [--pca-dims 64]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from debugatlas.layout import Layout


def synthetic(n: int, dim: int, seed: int = 0, clusters: int = 30, rank: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, dim))
    centres = rng.normal(scale=3.0, size=(clusters, rank))
    z = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, rank))
    x = np.maximum(z @ basis + 0.5 * rng.normal(size=(n, dim)), 0)  # ReLU-like, non-negative
    return x.astype(np.float16).astype(np.float32)


def plain_umap(x: np.ndarray, args) -> np.ndarray:
    import umap

    reducer = umap.UMAP(n_neighbors=args.neighbors, min_dist=0.05, metric="cosine", random_state=0, n_jobs=1)
    return reducer.fit_transform(x)


def fast(x: np.ndarray, args) -> np.ndarray:
    layout = Layout(method="umap", n_neighbors=args.neighbors, knn="exact", pca_dims=args.pca_dims, seed=0)
    return layout.fit(x).raw_embedding_


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pca-dims", type=int, default=64)
    parser.add_argument("--neighbors", type=int, default=50)
    parser.add_argument("--subsample", type=int, default=3000)
    args = parser.parse_args()
    from sklearn.manifold import trustworthiness

    warnings.filterwarnings("ignore")
    warm = synthetic(5000, args.dim, seed=1)
    plain_umap(warm, args), fast(warm, args)  # numba compilation, both code paths

    x = synthetic(args.n, args.dim)
    sub = np.random.default_rng(0).choice(args.n, size=min(args.subsample, args.n), replace=False)
    rows = []
    for name, fn in (("umap-learn (nndescent)", plain_umap), (f"fast (exact kNN, pca_dims={args.pca_dims})", fast)):
        start = time.perf_counter()
        emb = fn(x, args)
        seconds = time.perf_counter() - start
        trust = trustworthiness(x[sub], emb[sub], n_neighbors=10, metric="cosine")
        rows.append((name, seconds, trust))
        print(f"{name:42s} {seconds:8.1f} s   trustworthiness {trust:.4f}", flush=True)
    (_, base_s, base_t), (_, fast_s, fast_t) = rows
    print(f"n={args.n} dim={args.dim} n_neighbors={args.neighbors}: speed-up {base_s / fast_s:.2f}x, "
          f"trustworthiness difference (fast - plain) {fast_t - base_t:+.4f} on {len(sub)} points")


if __name__ == "__main__":
    main()
