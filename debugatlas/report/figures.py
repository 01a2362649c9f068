"""Pictures of a run: PNG files of tensors, the class-colour atlas grid and figure, attribution overlays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def to_rgb8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The picture of an image as 8-bit RGB: [C, H, W] or [H, W] in [0, 1] (C = 1 or 3), or a uint8
    [H, W, 3] / [H, W] array, -> [H, W, 3] uint8, grey repeated into the three colours, rounded half up.

    For what a page shows; a run's stored pixels keep their channels (`artifacts.images.to_uint8`).
    """
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
    arr = torch.as_tensor(image).detach().float().cpu().clamp(0, 1).numpy()
    if arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    return (arr * 255 + 0.5).astype(np.uint8)


def save_png(path: Path, image, scale: int = 1) -> None:
    """Save an image (see `to_rgb8`) as PNG, upscaled by `scale` with nearest neighbour."""
    from PIL import Image

    arr = to_rgb8(image)
    if scale > 1:
        arr = arr.repeat(scale, 0).repeat(scale, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def heat_overlay(image: torch.Tensor, heat: torch.Tensor) -> np.ndarray:
    """Image in grey with positive attribution in red and negative in blue."""
    grey = to_rgb8(image).astype(np.float32).mean(-1, keepdims=True) / 255.0
    h = heat.detach().float().cpu().numpy()
    scale = np.abs(h).max() or 1.0
    pos, neg = np.clip(h / scale, 0, 1)[..., None], np.clip(-h / scale, 0, 1)[..., None]
    base = 0.35 + 0.5 * grey
    rgb = np.concatenate([base + pos * 0.65, base * (1 - pos) , base * (1 - pos) + neg * 0.65], -1)
    rgb[..., :2] *= (1 - neg)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _class_colours(atlas, class_names: list[str]) -> np.ndarray:
    """[G, G, 4] RGBA indexed [row j, column i]: the cell's most frequent class, alpha by log count."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    g, counts = atlas.grid_size, atlas.counts
    top = atlas.class_histogram.argmax(-1)
    alpha = np.log1p(counts) / max(float(np.log1p(counts.max())), 1e-9)
    rgba = np.ones((g, g, 4))
    for i, j in zip(*np.nonzero(counts)):
        rgba[j, i, :3] = cmap(int(top[i, j]) % cmap.N)[:3]
        rgba[j, i, 3] = 0.25 + 0.75 * alpha[i, j]
    return rgba


def grid_image(atlas, class_names: list[str], cell_px: int = 8) -> np.ndarray:
    """The atlas as an exact G x G picture (row 0 on top), colours blended over white, uint8."""
    rgba = _class_colours(atlas, class_names)
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    arr = (rgb * 255 + 0.5).astype(np.uint8)
    return arr.repeat(cell_px, 0).repeat(cell_px, 1)


def atlas_figure(path: Path, atlas, class_names: list[str], title: str) -> None:
    """A matplotlib figure of an atlas (row 0 on top, like the icon atlas) with a class legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = atlas.grid_size
    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    top = atlas.class_histogram.argmax(-1)
    fig, ax = plt.subplots(figsize=(5, 5.4), dpi=100)
    ax.imshow(_class_colours(atlas, class_names), origin="upper", interpolation="nearest", extent=(0, g, g, 0))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
    present = np.unique(top[atlas.counts > 0])
    handles = [plt.Line2D([], [], marker="s", ls="", color=cmap(int(k) % cmap.N), label=class_names[int(k)])
               for k in present]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=5,
              frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
