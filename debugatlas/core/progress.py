"""Progress: one tqdm bar across the stages of a run (`RunProgress`), and per-step callbacks.

A stage reports its steps through a plain callback `progress(done, total)`, so computing code
never imports tqdm and never prints; the bar belongs to whoever runs the stages.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator, Sequence, TextIO

from .errors import DebugAtlasError

Callback = Callable[[int, int], None]


def progress_bar(enabled: bool, desc: str) -> Callback | None:
    """A tqdm-backed `progress(done, total)` callback of its own bar, or None when not `enabled`."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = {"bar": None}

    def update(done: int, total: int) -> None:
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=total, desc=desc, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return update


class RunProgress:
    """One bar for a whole run: the stage running, the share done and an estimate of the time left.

    stages: [(name, weight)] in run order; a weight is the stage's expected share of the time (any
    non-negative numbers: seconds of a previous run's `timings_s` work well). enabled: True shows
    the bar, False never, None only when `file` (default stderr) is a terminal, so batch jobs and
    CI logs stay silent unless asked. Entering a stage counts every earlier stage as done (skipped
    stages need no call); `update(done, total)` moves the bar within the running stage and is the
    `progress` callback the stages take (`callback()` gives it, or None when disabled;
    `callback(detail)` also shows what the stage works on beside its name). The time left is
    tqdm's: the rate so far, in weight units per second, applied to the weight left.

        with RunProgress([("capture", 1), ("layout", 3), ("patches", 2)]) as run:
            with run.stage("capture"):
                capture(..., progress=run.callback())
    """

    def __init__(self, stages: Sequence[tuple[str, float]], enabled: bool | None = None,
                 desc: str = "debugatlas", file: TextIO | None = None) -> None:
        self.stages = [(str(name), float(weight)) for name, weight in stages]
        names = [name for name, _ in self.stages]
        if not self.stages or len(set(names)) != len(names) or any(w < 0 for _, w in self.stages):
            raise DebugAtlasError(
                f"`RunProgress(stages={stages!r})` needs distinct stage names with non-negative weights. "
                "HINT: pass e.g. [('capture', 1.0), ('layout', 3.0)]."
            )
        self.file = file if file is not None else sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.file, "isatty", lambda: False)())
        self.enabled = bool(enabled)
        total = sum(w for _, w in self.stages)
        self._weights = {n: (w / total if total > 0 else 1.0 / len(self.stages)) for n, w in self.stages}
        self._start = {}
        acc = 0.0
        for name, _ in self.stages:
            self._start[name] = acc
            acc += self._weights[name]
        self.current: str | None = None
        self.detail: str | None = None  # what the running stage works on, shown beside its name
        self.fraction = 0.0  # share of the run done, in [0, 1]
        self._bar = None
        self._desc = desc

    # -- the run ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator["RunProgress"]:
        """Mark `name` as running (earlier stages done); on a normal exit it counts as done."""
        if name not in self._weights:
            raise DebugAtlasError(
                f"`RunProgress.stage({name!r})`: not one of the stages {[n for n, _ in self.stages]}. "
                "HINT: name every stage when creating the RunProgress."
            )
        self.current, self.detail = name, None
        self._move(self._start[name])
        yield self
        self._move(self._start[name] + self._weights[name])
        self.current, self.detail = None, None

    def update(self, done: int, total: int) -> None:
        """`done` of `total` steps of the running stage are finished (a `progress` callback)."""
        if self.current is None or total <= 0:
            return
        share = min(1.0, max(0.0, done / total))
        self._move(self._start[self.current] + share * self._weights[self.current])

    def callback(self, detail: str | None = None) -> Callback | None:
        """`update` when the bar is shown, else None (stages then skip their progress calls); with
        `detail`, each call also shows it beside the running stage's name."""
        if not self.enabled:
            return None
        if detail is None:
            return self.update

        def update(done: int, total: int) -> None:
            self.detail = detail
            self.update(done, total)

        return update

    def close(self) -> None:
        """Fill the bar (the run is over, skipped stages included) and release it."""
        self._move(1.0)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "RunProgress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- drawing ---------------------------------------------------------------------------------
    def _move(self, fraction: float) -> None:
        self.fraction = min(1.0, max(self.fraction, fraction))  # never backwards
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=1000, desc=self._desc, file=self.file, leave=False,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
        label = self._desc
        if self.current:
            label += f" ({self.current}: {self.detail})" if self.detail else f" ({self.current})"
        self._bar.set_description_str(label, refresh=False)
        self._bar.n = round(1000 * self.fraction)
        self._bar.refresh()
