"""PatchSuite: the measured patches of one pair (A, B), saved as PNGs + `suite.json`, rerun in CI.

Patches are quantised to 8 bits before they are measured, so the baseline in the suite is what a
rerun of the saved PNGs on the same model gives, exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..core.datasets import iterate_dataset
from ..core.errors import DebugAtlasError
from ..core.model import model_device, preserved_model_state
from .candidates import control_patches
from .evaluate import evaluate_patches
from .types import REAL_SOURCES, SELECTION_RULE, Experiment, Patch, PatchEvaluation, PatchResult


@dataclass(frozen=True)
class KeepRule:
    """Which measured candidates a suite keeps, by rank.

    keep: how many (None: all). rank_by: the placement they are ranked under (None: "random" when
    evaluated, see `PatchEvaluation.ranked`); the rank is the measured flip rate above the
    stronger control, never attribution. min_synthesized: of the `keep` places, up to this many go
    to the best synthesized candidates (any source but a real exemplar crop) when the ranking
    alone would keep fewer: a crop of a real image that holds a feature often outranks every
    image made from the feature's direction, and a suite is meant to test both. min_real: then up
    to this many go to the best crops of real images, so that a feature whose synthesized patches
    outrank everything is also measured as real images show it.
    """

    keep: int | None = 10
    min_synthesized: int = 0
    min_real: int = 0
    rank_by: str | None = None

    def __post_init__(self) -> None:
        if self.keep is not None and (isinstance(self.keep, bool) or int(self.keep) < 1):
            raise DebugAtlasError(f"`KeepRule(keep={self.keep!r})` must be None or an integer >= 1.")
        if int(self.min_synthesized) < 0 or int(self.min_real) < 0:
            raise DebugAtlasError(f"`KeepRule(min_synthesized={self.min_synthesized!r}, "
                                  f"min_real={self.min_real!r})` must be >= 0.")

    def reserved(self, ranked: Sequence[str], synthesized: set[str]) -> set[str]:
        """The ids of `ranked` (best first) whose places are reserved: the best `min_synthesized`
        synthesized ones, then the best `min_real` others, within `keep` places."""
        if self.keep is None:
            return set(ranked)
        keep = int(self.keep)
        synth = [i for i in ranked if i in synthesized][:min(int(self.min_synthesized), keep)]
        real = [i for i in ranked if i not in synthesized][:max(0, min(int(self.min_real), keep - len(synth)))]
        return set(synth) | set(real)

    def kept(self, ranked: Sequence[str], synthesized: set[str]) -> list[str]:
        """The kept ids of `ranked` (best first), in ranking order: the reserved ones and the best
        of the rest up to `keep` (a reserved id replaces the lowest-ranked of the rest)."""
        if self.keep is None:
            return list(ranked)
        reserved = self.reserved(ranked, synthesized)
        rest = [i for i in ranked if i not in reserved][:int(self.keep) - len(reserved)]
        chosen = reserved | set(rest)
        return [i for i in ranked if i in chosen]


@dataclass
class PatchSuite:
    """The patches of one pair with their baseline, enough to rerun them on another checkpoint.

    a, b / a_index, b_index: class names and indices (A the true class, B the target).
    patches: candidate patches (with their source cell), best first; controls: the noise and
    natural controls measured with them. Pixels are 8-bit exact ([C, h, w] float32, k / 255).
    sizes, placements, n_random, seed, batch_size: how they were measured (reruns use the same).
    selection: the image-selection rule. baseline: the measured PatchEvaluation (controls incl.).
    class_names: all class names; image_shape: (C, H, W) of the images measured on.
    """

    a: str
    b: str
    a_index: int
    b_index: int
    patches: list[Patch]
    controls: list[Patch]
    sizes: tuple[float, ...]
    placements: tuple[str, ...]
    n_random: int
    seed: int
    baseline: PatchEvaluation
    class_names: list[str]
    image_shape: tuple[int, int, int]
    batch_size: int = 256
    selection: str = SELECTION_RULE
    metadata: dict = field(default_factory=dict)

    # -- rerun ----------------------------------------------------------------------------------
    def run(self, model: nn.Module, dataset, batch_size: int | None = None,
            device: torch.device | str | None = None,
            progress: Callable[[int, int], None] | None = None, *, max_images: int | None = None,
            settled: Callable[[list[PatchResult], float], bool] | None = None,
            gated: Sequence[str] | None = None) -> "SuiteRun":
        """Rerun every patch and control (same seed, sizes, placements) on `dataset`.

        Counted images: those of class A that `model` classifies correctly. Also measures the
        model's accuracy on the whole dataset and the rate at which images of A are predicted B.
        `max_images`: measure the patches on at most this many images of A (a seeded choice).
        `settled(results, z)`: with it, the images are measured in looks (`patches.sequential`): a
        patch of `gated` (default: all) leaves once `settled` says its results (one per placement,
        controls on the same images) decide with intervals of Wilson `z`, the others after the first look; rates then carry
        intervals at 1 - 0.05 / looks (`SuiteRun.looks`).
        """
        names = getattr(dataset, "classes", None)
        if names is not None and [str(c) for c in names] != list(self.class_names):
            raise DebugAtlasError(
                f"The dataset's classes {list(names)[:12]} differ from the suite's {self.class_names[:12]}. "
                "HINT: check the suite against a dataset with the same classes in the same order."
            )
        device = torch.device(device) if device is not None else model_device(model)
        correct = total = a_total = a_to_b = 0
        images_a = []
        with preserved_model_state(model), torch.no_grad():
            model.eval()
            for _, images, labels in iterate_dataset(dataset, batch_size or self.batch_size):
                if tuple(images.shape[1:]) != tuple(self.image_shape):
                    raise DebugAtlasError(
                        f"Dataset images have shape {tuple(images.shape[1:])}; the suite was measured on "
                        f"{tuple(self.image_shape)}. HINT: resize the images (`--image-size`) or match the "
                        "channels (`--grayscale`)."
                    )
                preds = model(images.to(device)).argmax(-1).cpu()
                correct += int((preds == labels).sum())
                total += len(labels)
                is_a = labels == self.a_index
                a_total += int(is_a.sum())
                a_to_b += int((preds[is_a] == self.b_index).sum())
                images_a.append(images[is_a])
        if a_total == 0:
            raise DebugAtlasError(
                f"The dataset has no images of class {self.a!r}. HINT: pass a dataset that contains class A."
            )
        images_a = torch.cat(images_a)
        if max_images is not None and len(images_a) > int(max_images):
            pick = torch.randperm(len(images_a), generator=torch.Generator().manual_seed(self.seed))[:int(max_images)]
            images_a = images_a[pick.sort().values]
        experiment = self.experiment(batch_size=batch_size, device=device)
        if settled is None:
            evaluation = evaluate_patches(model, images_a, self.patches, experiment, controls=self.controls,
                                          progress=progress)
            return SuiteRun(self.a, self.b, correct / total, a_to_b / a_total, total, a_total, evaluation)
        evaluation, looks = self._sequential(model, images_a, experiment, settled,
                                             set(gated) if gated is not None else {p.id for p in self.patches})
        return SuiteRun(self.a, self.b, correct / total, a_to_b / a_total, total, a_total, evaluation, looks)

    def experiment(self, batch_size: int | None = None, device: torch.device | str | None = None) -> Experiment:
        """The `Experiment` the suite's patches are measured with (its sizes, placements, positions
        and seed; `batch_size` None: the suite's), at the model's own precision."""
        return Experiment(self.a_index, self.b_index, sizes=self.sizes, placements=self.placements,
                          n_random=self.n_random, seed=self.seed, batch_size=batch_size or self.batch_size,
                          device=device)

    def _sequential(self, model, images_a: torch.Tensor, experiment: Experiment, settled, gated: set[str]):
        """(evaluation, number of looks): the patches measured look by look (see `run`)."""
        from .sequential import SequentialDesign, measure_in_looks
        from .stats import z_for_looks
        from .trials import TrialLog

        log = TrialLog(model, experiment, self.image_shape)
        design = SequentialDesign.for_images(len(images_a))
        z = z_for_looks(design.n_looks)

        def leaves(p: Patch, _look: int) -> bool:
            return p.id not in gated or settled([log.with_controls(p.id, pl) for pl in self.placements], z)

        chunks = measure_in_looks(log, self.patches, self.controls, images_a, design, leaves)
        controls = [c.id for c in self.controls if log.chunks_of(c.id)]
        return log.evaluation([p.id for p in self.patches], controls, chunks), design.n_looks

    # -- files (format: `artifacts.suite_file`) --------------------------------------------------
    def to_dict(self) -> dict:
        """The `suite.json` content (plain values)."""
        from ..artifacts.suite_file import suite_dict

        return suite_dict(self)

    def save(self, directory: str | Path) -> Path:
        """Write `directory/suite.json` and the PNGs; an existing suite is replaced only once the new
        one is complete."""
        from ..artifacts.suite_file import write_suite

        return write_suite(self, directory)

    @classmethod
    def load(cls, directory: str | Path) -> "PatchSuite":
        """Read a suite written by `save`, checking the schema, every PNG and every shape."""
        from ..artifacts.suite_file import read_suite

        fields = read_suite(directory)
        try:
            fields["patches"] = [Patch(**p) for p in fields["patches"]]
            fields["controls"] = [Patch(**p) for p in fields["controls"]]
            fields["baseline"] = PatchEvaluation.from_dict(fields["baseline"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DebugAtlasError):
                raise
            raise DebugAtlasError(
                f"The suite in {str(directory)!r} is incomplete or malformed ({type(exc).__name__}: {exc}). "
                "HINT: save the suite again."
            ) from exc
        fields["selection"] = fields["selection"] or SELECTION_RULE
        return cls(**fields)


@dataclass
class SuiteRun:
    """A suite rerun on one model and dataset.

    accuracy: on the whole dataset; confusion_rate: fraction of images of A predicted B;
    num_images / num_a: dataset size and images of A; evaluation: every patch and control.
    looks: how many looks the sequential rerun had (its intervals are at 1 - 0.05 / looks).
    """

    a: str
    b: str
    accuracy: float
    confusion_rate: float
    num_images: int
    num_a: int
    evaluation: PatchEvaluation
    looks: int = 1

    def to_frame(self):
        """The patch results as a pandas DataFrame."""
        return self.evaluation.to_frame()


def build_suite(
    model: nn.Module,
    images_a: torch.Tensor,
    patches: Sequence[Patch],
    experiment: Experiment,
    *,
    class_names: Sequence[str],
    images_b: torch.Tensor | None = None,
    keep: KeepRule = KeepRule(),
    progress: Callable[[int, int], None] | None = None,
    metadata: dict | None = None,
) -> PatchSuite:
    """Quantise the candidates and controls to 8 bits, measure them with `experiment`, keep the best.

    `keep` says how many and which (`KeepRule`: by measured flip rate above the stronger control,
    with places reserved for synthesized candidates and real crops). Controls: noise, and natural
    crops of `images_b` when given. The baseline holds the kept patches and all controls, every
    placement. `experiment.precision`: see `evaluate_patches` (a suite chosen at reduced precision
    is confirmed at the model's own: its reruns measure at float32).
    """
    names = [str(c) for c in class_names]
    a, b = experiment.a, experiment.b
    for label, idx in (("a", a), ("b", b)):
        if not 0 <= idx < len(names):
            raise DebugAtlasError(f"`{label}={idx!r}` is not a class index below {len(names)}.")
    candidates = [p.quantized() for p in patches]
    shape = tuple(int(v) for v in images_a.shape[1:])
    controls = [p.quantized() for p in control_patches(candidates, images_b, shape, experiment.sizes, experiment.seed)]
    evaluation = evaluate_patches(model, images_a, candidates, experiment, controls=controls, progress=progress)
    ranked = [r.patch_id for r in evaluation.ranked(keep.rank_by)]
    kept = keep.kept(ranked, {p.id for p in candidates if p.source not in REAL_SOURCES})
    by_id = {p.id: p for p in candidates}
    evaluation.results = ([r for pid in kept for r in evaluation.results if r.patch_id == pid]
                          + [r for r in evaluation.results if r.is_control])
    return PatchSuite(names[a], names[b], a, b, [by_id[i] for i in kept], controls,
                      evaluation.sizes, evaluation.placements, experiment.n_random, experiment.seed, evaluation,
                      names, shape, experiment.batch_size, SELECTION_RULE, dict(metadata or {}))
