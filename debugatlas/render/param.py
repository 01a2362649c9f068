"""Image parameterisation: a Fourier spectrum with 1/f scaling and decorrelated colour.

Optimising the spectrum (instead of pixels) spreads each gradient step over all frequencies, scaled
so that every frequency moves at a similar rate; the result is squashed to [0, 1] with a sigmoid.
Three-channel images are built in a decorrelated colour basis and mapped to RGB with a fixed matrix.
"""
from __future__ import annotations

import torch

# Square root of the colour correlation of ImageNet pixels (rows: R, G, B), as published with the
# Lucid feature-visualisation work; its columns are scaled so that the largest has unit norm.
# Kept as plain numbers: a module-level tensor made while the module is first imported inside
# `torch.inference_mode()` (Lightning validation) would be an inference tensor, which autograd
# refuses to save for backward.
_IMAGENET_COLOR_SQRT = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)


def color_matrix(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [3, 3] decorrelated-to-RGB matrix, a fresh normal (non-inference) tensor on each call."""
    with torch.inference_mode(False):
        sqrt = torch.tensor(_IMAGENET_COLOR_SQRT, dtype=torch.float32)
        return (sqrt / sqrt.norm(dim=0).max()).to(device=device, dtype=dtype)


COLOR_MATRIX = color_matrix()  # for reading; `decorrelate_colors` builds its own on each call


def frequency_scale(height: int, width: int, decay_power: float = 1.0) -> torch.Tensor:
    """Per-frequency amplitude [height, width // 2 + 1] float32: 1 / f^decay_power, times sqrt(H W).

    The zero frequency is treated as 1 / max(H, W) so that it stays finite.
    """
    fy = torch.fft.fftfreq(height).unsqueeze(1)
    fx = torch.fft.rfftfreq(width).unsqueeze(0)
    freq = torch.sqrt(fx * fx + fy * fy).clamp_min(1.0 / max(height, width))
    return (freq ** -float(decay_power)) * float(height * width) ** 0.5


def decorrelate_colors(images: torch.Tensor) -> torch.Tensor:
    """Map [B, 3, H, W] from the decorrelated basis to RGB (other channel counts pass through)."""
    if images.shape[1] != 3:
        return images
    matrix = color_matrix(images.device, images.dtype)
    return torch.einsum("dc,bchw->bdhw", matrix, images)


class FourierImage:
    """A batch of images [B, C, H, W] in [0, 1] parameterised by a scaled Fourier spectrum.

    spectrum: [B, C, H, W // 2 + 1, 2] float32 leaf tensor (real, imaginary) that the optimiser
    updates; drawn from N(0, std^2) with `generator` (on the CPU, so results match across devices).
    decorrelate: build 3-channel images in a decorrelated colour basis (ignored for other C).
    """

    def __init__(self, batch: int, shape: tuple[int, int, int], generator: torch.Generator,
                 device: torch.device | str = "cpu", std: float = 0.01, decay_power: float = 1.0,
                 decorrelate: bool = True) -> None:
        channels, height, width = shape
        self.shape = (int(channels), int(height), int(width))
        self.decorrelate = bool(decorrelate) and channels == 3
        init = torch.randn(batch, channels, height, width // 2 + 1, 2, generator=generator) * std
        self.spectrum = init.to(device).requires_grad_(True)
        self._scale = frequency_scale(height, width, decay_power).to(device)

    def parameters(self) -> list[torch.Tensor]:
        """The tensors to optimise."""
        return [self.spectrum]

    def image(self) -> torch.Tensor:
        """The current images [B, C, H, W] in [0, 1] (differentiable w.r.t. the spectrum)."""
        _, height, width = self.shape
        spectrum = torch.view_as_complex(self.spectrum) * self._scale
        images = torch.fft.irfft2(spectrum, s=(height, width), norm="backward") / 4.0
        if self.decorrelate:
            images = decorrelate_colors(images)
        return torch.sigmoid(images)
