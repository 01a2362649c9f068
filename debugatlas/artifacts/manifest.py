"""The manifest of a run directory: the pictures written beside index.html, and the atlas grids the
interactive atlas draws, as frozen records.

Paths are relative to the run directory (`artifacts.paths`); None where a picture was not written.
The numbers of a run are in its run record (`artifacts.record`); the manifest only says where the
page finds its pictures and how the atlas cells are mixed. `report.write_report` takes it, or a
plain dict of the same shape (read leniently: a malformed entry becomes a labelled gap).
"""
from __future__ import annotations

from dataclasses import dataclass, field

Cell = tuple[int, int]


@dataclass(frozen=True)
class AtlasCell:
    """One valid cell of an atlas grid: its samples, class mix (name -> samples), mean
    attribution per class (name -> value), exemplar image files and icon file."""

    cell: Cell
    count: int
    classes: dict[str, int] = field(default_factory=dict)
    attribution: dict[str, float] = field(default_factory=dict)
    exemplars: tuple[str, ...] = ()
    icon: str | None = None


@dataclass(frozen=True)
class AtlasPictures:
    """One grid size: its figure (`image`), the exact G x G class-colour grid (`grid_image`), the
    icon atlas covering the grid (`icon_image`, cell [i, j] at column i, row j from the top), cells."""

    grid_size: int
    image: str | None = None
    grid_image: str | None = None
    icon_image: str | None = None
    cells: tuple[AtlasCell, ...] = ()


@dataclass(frozen=True)
class Example:
    """A misclassified image of A: the image, its attribution overlay, and the model's P(B)."""

    id: int | None
    image: str | None
    heatmap: str | None
    p_b: float | None


@dataclass(frozen=True)
class PairPictures:
    """What was drawn for one studied pair: its class-filtered and comparison views, the exemplar
    crops of its ranked cells and of its findings (cell -> files, best first), its misclassified
    examples, and notes about the pictures."""

    a: str
    b: str
    filtered_a: str | None = None
    filtered_b: str | None = None
    comparison: str | None = None
    cell_crops: dict[Cell, tuple[str, ...]] = field(default_factory=dict)
    finding_crops: dict[Cell, tuple[str, ...]] = field(default_factory=dict)
    misclassified: tuple[Example, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """Everything the report shows beside the run record.

    title / model / data / score_description: header text. icon_atlas: the main grid's icon atlas.
    suite_dir / check_command: the saved patch suites and the `debugatlas check` line that gates
    a checkpoint on them (None when no suite was saved).
    """

    title: str = "debugatlas report"
    model: str | None = None
    data: str | None = None
    score_description: str | None = None
    icon_atlas: str | None = None
    atlases: tuple[AtlasPictures, ...] = ()
    pairs: tuple[PairPictures, ...] = ()
    suite_dir: str | None = None
    check_command: str | None = None

    def pair(self, a: str, b: str) -> PairPictures:
        """The pictures of the pair (a, b); an empty entry when none were drawn."""
        return next((p for p in self.pairs if (p.a, p.b) == (a, b)), PairPictures(a, b))
