"""Frozen records that the stages of `analyze()` hand to each other, and the run's result."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts.record import Finding, RunRecord
from ..atlas import Atlas
from ..capture import ActivationSet
from ..confusion import ConfusingCell
from ..patches import PatchSuite
from .config import AnalysisConfig

Cell = tuple[int, int]


@dataclass(frozen=True)
class PairPlan:
    """A pair to study: images of class `a` (true) read as class `b`.

    confused: images of a predicted b. kind: "confused" (the model makes that mistake) or
    "near_miss" (it does not, but b is the closest call on images of a).
    """

    a: int
    b: int
    a_name: str
    b_name: str
    confused: int
    kind: str = "confused"


@dataclass(frozen=True)
class Layout2D:
    """The main layout: xy [N, 2] float32 in [0, 1], one row per sample; params as recorded."""

    xy: np.ndarray
    params: dict


@dataclass(frozen=True)
class PairViews:
    """What the atlas says about one pair.

    cells: ranked confusing cells of the main atlas (best first).
    filtered_a / filtered_b: class-filtered atlases; comparison: the two-class comparison atlas
    (None where too few samples qualified; `notes` says why).
    """

    cells: tuple[ConfusingCell, ...]
    filtered_a: Atlas | None
    filtered_b: Atlas | None
    comparison: Atlas | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """Feature-inversion icons of one run, each optimised once.

    icons: main-atlas cell -> [C, h, w] float32 in [0, 1]; objective: cell -> final objective.
    icon_atlas: the main atlas drawn as icons, uint8 [H, W, 3] (None when nothing was rendered).
    view_atlases: (pair index, "filtered_a" | "filtered_b" | "comparison") -> that view drawn as icons.
    exemplar_crops: (pair index, cell) -> [n, C, h, w] receptive-field crops of the cell's exemplars
    of class A of that pair.
    whitening: [C, C] the whitening every cell direction of the run is built with (`icons.run_whitening`;
    None when nothing was rendered).
    """

    icons: dict[Cell, torch.Tensor] = field(default_factory=dict)
    objective: dict[Cell, float] = field(default_factory=dict)
    icon_atlas: np.ndarray | None = None
    view_atlases: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)
    exemplar_crops: dict[tuple[int, Cell], torch.Tensor] = field(default_factory=dict)
    whitening: torch.Tensor | None = None


@dataclass(frozen=True)
class PairTest:
    """The patch stage's outcome for one pair.

    suite: kept patches with controls; its baseline is measured on the confirmation half and
    carries verdicts (None when nothing could be tested). cells_screened: cells screened
    (summary.json's `screening.n_screened`); screen_seconds: their time; n_candidates: full
    candidates measured on the selection half.
    """

    suite: PatchSuite | None = None
    cells_screened: int = 0
    screen_seconds: float = 0.0
    n_candidates: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairFinding:
    """What the run found for one studied pair (a = true class, b = predicted class).

    cells: ranked candidate confusing cells of the main atlas (`confusion.ConfusingCell`).
    filtered_a / filtered_b: class-filtered atlases; comparison: the two-class comparison atlas.
    icons: cell -> [C, h, w] float32 icon in [0, 1]; exemplar_crops: cell -> [n, C, h, w] crops.
    icon_atlases: "filtered_a" / "filtered_b" / "comparison" -> the atlas drawn as icons, uint8 [H, W, 3].
    examples: misclassified a→b images: dicts with id, p_b, image [C,H,W], heatmap [H,W].
    patches: the pair's measured `PatchSuite`, or None when no patch test ran.
    kind: "confused" or "near_miss" (see `PairPlan`).
    findings: confirmed features, best first (`artifacts.record.Finding`);
    finding_crops: cell -> [n, C, h, w] receptive-field crops of that cell's exemplars (any class).
    screening: {"n_screened", "seconds", "n_candidates"} of the patch stage.
    composition: the pair's strongest patches measured two at a time (`artifacts.record.JointRow`).
    """

    a: int
    b: int
    a_name: str
    b_name: str
    confused: int
    cells: tuple[ConfusingCell, ...] = ()
    filtered_a: Atlas | None = None
    filtered_b: Atlas | None = None
    comparison: Atlas | None = None
    icons: dict = field(default_factory=dict)
    icon_objective: dict = field(default_factory=dict)
    exemplar_crops: dict = field(default_factory=dict)
    icon_atlases: dict = field(default_factory=dict)
    examples: tuple[dict, ...] = ()
    patches: PatchSuite | None = None
    notes: tuple[str, ...] = ()
    kind: str = "confused"
    findings: tuple[Finding, ...] = ()
    finding_crops: dict = field(default_factory=dict)
    screening: dict = field(default_factory=dict)
    composition: tuple = ()


@dataclass(frozen=True)
class AnalysisResult:
    """Everything one `analyze()` run produced; `record` is the run record written as summary.json."""

    record: RunRecord
    out_dir: Path | None
    activations: ActivationSet
    attributions: torch.Tensor
    xy: np.ndarray
    atlases: dict[int, Atlas]
    pairs: list[PairFinding]
    confusion: np.ndarray
    class_names: list[str]
    config: AnalysisConfig
    icon_atlas: np.ndarray | None = None
    suites: list[PatchSuite] = field(default_factory=list)

    @property
    def summary(self) -> dict:
        """The dict written to summary.json (`record.to_dict()`)."""
        return self.record.to_dict()
