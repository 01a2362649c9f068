"""The compiled (numba) CPU loop of one epoch of `torch_umap.optimize`, cached on disk.

Imported only when a CPU layout runs (numba is heavy). ``cache=True`` writes the machine code
next to this file (``__pycache__``) or under ``NUMBA_CACHE_DIR`` when that is set (use it when
the package folder is read-only), so compilation is paid once per machine, not once per process.
"""
from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(fastmath=True, inline="always", cache=True)
def _mix(x):  # splitmix64 finaliser: a counter-based random number, the same on any thread
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(parallel=True, fastmath=True, cache=True)
def epoch_kernel(y, out, indptr, tail, rate, epoch, a, b, seed, negative_rate, alpha):
    """One epoch: `out` = `y` moved by the edges due in `epoch`; each point writes only its row."""
    n, dim = y.shape
    stream = _mix(np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(epoch))
    # float32 arithmetic throughout (y is float32): a quarter faster than float64 here
    a, b, alpha = np.float32(a), np.float32(b), np.float32(alpha)
    size = np.uint64(n)
    zero, one, two, clip = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(4.0)
    for i in numba.prange(n):
        for d in range(dim):
            out[i, d] = y[i, d]
        for e in range(indptr[i], indptr[i + 1]):
            if epoch == 0 or math.floor(rate[e] * epoch) <= math.floor(rate[e] * (epoch - 1)):
                continue
            j = tail[e]
            d2 = zero
            for d in range(dim):
                t = y[i, d] - y[j, d]
                d2 += t * t
            if d2 > zero:
                d2b = math.exp(b * math.log(d2))
                coef = -two * a * b * d2b / (d2 * (one + a * d2b))
                for d in range(dim):  # the pull of both directed edges
                    out[i, d] += two * alpha * min(clip, max(-clip, coef * (y[i, d] - y[j, d])))
            for s in range(negative_rate):
                # top 32 random bits scaled to [0, n): no 64-bit division (n < 2**32)
                k = ((_mix(stream ^ np.uint64(e * negative_rate + s)) >> np.uint64(32)) * size) >> np.uint64(32)
                d2 = zero
                for d in range(dim):
                    t = y[i, d] - y[k, d]
                    d2 += t * t
                if d2 > zero:
                    coef = two * b / ((np.float32(0.001) + d2) * (one + a * math.exp(b * math.log(d2))))
                    for d in range(dim):
                        out[i, d] += alpha * min(clip, max(-clip, coef * (y[i, d] - y[k, d])))
