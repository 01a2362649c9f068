"""Run `AtlasCallback` inside `trainer.validate` on CPU with N processes; used by test_ddp.py.

    python tests/ddp_run.py OUT_DIR --devices 2 [--fail [--lenient]]

Lightning's "ddp" strategy starts the other ranks by running this script again. With --fail,
rank 0's analysis raises, to check that the other ranks raise too (`strict=True`) instead of
waiting; with --lenient as well, that every rank logs it and carries on (the default).
"""
from __future__ import annotations

import argparse
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from debugatlas.lightning import AtlasCallback, ClassifierModule
from debugatlas.data import digits
from debugatlas.models import SmallCNN

FAST = {"layout": "pca", "render": False, "patches": False, "grid_sizes": (10,), "grid_size": 10, "n_pairs": 1}


class _Failing(AtlasCallback):
    def _analyze(self, *args, **kwargs) -> None:
        raise RuntimeError("planted failure in rank 0's analysis")


def run(out_dir: str, devices: int = 1, fail: bool = False, cap: int = 100_000, strict: bool = True) -> AtlasCallback:
    warnings.filterwarnings("ignore")
    _, val = digits(size=16)
    torch.manual_seed(0)
    module = ClassifierModule(SmallCNN(1, 10, width=8))
    cls = _Failing if fail else AtlasCallback
    callback = cls("model.layer3", dirpath=out_dir, subdir="", seed=7, strict=strict,
                   options={**FAST, "samples_per_image": 3, "cap": cap})
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         callbacks=[callback], logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=out_dir)
    trainer.validate(module, DataLoader(val, batch_size=50), verbose=False)
    return callback


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--cap", type=int, default=100_000)
    parser.add_argument("--lenient", action="store_true")
    args = parser.parse_args()
    run(args.out_dir, args.devices, args.fail, args.cap, strict=not args.lenient)
    print("finished", flush=True)
