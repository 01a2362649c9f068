"""Seconds per stage of a layout backend, recorded in ``params_["stage_seconds"]``."""
from __future__ import annotations

import time

import torch


class Laps:
    """``lap(stage)`` records the seconds since the previous lap (CUDA synchronised) in `seconds`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 3)
        self._last = now
