"""Options of an analysis run, checked once, recorded in summary.json."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..core.errors import DebugAtlasError

FILTERED_LAYOUTS = ("shared", "own")
PATCH_BATCHING = ("batched", "per_candidate")
CHOOSING_PRECISIONS = ("auto", "float32", "bfloat16", "float16")
AUTO_FILTER_CAP = 2000  # the paper's class filter at ImageNet scale (about 2,000 of a million samples)


def auto_filter_top_n(n_samples: int, n_classes: int) -> int:
    """`filter_top_n="auto"`: one class's share of the samples, at most `AUTO_FILTER_CAP`, at least 1.

    A fixed 2,000 holds every sample of a run with fewer, and then every class filter shows the
    whole atlas; a class's share keeps the filters of different classes apart at any size.
    """
    return int(max(1, min(AUTO_FILTER_CAP, int(n_samples) // max(1, int(n_classes)))))


@dataclass(frozen=True)
class AnalysisConfig:
    """Every stage option of `analyze()`; pass any of them as a keyword argument.

    Frozen: build it with `from_options` (checked, `grid_sizes` holding `grid_size`, tuples of
    numbers), change it with `dataclasses.replace`.

    Capture: sampling ("guided": per image, `guided_fraction` of the positions where attribution
    toward the predicted class (and the named pairs' classes) is highest, the rest uniformly random;
    "random", "all", "center"), samples_per_image ("auto": enough positions per image for about five
    vectors per cell of the main grid, within the cap), cap, batch_size. Attribution: relaxed_maxpool.
    Layout: layout, n_neighbors, min_dist, metric, layout_epochs (UMAP's n_epochs; None: its
    default), layout_backend ("auto" | "umap-learn" | "torch" | "torchdr", see `layout.Layout`;
    the layout runs on the analysis device), layout_pca_dims (project on that many principal
    components first). Atlas: grid_size (the one confusions are ranked on), grid_sizes (all drawn),
    min_count, n_exemplars, filter_top_n (a class filter holds the samples whose largest attribution
    is the class and the `filter_top_n` most attributed to it; "auto": one class's share of the
    samples, samples // classes, at most `AUTO_FILTER_CAP`), filtered_layout ("shared": the
    class-filtered and comparison atlases keep the main layout's coordinates and grid; "own": each
    is laid out again, as in the paper). Confusion: n_pairs, top_cells.
    Render: render, render_cells, render_steps, render_attempts, render_batch_size.
    Patches: patches, patch_cells (cells that go from screening to the full test), patch_sizes,
    crop_sizes, n_random, max_patch_images (images of A in the confirmation half), selection_images
    (images of A in the selection half: screening and ranking only choose, so fewer suffice),
    patch_batch_size (images per forward pass),
    patch_batching ("batched": every candidate, control and position share forward passes;
    "per_candidate": one candidate at a time, same results up to the model's float differences
    between batch sizes; see `patches.Experiment.batched`),
    choosing_precision ("auto": the reduced precision the device runs natively, see
    `core.model.fast_precision`; or "float32", "bfloat16", "float16"): the precision of the forwards
    that synthesise (icons, in-context patches), screen and rank candidates; attribution, the icons'
    reported objective and the held-out confirmation always run the model as given,
    in_context_patches (also synthesise each candidate as a patch optimised in context),
    split_fraction (share of each class's images in the selection half), confirm_alpha (family-wise
    error rate of the verdicts, see `patches.stats`).
    Stability: stability_layouts (K, 0 to skip): every confirmed finding is looked for again in K
    more layouts of the same vectors (other seeds, `n_neighbors` and `min_dist` around the run's;
    see `pipeline.stability`); not run for the PCA layout, which has no such hyperparameters.
    Composition: joint_patches (0 to skip): the pair's strongest kept patches of distinct cells, this
    many, are measured two at a time on the held-out images (`pipeline.composition.joint_tests`).
    Report: n_examples (misclassified examples with pixel attributions per pair).
    Cost: budget_w (None: no limit): the run's budget in W, one float32 forward pass of the model over
    the analysed images (`pipeline.cost`); once the stages before a pair's patch tests have spent it,
    that pair's patch tests are cut, and its notes and summary.json's `budget` say so.
    """

    sampling: str = "guided"
    guided_fraction: float = 0.5
    samples_per_image: int | str = "auto"
    cap: int = 100_000
    batch_size: int = 128
    relaxed_maxpool: bool = False
    layout: str = "umap"
    n_neighbors: int = 50
    min_dist: float = 0.05
    metric: str = "cosine"
    layout_epochs: int | None = None
    layout_backend: str = "auto"
    layout_pca_dims: int | None = None
    grid_size: int = 20
    grid_sizes: tuple[int, ...] = (20, 40)
    min_count: int = 3
    n_exemplars: int = 8
    filter_top_n: int | str = "auto"
    filtered_layout: str = "shared"
    n_pairs: int = 3
    top_cells: int = 32
    render: bool = True
    render_cells: int = 32
    render_steps: int = 128
    render_attempts: int = 1
    render_batch_size: int = 64
    patches: bool = True
    patch_cells: int = 16
    patch_sizes: tuple[float, ...] = (0.25, 0.35)
    crop_sizes: tuple[int, ...] = ()
    n_random: int = 4
    max_patch_images: int = 100
    selection_images: int = 48
    patch_batch_size: int = 256
    patch_batching: str = "batched"
    choosing_precision: str = "auto"
    in_context_patches: bool = True
    split_fraction: float = 0.5
    confirm_alpha: float = 0.05
    n_examples: int = 6
    budget_w: float | None = None
    stability_layouts: int = 5
    joint_patches: int = 3

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "AnalysisConfig":
        """Build from keyword options; an unknown name is an error listing the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            import difflib

            close = {u: difflib.get_close_matches(u, names, n=2) for u in unknown}
            raise DebugAtlasError(
                f"Unknown analysis option(s) {unknown}. HINT: closest valid names {close}; "
                f"all options: {sorted(names)}."
            )
        return cls(**options).validated()

    def validated(self) -> "AnalysisConfig":
        """A checked copy: `grid_sizes` as integers holding `grid_size` first when it was missing,
        `patch_sizes` as floats. Errors quote the option and the bad value."""
        if self.samples_per_image != "auto" and (not isinstance(self.samples_per_image, int)
                                                 or isinstance(self.samples_per_image, bool)
                                                 or self.samples_per_image < 1):
            raise DebugAtlasError(f"`samples_per_image={self.samples_per_image!r}` must be 'auto' or an integer >= 1.")
        from ..capture.recorder import GUIDED, SAMPLING

        if self.sampling not in SAMPLING + (GUIDED,):
            raise DebugAtlasError(f"`sampling={self.sampling!r}` is not one of {list(SAMPLING + (GUIDED,))}.")
        if isinstance(self.guided_fraction, bool) or not isinstance(self.guided_fraction, (int, float)) \
                or not 0 <= self.guided_fraction <= 1:
            raise DebugAtlasError(f"`guided_fraction={self.guided_fraction!r}` must be a number in [0, 1].")
        for name in ("split_fraction", "confirm_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise DebugAtlasError(f"`{name}={value!r}` must be a number in (0, 1).")
        if self.filter_top_n != "auto" and (not isinstance(self.filter_top_n, int)
                                            or isinstance(self.filter_top_n, bool) or self.filter_top_n < 1):
            raise DebugAtlasError(f"`filter_top_n={self.filter_top_n!r}` must be 'auto' or an integer >= 1.")
        positive = ("cap", "batch_size", "grid_size", "min_count", "n_exemplars", "n_pairs", "top_cells",
                    "render_steps", "render_attempts", "render_batch_size", "n_random", "max_patch_images", "selection_images", "n_neighbors",
                    "patch_batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DebugAtlasError(f"`{name}={value!r}` must be an integer >= 1.")
        if not isinstance(self.stability_layouts, int) or isinstance(self.stability_layouts, bool) \
                or self.stability_layouts < 0:
            raise DebugAtlasError(f"`stability_layouts={self.stability_layouts!r}` must be an integer >= 0 "
                                  "(0 skips the stability check).")
        if not isinstance(self.joint_patches, int) or isinstance(self.joint_patches, bool) or self.joint_patches < 0:
            raise DebugAtlasError(f"`joint_patches={self.joint_patches!r}` must be an integer >= 0 "
                                  "(0 skips the test of patches together).")
        grid_sizes = tuple(int(g) for g in self.grid_sizes)
        if self.grid_size not in grid_sizes:
            grid_sizes = (self.grid_size,) + grid_sizes
        if any(g < 1 for g in grid_sizes):
            raise DebugAtlasError(f"`grid_sizes={grid_sizes!r}` must be integers >= 1.")
        if self.patch_batching not in PATCH_BATCHING:
            raise DebugAtlasError(f"`patch_batching={self.patch_batching!r}` is not one of {list(PATCH_BATCHING)}.")
        if self.choosing_precision not in CHOOSING_PRECISIONS:
            raise DebugAtlasError(f"`choosing_precision={self.choosing_precision!r}` is not one of "
                                  f"{list(CHOOSING_PRECISIONS)}.")
        if self.filtered_layout not in FILTERED_LAYOUTS:
            raise DebugAtlasError(f"`filtered_layout={self.filtered_layout!r}` is not one of {list(FILTERED_LAYOUTS)}.")
        from ..layout import BACKENDS

        if self.layout_backend not in BACKENDS:
            raise DebugAtlasError(f"`layout_backend={self.layout_backend!r}` is not one of {list(BACKENDS)}.")
        if self.layout_pca_dims is not None and (not isinstance(self.layout_pca_dims, int)
                                                 or isinstance(self.layout_pca_dims, bool)
                                                 or self.layout_pca_dims < 2):
            raise DebugAtlasError(f"`layout_pca_dims={self.layout_pca_dims!r}` must be None or an integer >= 2.")
        if self.budget_w is not None and (isinstance(self.budget_w, bool) or not isinstance(self.budget_w, (int, float))
                                          or not self.budget_w > 0):
            raise DebugAtlasError(f"`budget_w={self.budget_w!r}` must be None or a number of forward passes > 0.")
        patch_sizes = tuple(float(s) for s in self.patch_sizes)
        if not patch_sizes or any(not 0 < s <= 1 for s in patch_sizes):
            raise DebugAtlasError(f"`patch_sizes={patch_sizes!r}` must be fractions in (0, 1].")
        return replace(self, grid_sizes=grid_sizes, patch_sizes=patch_sizes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for summary.json."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
