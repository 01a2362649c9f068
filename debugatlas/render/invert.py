"""Feature inversion of many directions in one batched optimisation (one batch row per direction)."""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral

import torch
from torch import nn

from ..core.errors import DebugAtlasError
from ..core.model import (
    PRECISIONS, generator, gradient_context, layer_name_and_module, model_device, precision_context, run_to_layer,
    smallest_square_input,
)
from .objectives import _as_matrix, direction_objective, layer_vector
from .param import FourierImage
from .transforms import RandomTransforms


@dataclass
class InversionResult:
    """Icons rendered for directions [M, C] of a layer.

    icons:     [M, C_in, H, W] float32 on the CPU, in [0, 1]; skipped rows are uniform grey (0.5).
    objective: [M] float32, the objective of each icon (untransformed) at the end; NaN where skipped.
    skipped:   [M] bool, True for all-zero directions (nothing to render, no optimisation run).
    params:    plain values describing the run (settings, where the objective looked, skipped rows).
    """

    icons: torch.Tensor
    objective: torch.Tensor
    skipped: torch.Tensor
    params: dict = field(default_factory=dict)


def _check_int(value, name: str, low: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise DebugAtlasError(f"`FeatureInversion({name}={value!r})` must be an integer >= {low}. HINT: {hint}")
    return int(value)


@contextlib.contextmanager
def _nondeterministic_ok(device: torch.device):
    """Let CUDA's grid_sample backward run under `torch.use_deterministic_algorithms(True)`."""
    strict = torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    if not (strict and torch.device(device).type == "cuda"):
        yield
        return
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
            yield
    finally:
        torch.use_deterministic_algorithms(True)


class FeatureInversion:
    """Render icons that make a layer's activation point along given directions.

    For direction v and the layer's vector h (centre position of [B, C, H, W], middle token of
    [B, T, C], or the vector of a pooled [B, C] output), each batch row maximises
    dot(h, v) * max(cos_floor, cos(h, v)) ** power over an image parameterised in Fourier space with 1/f
    scaling (decorrelated colour for 3 channels), with random pad/jitter/scale/rotate each step and
    Adam; the best of `attempts` runs per row is kept by final objective. Directions are processed
    in chunks of `batch_size` rows on the model's device. `precision`: the optimisation's forwards
    run under autocast to it ("float32": as the model is); the final objective that picks the best
    attempt and is reported is measured at the model's own precision.

    Same seed and settings give the same icons (bit for bit on the CPU; on CUDA up to the atomic
    adds of `grid_sample`'s backward, which has no deterministic CUDA kernel: under
    `torch.use_deterministic_algorithms(True)` the inversion runs with `warn_only=True` and the
    setting is restored afterwards).
    All-zero directions are skipped: grey icon, NaN objective, `skipped` True. NaN/Inf directions,
    an empty batch, a channel count that does not match the layer, or an `image_size` the model
    cannot run (the error names the smallest square size that reaches the layer) raise
    DebugAtlasError. The model is left as found: hooks, training flags, requires_grad, grad mode.
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module, image_size: tuple[int, int, int],
                 steps: int = 256, lr: float = 0.05, attempts: int = 1, power: float = 4.0,
                 batch_size: int = 64, seed: int = 0, transforms: bool | RandomTransforms = True,
                 decorrelate: bool = True, cos_floor: float = 0.1, precision: str = "float32") -> None:
        if not isinstance(model, nn.Module):
            raise DebugAtlasError(f"`FeatureInversion(model=...)` got {type(model).__name__}, not an nn.Module.")
        size = tuple(image_size) if isinstance(image_size, (tuple, list, torch.Size)) else ()
        if len(size) != 3 or not all(isinstance(s, Integral) and s > 0 for s in size):
            raise DebugAtlasError(
                f"`FeatureInversion(image_size={image_size!r})` must be (C, H, W) positive integers. "
                "HINT: e.g. (3, 32, 32) or (1, 24, 24)."
            )
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise DebugAtlasError(f"`FeatureInversion(lr={lr!r})` must be a finite number > 0. HINT: e.g. 0.05.")
        if not (isinstance(power, (int, float)) and math.isfinite(power) and power >= 0):
            raise DebugAtlasError(f"`FeatureInversion(power={power!r})` must be >= 0. HINT: the paper uses 4.")
        if not isinstance(transforms, (bool, RandomTransforms)):
            raise DebugAtlasError(
                f"`FeatureInversion(transforms={transforms!r})` must be True, False or a RandomTransforms."
            )
        if precision not in PRECISIONS:
            raise DebugAtlasError(
                f"`FeatureInversion(precision={precision!r})` is not one of {list(PRECISIONS)}. "
                "HINT: 'float32' runs the model as it is."
            )
        self.model = model
        self.precision = precision
        self.layer_name, self.module = layer_name_and_module(model, layer)
        if not 0 <= cos_floor <= 1:
            raise DebugAtlasError(
                f"`FeatureInversion(cos_floor={cos_floor!r})` must be in [0, 1]. HINT: the paper uses 0.1."
            )
        self.image_size = tuple(int(s) for s in size)
        self.steps = _check_int(steps, "steps", 1, "the paper uses 512-1024; 256 is a quick default.")
        self.attempts = _check_int(attempts, "attempts", 1, "1 is enough; more keeps the best of k runs.")
        self.batch_size = _check_int(batch_size, "batch_size", 1, "lower it if the device runs out of memory.")
        self.lr, self.power, self.cos_floor = float(lr), float(power), float(cos_floor)
        self.seed = int(seed)
        self.decorrelate = bool(decorrelate)
        self.transforms = RandomTransforms() if transforms is True else (transforms or None)

    # -- public ---------------------------------------------------------------------------------
    def invert(self, directions: torch.Tensor) -> InversionResult:
        """Render one icon per row of `directions` [M, C] (C = the layer's channels)."""
        c, h, w = self.image_size
        gen = generator(self.seed)
        device = model_device(self.model)
        with gradient_context(self.model):  # tensors made here are normal even under inference_mode
            dirs = _as_matrix(directions, "directions").float().clone()
            skipped = dirs.abs().sum(1) == 0
            todo = torch.nonzero(~skipped).flatten()
            icons = torch.full((dirs.shape[0], c, h, w), 0.5)
            objective = torch.full((dirs.shape[0],), float("nan"))
            where = self._probe(device, dirs.shape[1])
            with _nondeterministic_ok(device):
                for start in range(0, len(todo), self.batch_size):
                    rows = todo[start:start + self.batch_size]
                    icons[rows], objective[rows] = self._optimise(dirs[rows].to(device), gen, device)
        return InversionResult(icons, objective, skipped, self._params(where, skipped, device))

    def score(self, images: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """The objective [M] float32 of images [M, C_in, H, W] for directions [M, C], row by row."""
        device = model_device(self.model)
        with gradient_context(self.model), torch.no_grad():
            dirs = _as_matrix(directions, "directions").float().clone()
            if images.dim() != 4 or images.shape[0] != dirs.shape[0]:
                raise DebugAtlasError(
                    f"`score(images)` has shape {tuple(images.shape)}; expected [{dirs.shape[0]}, C, H, W], "
                    "one image per direction."
                )
            return self._objective(images.clone().float().to(device), dirs.to(device)).float().cpu()

    # -- internals ------------------------------------------------------------------------------
    def _objective(self, images: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        vec, _ = layer_vector(run_to_layer(self.model, self.module, images, self.layer_name))
        if vec.shape[-1] != v.shape[-1]:
            raise DebugAtlasError(
                f"The directions have {v.shape[-1]} channels but layer {self.layer_name!r} has "
                f"{vec.shape[-1]}. HINT: build the directions from activations of the same layer."
            )
        return direction_objective(vec.float(), v, self.power, self.cos_floor)

    def _optimise(self, v: torch.Tensor, gen: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
        best_img, best_obj = None, None
        for _ in range(self.attempts):
            param = FourierImage(v.shape[0], self.image_size, gen, device, decorrelate=self.decorrelate)
            opt = torch.optim.Adam(param.parameters(), lr=self.lr)
            for _ in range(self.steps):
                images = param.image()
                if self.transforms is not None:
                    images = self.transforms(images, gen)
                with precision_context(device, self.precision):
                    loss = -self._objective(images, v).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                images = param.image()
                final = self._objective(images, v)
            if best_img is None:
                best_img, best_obj = images, final
            else:
                better = final > best_obj
                best_img = torch.where(better[:, None, None, None], images, best_img)
                best_obj = torch.where(better, final, best_obj)
        return best_img.detach().float().cpu(), best_obj.detach().float().cpu()

    def _probe(self, device, channels: int) -> str:
        c, h, w = self.image_size
        try:
            with torch.no_grad():
                output = run_to_layer(self.model, self.module, torch.full((1, c, h, w), 0.5, device=device),
                                      self.layer_name)
        except DebugAtlasError:
            raise
        except Exception as exc:
            smallest = smallest_square_input(self.model, self.module, self.layer_name, c, max(h, w), device)
            hint = (f"the smallest square input that reaches layer {self.layer_name!r} is {smallest}x{smallest}; "
                    f"pass image_size=({c}, {smallest}, {smallest}) or larger."
                    if smallest else f"no square size up to 1024 worked either; check that "
                    f"image_size has the model's number of input channels (got C={c}).")
            raise DebugAtlasError(
                f"`FeatureInversion(image_size={self.image_size!r})`: the model failed on a "
                f"[1, {c}, {h}, {w}] input ({type(exc).__name__}: {exc}). HINT: {hint}"
            ) from exc
        vec, where = layer_vector(output)
        if vec.shape[-1] != channels:
            raise DebugAtlasError(
                f"The directions have {channels} channels but layer {self.layer_name!r} has "
                f"{vec.shape[-1]}. HINT: build the directions from activations of the same layer."
            )
        return where

    def _params(self, where: str, skipped: torch.Tensor, device) -> dict:
        _, h, w = self.image_size
        return {
            "layer": self.layer_name, "image_size": list(self.image_size), "steps": self.steps,
            "lr": self.lr, "attempts": self.attempts, "power": self.power, "cos_floor": self.cos_floor,
            "batch_size": self.batch_size, "seed": self.seed, "parameterization": "fourier 1/f, sigmoid",
            "decorrelate": self.decorrelate and self.image_size[0] == 3,
            "transforms": self.transforms.params(h, w) if self.transforms is not None else None,
            "objective_at": where, "pooled": where.startswith("pooled"),
            "skipped": torch.nonzero(skipped).flatten().tolist(), "device": str(device),
            "precision": self.precision,
        }
