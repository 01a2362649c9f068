"""Say through logging what an analysis inside training is doing, and about how long it has left.

Lightning's progress bar stands still while the callback analyses at the end of a validation
epoch; `AnalysisProgress` instead logs the stage that finished and an estimate of the time left,
taken from the previous analysis' stage timings (`summary["timings_s"]`). It listens to the
pipeline's own stage timings (records "debugatlas: <stage> took <s> s" on the `debugatlas` logger)
while the analysis runs, and to `stage(name, done, total)` calls for finer steps.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

log = logging.getLogger("debugatlas.lightning")

__all__ = ["AnalysisProgress"]

_STAGE_RECORD = "debugatlas: %s took %.2f s"


class AnalysisProgress(logging.Handler):
    """Use as a context manager around one analysis; logs at INFO on `debugatlas.lightning`.

    label: what is analysed ("epoch 3, layer model.layer3"). previous: the last analysis'
    `timings_s` ({stage: seconds, "total": seconds}) or None on the first one.
    """

    def __init__(self, label: str, previous: Mapping[str, float] | None = None, clock=time.perf_counter) -> None:
        super().__init__(level=logging.INFO)
        self.label, self.clock = label, clock
        self.previous = {k: float(v) for k, v in (previous or {}).items() if isinstance(v, (int, float))}
        self.started = 0.0
        self.messages: list[str] = []

    def estimate_left(self) -> float | None:
        """Seconds left by the previous analysis' total, or None without one."""
        total = self.previous.get("total")
        if not total:
            return None
        return max(0.0, total - (self.clock() - self.started))

    def _say(self, text: str) -> None:
        self.messages.append(text)
        log.info("AtlasCallback: %s: %s", self.label, text)

    def _left(self) -> str:
        left = self.estimate_left()
        return "time left unknown (first analysis)" if left is None else f"about {left:.0f} s left"

    def stage(self, name: str, done: int, total: int) -> None:
        """A finer step inside a stage: `done` of `total` items."""
        elapsed = self.clock() - self.started
        self._say(f"{name} {done}/{total}, {elapsed:.0f} s in, {self._left()}")

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == _STAGE_RECORD and isinstance(record.args, tuple) and len(record.args) == 2:
            stage, _ = record.args
            self._say(f"{stage} done after {self.clock() - self.started:.1f} s, {self._left()}")

    def __enter__(self) -> "AnalysisProgress":
        self.started = self.clock()
        total = self.previous.get("total")
        expected = f"the last one took {total:.0f} s" if total else "time left unknown (first analysis)"
        self._say(f"analysing ({expected})")
        source = logging.getLogger("debugatlas")
        self._saved_level = source.level
        if source.getEffectiveLevel() > logging.INFO:
            source.setLevel(logging.INFO)  # so the stage timings reach this handler
        source.addHandler(self)
        return self

    def __exit__(self, kind, value, tb) -> None:
        source = logging.getLogger("debugatlas")
        source.removeHandler(self)
        source.setLevel(self._saved_level)
        if kind is None:
            self._say(f"done in {self.clock() - self.started:.1f} s")
