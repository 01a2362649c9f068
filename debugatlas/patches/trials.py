"""Patch trials measured a chunk of images at a time, so that an experiment can stop early.

An `Experiment` (`patches.types`) says how patches are measured (the pair, sizes, placements,
positions, seed, batching, device, precision); a `TrialLog` holds, per patch and per chunk of
images, which trials flipped the model to B. Measuring the next chunk only for the patches still in question is what the
candidate race (`patches.race`) and the sequential confirmation (`patches.sequential`) do; a
result is always summarised on exactly the chunks its patch was measured on, with its controls
(same geometry and placement) on the same chunks, so every comparison is on the same images.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from ..core.errors import DebugAtlasError
from ..core.model import preserved_model_state
from .candidates import _geometry
from .evaluate import _classified, _device, _measure_trials, _plan, _summarise
from .types import Experiment, Patch, PatchEvaluation, PatchResult


@dataclass
class _Chunk:
    images: torch.Tensor  # counted images of A (classified A before patching), on the CPU
    n_offered: int
    p_b_sum: float  # sum of P(B) before patching over the counted images


class TrialLog:
    """Trials of patches on chunks of images of A, for one model and `Experiment`.

    `add_images` counts a new chunk (the images the model classifies as A); `measure` runs the
    given patches (controls are patches too) on a chunk, each (patch, chunk) at most once;
    `evaluation` summarises patches on the chunks they share with their controls. `forwards`
    counts the patched images run. The model is left as found.
    """

    def __init__(self, model: nn.Module, experiment: Experiment, image_shape: Sequence[int],
                 progress: Callable[[int, int], None] | None = None) -> None:
        self.model, self.experiment = model, experiment
        self.shape = tuple(int(v) for v in image_shape)
        self.device = _device(model, experiment)
        self.chunks: list[_Chunk] = []
        self.patches: dict[str, Patch] = {}
        self.plans: dict[str, tuple] = {}
        self.trials: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.forwards = 0
        self.progress = progress

    # -- measuring --------------------------------------------------------------------------------
    def add_images(self, images_a: torch.Tensor) -> int:
        """Count a new chunk of images of A; returns its index."""
        if not isinstance(images_a, torch.Tensor) or images_a.dim() != 4 or tuple(images_a.shape[1:]) != self.shape:
            shape = tuple(images_a.shape) if isinstance(images_a, torch.Tensor) else type(images_a).__name__
            raise DebugAtlasError(f"`images_a` has shape {shape}; expected [N, *{self.shape}] in [0, 1].")
        images_a = images_a.detach().float()
        with preserved_model_state(self.model), torch.no_grad():
            self.model.eval()
            keep, p_b = _classified(self.model, images_a, self.experiment, self.device)
        p_sum = float(p_b[keep].sum()) if int(keep.sum()) else 0.0
        self.chunks.append(_Chunk(images_a[keep], len(images_a), p_sum))
        return len(self.chunks) - 1

    def measure(self, patches: Sequence[Patch], chunk: int) -> None:
        """Run every (size, position) trial of `patches` not yet measured on `chunk`."""
        exp = self.experiment
        todo = []
        for patch in patches:
            known = self.patches.get(patch.id)
            if known is not None and known is not patch and not torch.equal(known.image, patch.image):
                raise DebugAtlasError(f"Patch ids must be unique; {patch.id!r} names two patches. "
                                      "HINT: rename the patches.")
            if known is None:
                self.patches[patch.id] = patch
                self.plans[patch.id] = _plan(patch, exp, self.shape)
                self.trials[patch.id] = {}
            if chunk not in self.trials[patch.id] and patch.id not in {p.id for p in todo}:
                todo.append(patch)
        if not todo:
            return
        images = self.chunks[chunk].images
        plans = [self.plans[p.id] for p in todo]
        with preserved_model_state(self.model), torch.no_grad():
            self.model.eval()
            measured = _measure_trials(self.model, images, plans, exp, self.device, self.progress)
        for patch, (flips, probs), (_, configs) in zip(todo, measured, plans):
            self.trials[patch.id][chunk] = (flips, probs)
            self.forwards += int(images.shape[0]) * len(configs)

    # -- reading ----------------------------------------------------------------------------------
    def chunks_of(self, patch_id: str) -> list[int]:
        return sorted(self.trials.get(patch_id, {}))

    def n_images(self, chunks: Sequence[int]) -> int:
        return sum(int(self.chunks[c].images.shape[0]) for c in chunks)

    def result(self, patch_id: str, placement: str, chunks: Sequence[int] | None = None) -> PatchResult:
        """The patch's result under `placement` on `chunks` (default: every chunk it was measured on)."""
        patch = self.patches[patch_id]
        chunks = self.chunks_of(patch_id) if chunks is None else sorted(chunks)
        missing = [c for c in chunks if c not in self.trials[patch_id]]
        if missing:
            raise DebugAtlasError(f"Patch {patch_id!r} was not measured on chunk(s) {missing}.")
        variants, configs = self.plans[patch_id]
        k = len(configs)
        flips = torch.cat([self.trials[patch_id][c][0] for c in chunks]) if chunks else torch.zeros((0, k), dtype=torch.bool)
        probs = torch.cat([self.trials[patch_id][c][1] for c in chunks]) if chunks else torch.zeros((0, k))
        n = int(flips.shape[0])
        p_before = sum(self.chunks[c].p_b_sum for c in chunks) / n if n else float("nan")
        height, width = self.shape[-2:]
        return _summarise(patch, _geometry(patch, height, width), placement, flips, probs, configs, variants, p_before)

    def best_size(self, patch_id: str) -> float | None:
        """The paste size whose "random" trials flipped most, on every chunk measured (None when the
        patch has no random trials)."""
        variants, configs = self.plans[patch_id]
        chunks = self.chunks_of(patch_id)
        if not chunks:
            return None
        flips = torch.cat([self.trials[patch_id][c][0] for c in chunks]).float()
        rates: dict[int, list[float]] = {}
        for k, (vi, _r, _c, kind) in enumerate(configs):
            if kind == "random":
                rates.setdefault(vi, []).append(float(flips[:, k].mean()) if len(flips) else 0.0)
        if not rates:
            return None
        vi = max(sorted(rates), key=lambda v: sum(rates[v]) / len(rates[v]))
        return float(variants[vi][0])

    def controls_for(self, patch_id: str) -> list[str]:
        """Ids of the logged controls with the patch's geometry."""
        height, width = self.shape[-2:]
        geometry = _geometry(self.patches[patch_id], height, width)
        return [pid for pid, p in self.patches.items()
                if p.source in ("noise", "natural") and _geometry(p, height, width) == geometry]

    def with_controls(self, patch_id: str, placement: str, chunks: Sequence[int] | None = None) -> PatchResult:
        """`result` with its noise and natural control rates on the same chunks (None where missing)."""
        chunks = self.chunks_of(patch_id) if chunks is None else sorted(chunks)
        r = self.result(patch_id, placement, chunks)
        rates = {}
        for cid in self.controls_for(patch_id):
            if all(c in self.trials[cid] for c in chunks):
                rates[self.patches[cid].source] = self.result(cid, placement, chunks).flip_rate
        return replace(r, noise_flip_rate=rates.get("noise"), natural_flip_rate=rates.get("natural"))

    def evaluation(self, patch_ids: Sequence[str], control_ids: Sequence[str],
                   chunks: dict[str, Sequence[int]] | None = None) -> PatchEvaluation:
        """A `PatchEvaluation` of `patch_ids` (each on its own chunks, or `chunks[id]`) and of the
        controls (on every chunk they were measured on)."""
        exp = self.experiment
        chunks = chunks or {}
        results = []
        for pid in patch_ids:
            results += [self.with_controls(pid, pl, chunks.get(pid)) for pl in exp.placements]
        for cid in control_ids:
            results += [self.result(cid, pl) for pl in exp.placements]
        used = sorted({c for pid in list(patch_ids) + list(control_ids) for c in (chunks.get(pid) or self.chunks_of(pid))})
        n_images = max([self.n_images(chunks.get(pid) or self.chunks_of(pid)) for pid in patch_ids], default=0)
        offered = sum(self.chunks[c].n_offered for c in used)
        return PatchEvaluation(exp.a, exp.b, n_images, offered, exp.sizes, exp.placements, exp.n_random, exp.seed,
                               results)
