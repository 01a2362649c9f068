"""Patch tests: paste candidate patches onto images of A and count how many the model flips to B.

Attribution nominates, experiment confirms: candidates from confusing cells (the rendered icon,
crops of it, real exemplar crops) are measured against two controls run with the same sizes and
placements, a seeded random-noise patch and a natural crop of an image of B. Only images of A
that the model classifies correctly before patching are counted.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import DebugAtlasError
from ..core.model import as_logits, model_device, precision_context, preserved_model_state
from .candidates import _center_crop, _geometry, control_patches
from .types import Experiment, Patch, PatchEvaluation, PatchResult, patch_side


def placement_positions(height: int, width: int, ph: int, pw: int, n: int, seed: int) -> list[tuple[int, int]]:
    """`n` seeded (row, col) top-left positions for a ph x pw patch; the same for every image."""
    rng = np.random.default_rng([int(seed), int(height), int(width), int(ph), int(pw)])
    rows = rng.integers(0, height - ph + 1, size=n)
    cols = rng.integers(0, width - pw + 1, size=n)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


def _match_channels(image: torch.Tensor, channels: int, patch_id: str) -> torch.Tensor:
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return image.expand(channels, -1, -1).clone()
    if channels == 1:
        return image.mean(0, keepdim=True)
    raise DebugAtlasError(
        f"Patch {patch_id!r} has {image.shape[0]} channels but the images have {channels}. "
        "HINT: render the patch with the images' channel count."
    )


def paste_variants(patch: Patch, sizes: Sequence[float], image_shape: Sequence[int]) -> list[tuple[float, torch.Tensor]]:
    """(size_frac, [C, ph, pw] pixels) for each paste size of `patch` on images of `image_shape`."""
    c, height, width = (int(v) for v in image_shape)
    pixels = _match_channels(patch.image, c, patch.id)
    h, w = pixels.shape[-2:]
    if not patch.resize:
        fitted = _center_crop(pixels, min(h, height), min(w, width))
        return [(max(fitted.shape[-2:]) / min(height, width), fitted)]
    out = []
    for frac in sizes:
        side = patch_side(frac, min(height, width))
        scale = side / max(h, w)
        ph, pw = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
        resized = F.interpolate(pixels[None], size=(ph, pw), mode="bilinear", align_corners=False,
                                antialias=ph < h or pw < w)[0].clamp(0, 1)
        out.append((float(frac), resized))
    return out


def _configs(variants, placements, height, width, n_random, seed) -> list[tuple[int, int, int, str]]:
    """(variant index, row, col, kind) with kind "corner" or "random"; config 0 is the static one."""
    configs = []
    for vi, (_, px) in enumerate(variants):
        ph, pw = px.shape[-2:]
        if "dynamic" in placements or ("static" in placements and vi == 0):
            corners = [(0, 0), (0, width - pw), (height - ph, 0), (height - ph, width - pw)]
            if "dynamic" not in placements:
                corners = corners[:1]
            configs += [(vi, r, c, "corner") for r, c in corners]
        if "random" in placements:
            configs += [(vi, r, c, "random") for r, c in placement_positions(height, width, ph, pw, n_random, seed)]
    return configs


def _logits(model: nn.Module, batch: torch.Tensor, b: int, precision: str = "float32") -> torch.Tensor:
    if batch.device.type == "cpu" and batch.dim() == 4:
        # CPU convolutions run about 1.4x faster on channels-last input (experiments/bench_analyze.py)
        batch = batch.contiguous(memory_format=torch.channels_last)
    with precision_context(batch.device, precision):
        return as_logits(model(batch), min_classes=b + 1).float()


def _plan(patch: Patch, experiment: Experiment, shape: Sequence[int]):
    """(variants, configs) of one patch: its paste sizes and every (size, position) it is tried at."""
    c, height, width = (int(v) for v in shape)
    variants = paste_variants(patch, experiment.sizes, (c, height, width))
    return variants, _configs(variants, experiment.placements, height, width, experiment.n_random, experiment.seed)


def _device(model: nn.Module, experiment: Experiment) -> torch.device:
    """The experiment's device, else the model's."""
    return torch.device(experiment.device) if experiment.device is not None else model_device(model)


def _per_forward(experiment: Experiment, image_shape: Sequence[int], device: torch.device) -> int:
    """Images per forward of the batched trials: `max_batch`, else `auto_max_batch`."""
    if experiment.max_batch is not None:
        return int(experiment.max_batch)
    return auto_max_batch(image_shape, experiment.batch_size, device)


def _classified(model: nn.Module, images: torch.Tensor, experiment: Experiment,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(counted [N] bool: the model says A, P(B) [N]) of unpatched images, `batch_size` per forward.

    Call under `preserved_model_state` with the model in eval mode and gradients off.
    """
    a, b = experiment.a, experiment.b
    preds, p_b = [], []
    for start in range(0, len(images), experiment.batch_size):
        logits = _logits(model, images[start:start + experiment.batch_size].to(device), max(a, b),
                         experiment.precision)
        preds.append(logits.argmax(-1).cpu())
        p_b.append(logits.softmax(-1)[:, b].cpu())
    if not preds:
        return torch.zeros(0, dtype=torch.bool), torch.zeros(0)
    return torch.cat(preds) == a, torch.cat(p_b)


def _measure_one(model, images: torch.Tensor, plan, experiment: Experiment, device: torch.device):
    """Flips [N, K] bool and P(B) [N, K] of one patch's plan, `batch_size` images x positions per forward."""
    variants, configs = plan
    b = experiment.b
    pixels = [px.to(device) for _, px in variants]
    per = max(1, experiment.batch_size // len(configs))
    flips, probs = [], []
    for start in range(0, images.shape[0], per):
        chunk = images[start:start + per].to(device)
        batch = chunk.unsqueeze(1).repeat(1, len(configs), 1, 1, 1)
        for k, (vi, r, col, _) in enumerate(configs):
            ph, pw = pixels[vi].shape[-2:]
            batch[:, k, :, r:r + ph, col:col + pw] = pixels[vi]
        logits = _logits(model, batch.flatten(0, 1), b, experiment.precision).view(chunk.shape[0], len(configs), -1)
        flips.append((logits.argmax(-1) == b).cpu())
        probs.append(logits.softmax(-1)[..., b].cpu())
    k = len(configs)
    flips = torch.cat(flips) if flips else torch.zeros((0, k), dtype=torch.bool)
    probs = torch.cat(probs) if probs else torch.zeros((0, k))
    return flips, probs


def _measure_trials(model: nn.Module, images: torch.Tensor, plans: Sequence, experiment: Experiment,
                   device: torch.device, progress: Callable[[int, int], None] | None = None) -> list:
    """Flips [N, K_p] bool and P(B) [N, K_p] of every plan (one per patch) on `images`, batched or one
    patch at a time as `experiment.batched` says. `progress(done, total)` counts plans measured.

    Call under `preserved_model_state` with the model in eval mode and gradients off.
    """
    if experiment.batched:
        per_forward = _per_forward(experiment, tuple(images.shape[1:]), device)
        return _measure_all(model, images, experiment.b, plans, per_forward, device, progress, experiment.precision)
    out = []
    for done, plan in enumerate(plans, 1):
        out.append(_measure_one(model, images, plan, experiment, device))
        if progress is not None:
            progress(done, len(plans))
    return out


def auto_max_batch(image_shape: Sequence[int], batch_size: int = 256,
                   device: torch.device | str = "cpu") -> int:
    """Images per forward of the batched patch tests: as many as fit a budget of float32 input
    pixels (CUDA: 64 MiB, at most 4,096 images; CPU: 4 MiB, at most 512, where larger batches ran
    slower on a 2-core machine), and never fewer than `batch_size`.

    32 px RGB: 4,096 on a GPU, 341 on the CPU (then `batch_size` 256 is the floor only below it).
    """
    budget, cap = (64 * 2**20, 4096) if torch.device(device).type == "cuda" else (4 * 2**20, 512)
    per_image = 4 * int(np.prod([int(v) for v in image_shape]))
    return int(max(int(batch_size), min(cap, budget // max(1, per_image))))


def _measure_all(model, images, b, plans, max_batch, device, progress, precision):
    """Every (patch, size, position) trial on every image, in forwards of at most `max_batch` images.

    Trials of all patches (controls included) are packed together: a block of trials x a chunk of
    images per forward, each patched image made by one `where` against a per-trial overlay (the
    same pixels a slice assignment gives). Returns flips [N, K_p] bool and P(B) [N, K_p] per patch.
    """
    n, c, height, width = images.shape
    trials = [(p, vi, r, col) for p, (_, configs) in enumerate(plans) for vi, r, col, _ in configs]
    last = {p: t for t, (p, *_rest) in enumerate(trials)}  # a patch is done after its last trial
    flips = torch.zeros((n, len(trials)), dtype=torch.bool)
    probs = torch.zeros((n, len(trials)))
    pixels = [[px.to(device) for _, px in variants] for variants, _ in plans]
    per_image = max(1, min(n, max_batch))
    per_trial = max(1, max_batch // max(1, n))
    images = images.to(device)
    done = 0
    for t0 in range(0, len(trials), per_trial):
        block = trials[t0:t0 + per_trial]
        overlay = torch.zeros((len(block), 1, c, height, width), device=device)
        mask = torch.zeros((len(block), 1, 1, height, width), dtype=torch.bool, device=device)
        for k, (p, vi, r, col) in enumerate(block):
            px = pixels[p][vi]
            ph, pw = px.shape[-2:]
            overlay[k, 0, :, r:r + ph, col:col + pw] = px
            mask[k, 0, :, r:r + ph, col:col + pw] = True
        for i0 in range(0, n, per_image):
            chunk = images[i0:i0 + per_image]
            batch = torch.where(mask, overlay, chunk[None])  # [trials, images, C, H, W]
            logits = _logits(model, batch.flatten(0, 1), b, precision).view(len(block), chunk.shape[0], -1)
            flips[i0:i0 + chunk.shape[0], t0:t0 + len(block)] = (logits.argmax(-1) == b).T.cpu()
            probs[i0:i0 + chunk.shape[0], t0:t0 + len(block)] = logits.softmax(-1)[..., b].T.cpu()
        if progress is not None:
            while done < len(plans) and last.get(done, -1) < t0 + len(block):
                done += 1
                progress(done, len(plans))
    out, start = [], 0
    for _, configs in plans:
        out.append((flips[:, start:start + len(configs)], probs[:, start:start + len(configs)]))
        start += len(configs)
    return out


def _summarise(patch, geometry, placement, flips, probs, configs, variants, p_before) -> PatchResult:
    n = flips.shape[0]
    if placement == "static":
        ks = [0]
    else:
        kind = "corner" if placement == "dynamic" else "random"
        ks = [k for k, cfg in enumerate(configs) if cfg[3] == kind]
    f, p = flips[:, ks], probs[:, ks]
    counts = f.sum(0).tolist()
    best = max(range(len(ks)), key=lambda i: counts[i])
    vi, row, col, _ = configs[ks[best]]
    frac = variants[vi][0]
    nan = float("nan")
    if placement == "dynamic":
        rate = int(f.any(1).sum()) / n if n else nan
        after = float(p.max(1).values.mean()) if n else nan
    else:
        rate = sum(counts) / (n * len(ks)) if n else nan
        after = float(p.mean()) if n else nan
    return PatchResult(
        patch.id, patch.source, patch.cell, patch.resize, geometry, placement, n, rate,
        counts[best] / n if n else nan, p_before, after, frac, (frac, row, col),
    )


def evaluate_patches(
    model: nn.Module,
    images_a: torch.Tensor,
    patches: Sequence[Patch],
    experiment: Experiment,
    *,
    images_b: torch.Tensor | None = None,
    controls: Sequence[Patch] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PatchEvaluation:
    """Paste each patch onto the images of A the model gets right and count flips to B.

    `experiment` says how (`Experiment(a, b, sizes=..., placements=..., n_random=..., seed=...)`).
    Placements: "static" = top-left corner at the first size; "dynamic" = best of the four corners
    x all sizes per image (flipped if any flips it); "random" = `n_random` seeded positions per
    size, the same for every image (flip rate averaged over positions; `best_flip_rate` is the
    best position). Unresized patches have one size, their own. Controls (noise, and a natural
    crop of an image of B when `images_b` is given) are made by `control_patches` unless passed,
    and run with the same sizes and placements.

    `experiment.batched` (default): every patch and control x size x position x image goes through
    the model in forwards of up to `max_batch` images, trials of different patches sharing a
    forward; the unpatched images go through once. `batched=False`: patch by patch, `batch_size`
    images x positions per forward. Both give the same results up to the model's own float
    differences between batch sizes (some CPU convolutions round the last bits differently).
    `progress(done, total)` counts patches (candidates and controls) measured.
    `experiment.precision` other than "float32" runs every forward under autocast to it
    (`core.model.fast_precision`): faster where the device has it natively, for measurements that
    only choose; flip counts can differ from the model's own precision on images near a decision
    boundary. The model is left as found.
    """
    if not isinstance(images_a, torch.Tensor) or images_a.dim() != 4:
        shape = tuple(images_a.shape) if isinstance(images_a, torch.Tensor) else type(images_a).__name__
        raise DebugAtlasError(f"`images_a` has shape {shape}; expected [N, C, H, W] in [0, 1].")
    device = _device(model, experiment)
    images_a = images_a.detach().float()
    shape = tuple(int(v) for v in images_a.shape[1:])
    if controls is None:
        controls = control_patches(patches, images_b, shape, experiment.sizes, experiment.seed)
    everything = list(patches) + list(controls)
    ids = [p.id for p in everything]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DebugAtlasError(f"Patch ids must be unique; repeated: {dup}. HINT: rename the patches.")
    plans = [_plan(p, experiment, shape) for p in everything]
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        keep, p_b = _classified(model, images_a, experiment, device)
        images = images_a[keep]
        p_before = float(p_b[keep].mean()) if int(keep.sum()) else float("nan")
        measured = _measure_trials(model, images, plans, experiment, device, progress)
    height, width = shape[-2:]
    results = [_summarise(patch, _geometry(patch, height, width), pl, flips, probs, configs, variants, p_before)
               for patch, (variants, configs), (flips, probs) in zip(everything, plans, measured)
               for pl in experiment.placements]
    controls_by = {(r.source, r.geometry, r.placement): r.flip_rate for r in results if r.is_control}
    for r in results:
        if not r.is_control:
            r.noise_flip_rate = controls_by.get(("noise", r.geometry, r.placement))
            r.natural_flip_rate = controls_by.get(("natural", r.geometry, r.placement))
    return PatchEvaluation(experiment.a, experiment.b, int(keep.sum()), len(images_a), experiment.sizes,
                           experiment.placements, experiment.n_random, experiment.seed, results)
