"""Every file name and relative path of a run directory, in one place.

A run directory holds `index.html` (the report), `summary.json`, `cells.csv`, figures of the atlases,
`icons/`, `exemplars/`, `examples/`, and `suite/pair<k>/` with one saved `PatchSuite` per studied pair.
"""
from __future__ import annotations

SUMMARY_FILE = "summary.json"
CELLS_FILE = "cells.csv"
REPORT_FILE = "index.html"
SUITE_ROOT = "suite"
SUITE_FILE = "suite.json"
MODEL_FILE = "model.pt"
ICON_ATLAS = "icon_atlas.png"


def icon_path(cell: tuple[int, int]) -> str:
    """A main-atlas cell's icon."""
    return f"icons/cell_{cell[0]:02d}_{cell[1]:02d}.png"


def suite_dir(index: int) -> str:
    """The saved suite of the `index`-th studied pair."""
    return f"{SUITE_ROOT}/pair{index}"


def suite_patches_prefix(index: int) -> str:
    """The folder (with a trailing "/") of the kept patches' PNGs of the `index`-th pair's suite."""
    return f"{suite_dir(index)}/patches/"


def atlas_figure_path(grid_size: int) -> str:
    """The class-coloured figure of the main atlas at one grid size."""
    return f"atlas_{grid_size}.png"


def atlas_grid_path(grid_size: int) -> str:
    """The exact G x G class-colour grid (background of the interactive atlas)."""
    return f"atlas_{grid_size}_grid.png"


def view_path(index: int, side: str, icons: bool = False) -> str:
    """A pair's class-filtered ("filtered_a" / "filtered_b") or comparison view, as a figure or as icons."""
    return f"pair{index}_{side}{'_icons' if icons else ''}.png"


def exemplar_image_path(image_id: int) -> str:
    """A whole dataset image shown as a cell's exemplar."""
    return f"exemplars/image_{image_id}.png"


def exemplar_crop_path(index: int, cell: tuple[int, int], n: int) -> str:
    """The n-th receptive-field crop of a pair's confusing cell."""
    return f"exemplars/pair{index}_cell_{cell[0]:02d}_{cell[1]:02d}_{n}.png"


def finding_crop_path(index: int, cell: tuple[int, int], n: int) -> str:
    """The n-th exemplar crop of a finding (a confirmed cell) of the `index`-th pair."""
    return f"findings/pair{index}_cell_{cell[0]:02d}_{cell[1]:02d}_{n}.png"


def example_paths(index: int, image_id: int) -> tuple[str, str]:
    """A misclassified example of a pair: the image and its attribution heatmap."""
    return f"examples/pair{index}_{image_id}.png", f"examples/pair{index}_{image_id}_attr.png"
