"""Generated ImageFolders for the command-line and model-loading tests."""
from __future__ import annotations

import numpy as np
from PIL import Image


def make_image_folder(root, classes=("cat", "dog", "fox"), per_class=8, size=32, seed=0):
    """Tiny RGB PNGs, each class tinted its own colour, laid out as an ImageFolder."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 128, (size, size, 3))
            pixels[..., k] += 127
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root
