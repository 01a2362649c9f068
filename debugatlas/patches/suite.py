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
from .types import DEFAULT_SIZES, PLACEMENTS, REAL_SOURCES, SELECTION_RULE, Patch, PatchEvaluation, PatchResult


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
        if settled is None:
            evaluation = evaluate_patches(
                model, images_a, self.a_index, self.b_index, self.patches, sizes=self.sizes,
                placements=self.placements, n_random=self.n_random, seed=self.seed,
                batch_size=batch_size or self.batch_size, device=device, progress=progress, controls=self.controls,
            )
            return SuiteRun(self.a, self.b, correct / total, a_to_b / a_total, total, a_total, evaluation)
        evaluation, looks = self._sequential(model, images_a, batch_size or self.batch_size, device, settled,
                                             set(gated) if gated is not None else {p.id for p in self.patches})
        return SuiteRun(self.a, self.b, correct / total, a_to_b / a_total, total, a_total, evaluation, looks)

    def _sequential(self, model, images_a: torch.Tensor, batch_size: int, device, settled, gated: set[str]):
        """(evaluation, number of looks): the patches measured look by look (see `run`)."""
        from .sequential import SequentialDesign, measure_in_looks
        from .stats import z_for_looks
        from .trials import Experiment, TrialLog

        experiment = Experiment(self.a_index, self.b_index, sizes=self.sizes, placements=self.placements,
                                n_random=self.n_random, seed=self.seed, batch_size=batch_size, device=device)
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
    images_b: torch.Tensor | None,
    a: int,
    b: int,
    patches: Sequence[Patch],
    class_names: Sequence[str],
    sizes: Sequence[float] = DEFAULT_SIZES,
    placements: Sequence[str] = PLACEMENTS,
    n_random: int = 8,
    seed: int = 0,
    keep: int | None = 10,
    rank_by: str | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    metadata: dict | None = None,
    batched: bool = True,
    min_synthesized: int = 0,
    precision: str = "float32",
    min_real: int = 0,
) -> PatchSuite:
    """Quantise the candidates and controls to 8 bits, measure them, keep the `keep` best.

    Ranking is by measured flip rate above the stronger control (`PatchResult.lift`) under
    `rank_by` (default "random" when evaluated), never by attribution. Of the `keep` places, up to
    `min_synthesized` go to the best synthesized candidates (any source but a real exemplar crop)
    when the ranking alone would keep fewer: a crop of a real image that holds a feature often
    outranks every image made from the feature's direction, and the suite is meant to test both.
    Likewise up to `min_real` places go to the best crops of real images, so that a feature whose
    synthesized patches outrank everything is also measured as real images show it. The baseline
    holds the kept patches and all controls, every placement. `precision`: see `evaluate_patches`
    (a suite chosen at reduced precision is confirmed at the model's own).
    """
    names = [str(c) for c in class_names]
    for label, idx in (("a", a), ("b", b)):
        if not 0 <= int(idx) < len(names):
            raise DebugAtlasError(f"`{label}={idx!r}` is not a class index below {len(names)}.")
    candidates = [p.quantized() for p in patches]
    shape = tuple(int(v) for v in images_a.shape[1:])
    controls = [p.quantized() for p in control_patches(candidates, images_b, shape, sizes, seed)]
    evaluation = evaluate_patches(model, images_a, a, b, candidates, sizes=sizes, placements=placements,
                                  n_random=n_random, seed=seed, batch_size=batch_size, device=device,
                                  progress=progress, controls=controls, batched=batched, precision=precision)
    ranked = [r.patch_id for r in evaluation.ranked(rank_by)]
    kept = ranked if keep is None else _keep(ranked, int(keep), int(min_synthesized),
                                             {p.id for p in candidates if p.source not in REAL_SOURCES},
                                             int(min_real))
    by_id = {p.id: p for p in candidates}
    evaluation.results = ([r for pid in kept for r in evaluation.results if r.patch_id == pid]
                          + [r for r in evaluation.results if r.is_control])
    return PatchSuite(names[a], names[b], int(a), int(b), [by_id[i] for i in kept], controls,
                      evaluation.sizes, evaluation.placements, int(n_random), int(seed), evaluation, names,
                      shape, int(batch_size), SELECTION_RULE, dict(metadata or {}))


def _keep(ranked: list[str], keep: int, min_synthesized: int, synthesized: set[str],
          min_real: int = 0) -> list[str]:
    """The first `keep` of `ranked`, with the best `min_synthesized` synthesized ids and then the
    best `min_real` others among them where they exist (replacing the lowest-ranked of the rest),
    in ranking order."""
    synth = [i for i in ranked if i in synthesized][:min(min_synthesized, keep)]
    real = [i for i in ranked if i not in synthesized][:max(0, min(min_real, keep - len(synth)))]
    reserved = set(synth) | set(real)
    rest = [i for i in ranked if i not in reserved][:keep - len(reserved)]
    chosen = reserved | set(rest)
    return [i for i in ranked if i in chosen]


def summary_patch_entries(suite: PatchSuite, prefix: str = "patches/",
                          placements: Sequence[str] | None = None) -> list[dict]:
    """The `patches` rows of a pair in summary.json (see `artifacts.summary.patch_entries`)."""
    from ..artifacts.summary import patch_entries

    return patch_entries(suite, prefix, placements)
