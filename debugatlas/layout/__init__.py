"""Layout: activation vectors placed in the unit square (UMAP by default; t-SNE, PCA; fast backends)."""
from .layout import BACKENDS, KNN, METHODS, Layout, exact_knn, normalize_layout, pca_project

__all__ = ["BACKENDS", "KNN", "METHODS", "Layout", "exact_knn", "normalize_layout", "pca_project"]
