"""Layout speed and quality: the fast path vs plain umap-learn on the same sample, in one run.

Fast path: ``Layout(method="umap", backend="torch", pca_dims=..., device=...)`` (PCA and the
neighbour search in torch on the device, or NN-descent on the projected vectors on a CPU;
UMAP's fuzzy graph; PCA start; batched SGD). Baseline: ``umap.UMAP`` with the same settings,
its own NN-descent search on the full vectors and spectral start; seeded (single-threaded) by
default, unseeded and parallel with ``--baseline-jobs -1`` (the fair baseline on many cores).
Quality: scikit-learn's trustworthiness of each embedding on the same random subsample. Both
sides are compiled / warmed up on a small set before timing. Data: a seeded mixture of Gaussian
clusters on a low-dimensional subspace plus noise, ReLU, float16-rounded like captured activations.
``--fast-backend torchdr`` makes the fast side ``Layout(backend="torchdr")`` (``torchdr.UMAP``,
which holds the full N x N distance matrix: keep ``--n`` to a few tens of thousands).

    .venv/bin/python experiments/bench_layout.py [--n 100000] [--dim 512] [--pca-dims 64]
        [--device cpu|cuda] [--baseline-jobs 1 -1] [--skip-baseline] [--epochs N] [--knn auto]
        [--fast-backend torch|torchdr]

Start-up cost (``--startup K``): K fresh processes one after another, each timing its imports,
a first and a second (warm) ``Layout(backend=...).fit`` of the same ``--n`` x ``--dim`` vectors
for umap-learn and for the torch backend (no warm-up, ``--pca-dims`` ignored), with a new, empty
``NUMBA_CACHE_DIR`` for the first process: its first call compiles, the later processes show what
the on-disk cache saves (umap-learn compiles in every process, its functions are not cached).

    .venv/bin/python experiments/bench_layout.py --startup 3 --n 1078 --dim 64

Stability layouts (``--stability K``): the K layouts of a finding's stability check
(`debugatlas.pipeline.stability.variants`: other seeds, ``n_neighbors`` and ``min_dist`` around
the defaults) of the same ``--n`` x ``--dim`` vectors, each with its own neighbour search against
one search shared by all (at the largest ``n_neighbors``, `Layout.neighbours`), side by side after a
warm-up, with the trustworthiness of each side's layouts:

    .venv/bin/python experiments/bench_layout.py --stability 5 --n 12000 --dim 32 --pca-dims 0
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from debugatlas.layout import Layout


def synthetic(n: int, dim: int, seed: int = 0, clusters: int = 30, rank: int = 32,
              chunk: int = 65536) -> np.ndarray:
    """[n, dim] float32, generated in float32 chunks (1M x 512 in a few seconds)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dim), dtype=np.float32)
    centres = 3.0 * rng.standard_normal((clusters, rank), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        z = centres[rng.integers(0, clusters, m)] + rng.standard_normal((m, rank), dtype=np.float32)
        block = z @ basis
        block += 0.5 * rng.standard_normal((m, dim), dtype=np.float32)
        np.maximum(block, 0, out=block)  # ReLU-like, non-negative
        out[start:start + m] = block.astype(np.float16)
    return out


def plain_umap(x: np.ndarray, args, jobs: int) -> tuple[np.ndarray, dict]:
    """umap-learn; seeded (which makes it single-threaded) when `jobs` is 1."""
    import umap

    reducer = umap.UMAP(n_neighbors=args.neighbors, min_dist=0.05, metric="cosine",
                        random_state=0 if jobs == 1 else None, n_jobs=jobs, n_epochs=args.epochs)
    return reducer.fit_transform(x), {}


def fast(x: np.ndarray, args) -> tuple[np.ndarray, dict]:
    layout = Layout(method="umap", n_neighbors=args.neighbors, backend=args.fast_backend, knn=args.knn,
                    pca_dims=args.pca_dims, device=args.device, n_epochs=args.epochs, seed=0)
    layout.fit(x)
    return layout.raw_embedding_, layout.params_


_STARTUP_CHILD = """
import sys, time, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
sys.path.insert(0, {here!r})
from bench_layout import synthetic
from debugatlas.layout import Layout
x = synthetic({n}, {dim})
out = [time.perf_counter() - t0]
for _ in range(2):
    start = time.perf_counter()
    Layout(backend={backend!r}, device={device!r}, seed=0).fit(x)
    out.append(time.perf_counter() - start)
print(*out)
"""


def startup(args) -> None:
    """First-call and warm-call seconds of each backend in `args.startup` fresh processes."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    print(f"start-up: {args.startup} fresh processes, n={args.n} dim={args.dim} device={args.device}; "
          "seconds: imports + data, first fit, second fit", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for k in range(args.startup):
            for backend in ("umap-learn", "torch"):
                code = _STARTUP_CHILD.format(here=here, n=args.n, dim=args.dim, backend=backend, device=args.device)
                proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"process {k + 1} {backend}: failed\n{proc.stderr[-2000:]}")
                    continue
                imports, first, warm = (float(v) for v in proc.stdout.split()[-3:])
                print(f"process {k + 1} {backend:10s}  imports {imports:6.1f} s  first fit {first:6.1f} s  "
                      f"warm fit {warm:6.1f} s  first - warm {first - warm:6.1f} s", flush=True)


def stability(args: argparse.Namespace) -> None:
    """Seconds of the K stability layouts, each searching its own neighbours vs one shared search."""
    from sklearn.manifold import trustworthiness

    from debugatlas.pipeline.stability import variants

    warnings.filterwarnings("ignore")
    pca = args.pca_dims or None
    Layout(pca_dims=pca, knn=args.knn).fit(synthetic(5000, args.dim, seed=1))  # numba compilation
    x = synthetic(args.n, args.dim)
    sub = np.random.default_rng(0).choice(args.n, size=min(args.subsample, args.n), replace=False)
    layouts = variants(0, args.neighbors, 0.05, args.stability, args.n)
    seconds, trust = {}, {}
    for side in ("own search", "shared search"):
        start = time.perf_counter()
        shared = None
        if side == "shared search":
            widest = max(v.n_neighbors for v in layouts)
            shared = Layout(n_neighbors=widest, seed=1, pca_dims=pca, knn=args.knn).neighbours(x)
        fits = [Layout(seed=v.seed, n_neighbors=v.n_neighbors, min_dist=v.min_dist, pca_dims=pca,
                       knn=args.knn).fit(x, neighbours=shared) for v in layouts]
        seconds[side] = time.perf_counter() - start
        trust[side] = [trustworthiness(x[sub], f.embedding_[sub], n_neighbors=10, metric="cosine") for f in fits]
        stages = "  ".join(f"{k} {sum(f.params_['stage_seconds'][k] for f in fits):.1f} s"
                           for k in fits[0].params_["stage_seconds"])
        print(f"{side:14s} {len(fits)} layouts {seconds[side]:7.1f} s   ({stages})   trustworthiness "
              + " ".join(f"{t:.4f}" for t in trust[side]), flush=True)
    print(f"n={args.n} dim={args.dim} K={len(layouts)}: own / shared {seconds['own search'] / seconds['shared search']:.2f}x, "
          f"mean trustworthiness difference (shared - own) {np.mean(trust['shared search']) - np.mean(trust['own search']):+.4f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--pca-dims", type=int, default=64)
    parser.add_argument("--neighbors", type=int, default=50)
    parser.add_argument("--subsample", type=int, default=3000)
    parser.add_argument("--device", default="cpu", help="the fast path's device: cpu or cuda")
    parser.add_argument("--knn", default="auto", choices=["auto", "exact", "nndescent"])
    parser.add_argument("--fast-backend", default="torch", choices=["torch", "torchdr"],
                        help="the fast side: this package's torch backend or TorchDR's UMAP")
    parser.add_argument("--epochs", type=int, default=None, help="both sides; default umap-learn's")
    parser.add_argument("--baseline-jobs", type=int, nargs="+", default=[1],
                        help="1: seeded, single-threaded umap-learn; -1: unseeded, all cores; "
                             "both (1 -1): one ratio against each")
    parser.add_argument("--skip-baseline", action="store_true", help="time only the fast path")
    parser.add_argument("--startup", type=int, default=0,
                        help="measure first vs warm call in this many fresh processes instead")
    parser.add_argument("--stability", type=int, default=0,
                        help="time this many stability layouts, own vs shared neighbour search, instead")
    args = parser.parse_args()
    if args.stability:
        return stability(args)
    if args.startup:
        return startup(args)
    from sklearn.manifold import trustworthiness

    warnings.filterwarnings("ignore")
    warm = synthetic(5000, args.dim, seed=1)
    baselines = [] if args.skip_baseline else list(dict.fromkeys(args.baseline_jobs))
    for jobs in baselines:
        plain_umap(warm, args, jobs)  # numba compilation
    fast(warm, args)  # numba compilation / CUDA start-up

    start = time.perf_counter()
    x = synthetic(args.n, args.dim)
    print(f"data {args.n} x {args.dim} generated in {time.perf_counter() - start:.1f} s", flush=True)
    sub = np.random.default_rng(0).choice(args.n, size=min(args.subsample, args.n), replace=False)
    runs = [(f"umap-learn (nndescent, n_jobs={jobs})", lambda x, args, jobs=jobs: plain_umap(x, args, jobs))
            for jobs in baselines]
    runs.append((f"fast ({args.fast_backend} backend, {args.device}, pca_dims={args.pca_dims})", fast))
    rows = []
    for name, fn in runs:
        start = time.perf_counter()
        emb, params = fn(x, args)
        seconds = time.perf_counter() - start
        trust = trustworthiness(x[sub], emb[sub], n_neighbors=10, metric="cosine")
        rows.append((seconds, trust))
        print(f"{name:52s} {seconds:8.1f} s   trustworthiness {trust:.4f}", flush=True)
        if params:
            stages = "  ".join(f"{k} {v:.1f} s" for k, v in params.get("stage_seconds", {}).items())
            parts = [f"{key}: {params[key]}" for key in ("knn", "graph") if key in params]
            counts = (("n_edges", "edges"), ("n_epochs_run", "epochs"))
            parts += [f"{params[key]} {what}" for key, what in counts if key in params]
            print(f"  stages: {stages or 'not recorded'}   ({'; '.join(parts)})", flush=True)
    setting = f"n={args.n} dim={args.dim} n_neighbors={args.neighbors}"
    if not baselines:
        print(f"{setting}: baseline skipped, no speed-up measured")
        return
    fast_s, fast_t = rows[-1]
    for jobs, (base_s, base_t) in zip(baselines, rows):
        print(f"{setting}, umap-learn n_jobs={jobs}: speed-up {base_s / fast_s:.2f}x, trustworthiness "
              f"difference (fast - plain) {fast_t - base_t:+.4f} on {len(sub)} points")


if __name__ == "__main__":
    main()
