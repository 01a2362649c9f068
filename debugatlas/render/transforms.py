"""Random transforms applied at every optimisation step: pad, jitter, scale and rotate.

All four are folded into one affine map per image and applied with `affine_grid` / `grid_sample`,
batched (each image draws its own parameters) and seeded (parameters come from a CPU generator).
The output has the input's size: padding shows up as a `fill` border where the image moved.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..core.errors import DebugAtlasError


@dataclass
class RandomTransforms:
    """Robustness transforms for feature inversion (defaults scaled from the 224 px ones).

    pad:     border in pixels filled with `fill` (None: 5 % of the image side, at least 1).
    jitter:  largest shift in pixels, uniform in [-jitter, jitter] per axis (None: 4 %, at least 1).
    scale:   (low, high) zoom factor range, uniform.
    degrees: largest rotation in degrees, uniform in [-degrees, degrees].
    fill:    value of the padded border, in [0, 1].
    """

    pad: int | None = None
    jitter: float | None = None
    scale: tuple[float, float] = (0.9, 1.1)
    degrees: float = 10.0
    fill: float = 0.5

    def __post_init__(self) -> None:
        low, high = (float(v) for v in self.scale)
        if not 0 < low <= high:
            raise DebugAtlasError(
                f"`RandomTransforms(scale={self.scale!r})` must be (low, high) with 0 < low <= high. "
                "HINT: e.g. (0.9, 1.1)."
            )
        for name in ("pad", "jitter"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DebugAtlasError(f"`RandomTransforms({name}={value!r})` must be >= 0 or None.")
        if self.degrees < 0:
            raise DebugAtlasError(f"`RandomTransforms(degrees={self.degrees!r})` must be >= 0.")

    def sizes(self, height: int, width: int) -> tuple[int, float]:
        """(pad, jitter) in pixels for an image of this size."""
        side = max(height, width)
        pad = self.pad if self.pad is not None else max(1, round(0.05 * side))
        jitter = self.jitter if self.jitter is not None else max(1, round(0.04 * side))
        return int(pad), float(jitter)

    def params(self, height: int, width: int) -> dict:
        """The settings as plain values, with pad and jitter resolved for this size."""
        pad, jitter = self.sizes(height, width)
        return {**asdict(self), "pad": pad, "jitter": jitter, "scale": list(self.scale)}

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Transform [B, C, H, W] images; each image gets its own random shift, zoom and angle."""
        batch, _, height, width = images.shape
        pad, jitter = self.sizes(height, width)
        low, high = (float(v) for v in self.scale)
        draws = torch.rand(batch, 4, generator=generator, dtype=torch.float64)
        shift = (draws[:, :2] * 2 - 1) * jitter                     # pixels (x, y)
        zoom = low + (high - low) * draws[:, 2]
        angle = (draws[:, 3] * 2 - 1) * math.radians(self.degrees)
        theta = affine_theta(shift, zoom, angle, (height, width), pad)
        padded = F.pad(images, (pad, pad, pad, pad), value=float(self.fill)) if pad else images
        theta = theta.to(device=images.device, dtype=images.dtype)
        grid = F.affine_grid(theta, [batch, images.shape[1], height, width], align_corners=False)
        return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


def affine_theta(shift: torch.Tensor, zoom: torch.Tensor, angle: torch.Tensor,
                 size: tuple[int, int], pad: int) -> torch.Tensor:
    """`affine_grid` matrices [B, 2, 3] that read an H x W output from the image padded by `pad`.

    In pixel coordinates about the image centre an output point p samples the input at
    R(angle) p / zoom - shift, so the content appears zoomed by `zoom`, rotated and moved by `shift`.
    """
    height, width = size
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [B, 2, 2]
    half_out = torch.tensor([width / 2, height / 2], dtype=rot.dtype)
    half_in = torch.tensor([(width + 2 * pad) / 2, (height + 2 * pad) / 2], dtype=rot.dtype)
    linear = rot / zoom[:, None, None] * half_out[None, None, :] / half_in[None, :, None]
    offset = -shift / half_in
    return torch.cat([linear, offset.unsqueeze(-1)], -1).float()
