"""debugatlas: why does an image classifier confuse class A with class B?

`AtlasCallback` is imported on first use, so `import debugatlas` does not load Lightning.
"""
from __future__ import annotations

from typing import Any

from .atlas import Atlas, build_atlas, class_filtered_atlas, comparison_atlas
from .attribution import attribute, pixel_attribution
from .capture import ActivationRecorder, ActivationSet, CaptureSpec, capture, merge_shards
from .check import CheckReport, assert_suite_holds, check_suite
from .confusion import ConfusingCell, confusion_matrix, most_confused_pairs, rank_confusing_cells
from .core import DebugAtlasError, Normalized
from .data import PlantedShortcut, digits, image_folder
from .layout import Layout, normalize_layout
from .patches import (
    Experiment, KeepRule, Patch, PatchSuite, build_suite, candidate_patches, evaluate_patches, refine_patch,
)
from .pipeline import AnalysisConfig, AnalysisResult, PairFinding, analyze

__all__ = [
    "ActivationRecorder", "ActivationSet", "CaptureSpec", "AnalysisConfig", "AnalysisResult", "Atlas", "AtlasCallback",
    "CheckReport", "ConfusingCell", "DebugAtlasError", "Experiment", "KeepRule", "Layout", "Normalized",
    "PairFinding", "Patch", "PatchSuite", "PlantedShortcut", "analyze", "assert_suite_holds", "attribute", "build_atlas",
    "build_suite", "candidate_patches", "capture", "check_suite", "class_filtered_atlas", "comparison_atlas",
    "confusion_matrix", "digits", "evaluate_patches", "image_folder", "merge_shards",
    "most_confused_pairs", "normalize_layout", "pixel_attribution", "rank_confusing_cells", "refine_patch",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "AtlasCallback":
        from .lightning import AtlasCallback

        return AtlasCallback
    raise AttributeError(f"module 'debugatlas' has no attribute {name!r}")
