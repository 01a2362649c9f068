"""Patch tests: candidates from atlas cells, measured against controls, kept as a rerunnable `PatchSuite`."""
from .candidates import candidate_patches, control_patches
from .evaluate import evaluate_patches, paste_variants, placement_positions
from .refine import refine_patch
from .split import Split, split_images
from .stats import judge, judge_evaluation, wilson_interval
from .suite import KeepRule, PatchSuite, SuiteRun, build_suite
from .types import (
    CONTROL_SOURCES, DEFAULT_CROP_SIZES, DEFAULT_SIZES, PLACEMENTS, REAL_SOURCES, SOURCES, Experiment, Patch,
    PatchEvaluation, PatchResult, from_uint8, to_uint8,
)

__all__ = ["CONTROL_SOURCES", "DEFAULT_CROP_SIZES", "DEFAULT_SIZES", "Experiment", "KeepRule", "PLACEMENTS",
           "REAL_SOURCES", "SOURCES", "Patch", "PatchEvaluation", "PatchResult", "PatchSuite", "Split", "SuiteRun",
           "build_suite", "candidate_patches", "control_patches", "evaluate_patches", "from_uint8", "paste_variants",
           "placement_positions", "judge", "judge_evaluation", "refine_patch", "split_images", "to_uint8",
           "wilson_interval"]
