"""The unit of cost, W: one float32 forward pass of the model over the analysed images.

A cost in W holds on a CPU and on a GPU alike, where seconds do not. It is measured in the run,
just before the analysis, on a seeded sample of at most `PROBE_IMAGES` of the analysed images
(after one untimed warm-up batch), and scaled to all of them: a forward's cost is linear in the
images once a batch is full, and the sample keeps the measurement itself well under 1 W.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..core.model import preserved_model_state
from .context import RunContext

PROBE_IMAGES = 512


@dataclass(frozen=True)
class ForwardCost:
    """W of a run: `seconds` for one float32 forward over `images` analysed images, estimated from
    `timed` of them (`probe_seconds`)."""

    seconds: float
    images: int
    timed: int
    probe_seconds: float

    def in_w(self, seconds: float) -> float:
        """`seconds` as a multiple of W (NaN when W is 0)."""
        return float(seconds) / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"seconds": float(f"{self.seconds:.6g}"), "images": self.images, "timed_images": self.timed,
                "rule": f"one float32 forward over the analysed images, timed on {self.timed} of them "
                        "and scaled"}


def measure_w(ctx: RunContext, n_images: int) -> ForwardCost:
    """Time one float32 forward of `ctx.model` over a sample of the `n_images` analysed images."""
    n_images = int(n_images)
    timed = min(n_images, PROBE_IMAGES)
    rng = np.random.default_rng(ctx.seed)
    ids = np.sort(rng.permutation(n_images)[:timed])
    images = ctx.images(ids)
    batch = int(ctx.config.batch_size)
    with preserved_model_state(ctx.model), torch.no_grad():
        ctx.model.eval()
        ctx.model(images[:batch].to(ctx.device))  # warm-up: allocations, kernel choice
        _sync(ctx.device)
        start = time.perf_counter()
        for i in range(0, timed, batch):
            ctx.model(images[i:i + batch].to(ctx.device))
        _sync(ctx.device)
        probe = time.perf_counter() - start
    return ForwardCost(probe * n_images / max(1, timed), n_images, timed, probe)


def _sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
