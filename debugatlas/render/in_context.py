"""Icons that work as patches: feature inversion *in context*.

A whole-canvas icon shows what a cell's direction looks like on its own; cut down and pasted on a
real image it often does nothing. Here the optimised image is patch-sized and every step pastes
it at random positions on real images of class A, maximising the cell's direction at the layer
positions the patch covers. What comes out is, by construction, a patch: it works at that pixel
size, on those images, wherever it lands.

Same parameterisation (`FourierImage`, 1/f spectrum, decorrelated colour), objective
(`direction_objective`: dot x max(cos_floor, cos)^power, on whitened `cell_directions`), seeding and
batching (one batch row per direction, chunks of `batch_size`) as `FeatureInversion`. The model is
left as found.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..core.errors import DebugAtlasError
from ..core.model import (PRECISIONS, generator, gradient_context, layer_name_and_module, model_device,
                          precision_context, run_to_layer)
from .objectives import _as_matrix
from .param import FourierImage
from .transforms import RandomTransforms

# Adam's step size on the Fourier coefficients. A patch covers a few layer positions, so its few
# coefficients must move far. Optimised from a planted trigger's own mean activation (four planted
# CIFAR-10 models: checker, cross, flat square, line; ResNet width 16, layer2; 128 steps), the
# patches sent 11-97 % of held-out trucks to airplane at 0.05 and 83-100 % at 0.5, the trigger
# itself 78-92 % (reports/bench/in_context_from_trigger.txt). Pasted copies per direction and
# step: 4 did as well as 8 there (93, 100, 83, 100 % against 85, 100, 76, 100 %) at half the forwards.
LR = 0.5
CONTEXTS = 4
# Patch transforms: no padding or shift (the random paste position already moves the patch).
PATCH_TRANSFORMS = RandomTransforms(pad=0, jitter=0, scale=(0.9, 1.1), degrees=10.0)


@dataclass(frozen=True)
class InContextResult:
    """Patches optimised in context for directions [M, C] of a layer.

    patches:   [M, C_in, p, p] float32 on the CPU, in [0, 1].
    objective: [M] float32 objective of each final patch on the held evaluation contexts
               (fixed images and positions, no transforms).
    initial_objective: [M] float32 the same for the starting images (the rise is the gain).
    params:    plain values describing the run.
    """

    patches: torch.Tensor
    objective: torch.Tensor
    initial_objective: torch.Tensor
    params: dict = field(default_factory=dict)


def covered_positions(layer_hw: tuple[int, int], image_hw: tuple[int, int], rows: torch.Tensor,
                      cols: torch.Tensor, size: int) -> torch.Tensor:
    """[n, H', W'] float mask of the layer positions whose centre pixel lies in each pasted patch.

    The centre pixel of layer position (y, x) is ((y + 0.5) * H / H' - 0.5, ...); a patch whose
    box holds no centre (smaller than the stride) gets the position nearest to its own centre.
    """
    (lh, lw), (h, w) = layer_hw, image_hw
    cy = (torch.arange(lh, dtype=torch.float64) + 0.5) * h / lh - 0.5
    cx = (torch.arange(lw, dtype=torch.float64) + 0.5) * w / lw - 0.5
    r, c = rows.double()[:, None], cols.double()[:, None]
    in_y = (cy[None] >= r) & (cy[None] <= r + size - 1)
    in_x = (cx[None] >= c) & (cx[None] <= c + size - 1)
    mask = (in_y[:, :, None] & in_x[:, None, :]).float()
    empty = mask.flatten(1).sum(1) == 0
    if empty.any():
        mid_r, mid_c = r[:, 0] + (size - 1) / 2, c[:, 0] + (size - 1) / 2
        ny = (cy[None] - mid_r[:, None]).abs().argmin(1)
        nx = (cx[None] - mid_c[:, None]).abs().argmin(1)
        for k in torch.nonzero(empty).flatten().tolist():
            mask[k, ny[k], nx[k]] = 1.0
    return mask


class InContextInversion:
    """Optimise patch-sized images that, pasted on `images` (of class A), drive a layer along directions.

    images: [N, C_in, H, W] in [0, 1], the context pool (the selection half of A's images).
    patch_size: side p of the square patch in pixels (pasted at native size).
    contexts: pasted copies per direction and step (each its own image and position).
    transforms: True for `PATCH_TRANSFORMS` (scale and rotation of the patch), False, or a
        `RandomTransforms`.
    precision: the optimisation's forwards run under autocast to it ("float32": as the model is);
        the patch and its parameters stay float32, and the objectives it reports (initial, final,
        `score`) are measured at the model's own precision.
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module, images: torch.Tensor, patch_size: int,
                 steps: int = 128, lr: float = LR, contexts: int = CONTEXTS, eval_contexts: int = 16,
                 power: float = 4.0, cos_floor: float = 0.1, batch_size: int = 32, seed: int = 0,
                 transforms: bool | RandomTransforms = True, decorrelate: bool = True,
                 precision: str = "float32") -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] == 0:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise DebugAtlasError(f"`InContextInversion(images=...)` has shape {shape}; expected non-empty "
                                  "[N, C, H, W] images of class A in [0, 1].")
        side = min(images.shape[-2:])
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or not 1 <= patch_size <= side:
            raise DebugAtlasError(f"`InContextInversion(patch_size={patch_size!r})` must be an integer in "
                                  f"1..{side} (the image side). HINT: a patch stays a patch, e.g. a quarter of it.")
        for name, value in (("steps", steps), ("contexts", contexts), ("eval_contexts", eval_contexts),
                            ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DebugAtlasError(f"`InContextInversion({name}={value!r})` must be an integer >= 1.")
        if not (isinstance(lr, (int, float)) and lr > 0) or not 0 <= cos_floor <= 1 or not power >= 0:
            raise DebugAtlasError(f"`InContextInversion(lr={lr!r}, power={power!r}, cos_floor={cos_floor!r})`: "
                                  "lr > 0, power >= 0 and cos_floor in [0, 1].")
        self.model = model
        self.layer_name, self.module = layer_name_and_module(model, layer)
        self.images = images.detach().float().cpu().clamp(0, 1)
        self.patch_size, self.steps, self.lr = int(patch_size), int(steps), float(lr)
        self.contexts, self.eval_contexts, self.batch_size = int(contexts), int(eval_contexts), int(batch_size)
        self.power, self.cos_floor, self.seed = float(power), float(cos_floor), int(seed)
        self.decorrelate = bool(decorrelate)
        if precision not in PRECISIONS:
            raise DebugAtlasError(f"`InContextInversion(precision={precision!r})` is not one of {list(PRECISIONS)}.")
        self.precision = precision
        self.transforms = PATCH_TRANSFORMS if transforms is True else (transforms or None)

    # -- public ---------------------------------------------------------------------------------
    def invert(self, directions: torch.Tensor) -> InContextResult:
        """One patch per row of `directions` [M, C] (whitened, e.g. `cell_directions`)."""
        gen = generator(self.seed)
        device = model_device(self.model)
        c = self.images.shape[1]
        shape = (c, self.patch_size, self.patch_size)
        with gradient_context(self.model):
            dirs = _as_matrix(directions, "directions").float().clone()
            held = self._draw(self.eval_contexts, generator(self.seed + 1))
            patches, final, initial = [], [], []
            for start in range(0, dirs.shape[0], self.batch_size):
                v = dirs[start:start + self.batch_size].to(device)
                param = FourierImage(v.shape[0], shape, gen, device, decorrelate=self.decorrelate)
                with torch.no_grad():
                    initial.append(self._objective(param.image(), v, held, device).cpu())
                opt = torch.optim.Adam(param.parameters(), lr=self.lr)
                for _ in range(self.steps):
                    patch = param.image()
                    with precision_context(device, self.precision):
                        loss = -self._objective(patch, v, self._draw(self.contexts, gen), device, gen).sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    patch = param.image()
                    final.append(self._objective(patch, v, held, device).cpu())
                patches.append(patch.detach().float().cpu())
        return InContextResult(torch.cat(patches), torch.cat(final).float(), torch.cat(initial).float(),
                               self._params(device))

    def score(self, patches: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """Objective [M] of patches [M, C_in, p, p] for directions [M, C] on the held evaluation contexts."""
        device = model_device(self.model)
        with gradient_context(self.model), torch.no_grad():
            dirs = _as_matrix(directions, "directions").float().clone().to(device)
            if patches.dim() != 4 or patches.shape[0] != dirs.shape[0] or patches.shape[-1] != self.patch_size:
                raise DebugAtlasError(f"`score(patches)` has shape {tuple(patches.shape)}; expected "
                                      f"[{dirs.shape[0]}, C, {self.patch_size}, {self.patch_size}].")
            held = self._draw(self.eval_contexts, generator(self.seed + 1))
            return self._objective(patches.float().clone().to(device), dirs, held, device).cpu()

    # -- internals ------------------------------------------------------------------------------
    def _draw(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image indices [n], top rows [n], left cols [n]) of n pasted copies."""
        count, _, h, w = self.images.shape
        p = self.patch_size
        which = torch.randint(0, count, (n,), generator=gen)
        rows = torch.randint(0, h - p + 1, (n,), generator=gen)
        cols = torch.randint(0, w - p + 1, (n,), generator=gen)
        return which, rows, cols

    def _objective(self, patch: torch.Tensor, v: torch.Tensor, draw, device,
                   gen: torch.Generator | None = None) -> torch.Tensor:
        """Mean over the n contexts of the direction objective averaged over covered positions: [M]."""
        which, rows, cols = draw
        m, n, p = patch.shape[0], which.numel(), self.patch_size
        pasted = patch.unsqueeze(1).expand(m, n, *patch.shape[1:])
        if gen is not None and self.transforms is not None:
            pasted = self.transforms(pasted.reshape(m * n, *patch.shape[1:]), gen).view(m, n, *patch.shape[1:])
        batch = self.images[which].to(device).unsqueeze(0).repeat(m, 1, 1, 1, 1)  # [M, n, C, H, W]
        for k in range(n):
            r, c = int(rows[k]), int(cols[k])
            batch[:, k, :, r:r + p, c:c + p] = pasted[:, k]
        out = run_to_layer(self.model, self.module, batch.flatten(0, 1), self.layer_name)
        if out.dim() != 4:
            raise DebugAtlasError(
                f"Layer {self.layer_name!r} outputs shape {tuple(out.shape)}; in-context inversion needs a "
                "spatial [B, C, H, W] layer. HINT: use `FeatureInversion` for pooled or token layers."
            )
        if out.shape[1] != v.shape[1]:
            raise DebugAtlasError(f"The directions have {v.shape[1]} channels but layer {self.layer_name!r} has "
                                  f"{out.shape[1]}. HINT: build them from activations of the same layer.")
        out = out.float().view(m, n, *out.shape[1:])  # [M, n, C, H', W']
        mask = covered_positions(tuple(out.shape[-2:]), tuple(self.images.shape[-2:]), rows, cols, p)
        mask = mask.to(device=out.device, dtype=out.dtype)  # [n, H', W']
        dot = torch.einsum("mkchw,mc->mkhw", out, v)
        cos = dot / (out.norm(dim=2) * v.norm(dim=1)[:, None, None, None]).clamp_min(1e-8)
        value = dot * cos.clamp_min(self.cos_floor) ** self.power
        per = (value * mask).flatten(2).sum(2) / mask.flatten(1).sum(1)  # [M, n]
        return per.mean(1)

    def _params(self, device) -> dict:
        return {
            "layer": self.layer_name, "patch_size": self.patch_size, "steps": self.steps, "lr": self.lr,
            "contexts": self.contexts, "eval_contexts": self.eval_contexts, "power": self.power,
            "cos_floor": self.cos_floor, "batch_size": self.batch_size, "seed": self.seed,
            "context_images": int(self.images.shape[0]), "parameterization": "fourier 1/f, sigmoid",
            "decorrelate": self.decorrelate and self.images.shape[1] == 3,
            "transforms": (self.transforms.params(self.patch_size, self.patch_size)
                           if self.transforms is not None else None),
            "objective_at": "mean over the layer positions whose centre lies in the pasted patch",
            "device": str(device), "precision": self.precision,
        }


def in_context_patches(model: nn.Module, layer: str | nn.Module, images_a: torch.Tensor,
                       cells: Sequence[tuple[int, int]], directions: torch.Tensor, patch_size: int,
                       **options) -> tuple[list, InContextResult]:
    """`Patch`es (source "in_context", native size) for atlas `cells`, one per row of `directions`.

    `options` go to `InContextInversion` (steps, lr, contexts, batch_size, seed, ...). Returns the
    patches, ids ``c{i}-{j}-ctx{p}``, in the order of `cells`, and the inversion result.
    """
    from ..patches import Patch

    cells = [(int(i), int(j)) for i, j in cells]
    if len(cells) != _as_matrix(directions, "directions").shape[0]:
        raise DebugAtlasError(f"{len(cells)} cells but {len(directions)} directions. HINT: one direction per cell.")
    result = InContextInversion(model, layer, images_a, patch_size, **options).invert(directions)
    patches = [Patch(f"c{i}-{j}-ctx{patch_size}", (i, j), "in_context", result.patches[k], resize=False)
               for k, (i, j) in enumerate(cells)]
    return patches, result
