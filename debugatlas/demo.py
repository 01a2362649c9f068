"""The demo on the embedded default: a small CNN on the bundled digits, analysed by `AtlasCallback`.

The demo's models ship as weights (`debugatlas/weights/digits_<scenario>.pt`, trained once by
`experiments/train_demo_model.py` with `run_demo(train=True)`): a model trained on a CPU is a
different model on another CPU (other kernels, other rounding), and the demo should tell the same
story everywhere. By default the shipped model is validated with the callback, which analyses it;
`train=True` (`debugatlas demo --train`) trains anew with the callback, as in a training loop.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .core.errors import DebugAtlasError
from .data import PlantedShortcut, digits
from .models import SmallCNN

IMAGE_SIZE = 24
WEIGHTS = Path(__file__).resolve().parent / "weights"
SHORTCUT = PlantedShortcut(target=7, fraction=1.0, size=5, trigger="cross", seed=0)


def digits_cnn() -> SmallCNN:
    """The demo's classifier (importable as `debugatlas.demo:digits_cnn` for `debugatlas check`)."""
    return SmallCNN(in_channels=1, num_classes=10, width=16)


def demo_options() -> dict:
    """Analysis options of the demo: sized to finish in about a minute on two CPU cores."""
    # 24 px digits: patches of 5-6 px (0.2-0.25 of the side); at 8 px a noise square alone flips
    # most images of a model that learned a small trigger, and no patch can beat its control.
    return {"samples_per_image": 2, "grid_size": 20, "grid_sizes": (10, 20, 40), "n_pairs": 2,
            "layout_epochs": 200, "filter_top_n": 400, "render_steps": 64, "patch_cells": 8,
            "crop_sizes": (4, 6), "n_random": 4, "max_patch_images": 200, "min_count": 2,
            "patch_sizes": (0.2, 0.25)}


def demo_weights(scenario: str) -> Path:
    """The shipped weights of the demo's model for `scenario`."""
    return WEIGHTS / f"digits_{scenario}.pt"


def run_demo(out: Path, scenario: str = "natural", device: str = "cpu", epochs: int = 8, seed: int = 0,
             train: bool = False):
    """Analyse the demo's model with the callback on the digits and write the report into `out`.

    The shipped model (`demo_weights`) is validated once with the callback; `train=True` (or no
    shipped weights) trains for `epochs` with the callback analysing after the last one.

    "shortcut" plants a cross in every training 7 (and in the validation 7s, as data from one
    poisoned source would have it) and compares 1 and 4 with 7 at layer2, whose receptive field
    (10 px) is near the trigger's size.
    """
    import pytorch_lightning as pl

    from .lightning import AtlasCallback, ClassifierModule

    if scenario not in ("natural", "shortcut"):
        raise DebugAtlasError(f"`scenario={scenario!r}` must be 'natural' or 'shortcut'.")
    if device == "cuda" and not torch.cuda.is_available():
        raise DebugAtlasError("`--device cuda` but CUDA is not available. HINT: use --device cpu.")
    shortcut = SHORTCUT if scenario == "shortcut" else None
    train_set, val_set = digits(size=IMAGE_SIZE, seed=seed, shortcut=shortcut, poison_val=True)
    pl.seed_everything(seed, verbose=False)
    module = ClassifierModule(digits_cnn(), lr=3e-3)
    pairs = [(str(d), str(SHORTCUT.target)) for d in (1, 4)] if shortcut is not None else "auto"
    layer = "model.layer2" if shortcut is not None else "model.layer3"
    options = demo_options()
    if shortcut is not None:  # a 5 px trigger covers few positions: half of them where attribution is highest
        options.update(sampling="guided", samples_per_image=4)
    callback = AtlasCallback(layer, pairs=pairs, every_n_epochs=epochs, dirpath=out, subdir="", seed=seed,
                             options={**options, "model_spec": "debugatlas.demo:digits_cnn"})
    weights = demo_weights(scenario)
    shipped = not train and weights.is_file()
    if shipped:
        module.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(max_epochs=epochs, accelerator=device, devices=1, callbacks=[callback],
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=logs,
                             # CUDA lacks deterministic kernels for some ops used in training and rendering
                             deterministic=True if device == "cpu" else "warn")
        if shipped:
            trainer.validate(module, DataLoader(val_set, batch_size=128), verbose=False)
        else:
            trainer.fit(module, DataLoader(train_set, batch_size=32, shuffle=True,
                                           generator=torch.Generator().manual_seed(seed)),
                        DataLoader(val_set, batch_size=128))
    if callback.last_result is None:
        raise DebugAtlasError("The demo finished without an analysis. HINT: --epochs must be >= 1.")
    torch.save(module.model.state_dict(), Path(out) / "model.pt")
    return callback.last_result
