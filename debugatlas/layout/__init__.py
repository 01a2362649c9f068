"""Layout: activation vectors placed in the unit square (UMAP by default; t-SNE, PCA; fast backends)."""
from ._settings import BACKENDS, KNN, METHODS
from .knn import exact_knn
from .layout import Layout
from .normalize import normalize_layout

__all__ = ["BACKENDS", "KNN", "METHODS", "Layout", "exact_knn", "normalize_layout"]
