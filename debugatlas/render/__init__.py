"""Render: icons for atlas cells by feature inversion, exemplar crops, and the drawn icon atlas."""
from __future__ import annotations

from .icon_atlas import draw_icon_atlas, icon_alpha
from .invert import FeatureInversion, InversionResult
from .objectives import cell_directions, direction_objective, layer_vector, whitening_matrix
from .param import COLOR_MATRIX, FourierImage, decorrelate_colors, frequency_scale
from .receptive import exemplar_crops, receptive_field, receptive_fields
from .transforms import RandomTransforms

__all__ = [
    "COLOR_MATRIX", "FeatureInversion", "FourierImage", "InversionResult", "RandomTransforms",
    "cell_directions", "decorrelate_colors", "direction_objective", "draw_icon_atlas",
    "exemplar_crops", "frequency_scale", "icon_alpha", "layer_vector", "receptive_field", "receptive_fields",
    "whitening_matrix",
]
