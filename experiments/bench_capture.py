"""Capture overhead: validation time with and without AtlasCallback (capture only), in one run.

Same model, data and batch order; runs alternate (without, with, without, ...) and the ratio of
medians is printed. The epoch-end analysis is timed separately.

    .venv/bin/python experiments/bench_capture.py [--repeats 5] [--images 2000] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from debugatlas.lightning import AtlasCallback, ClassifierModule
from debugatlas.data import digits
from debugatlas.models import CifarResNet, SmallCNN


def _validate_seconds(module, loader, callback, device) -> float:
    trainer = pl.Trainer(accelerator=device, devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback] if callback else [])
    start = time.perf_counter()
    trainer.validate(module, loader, verbose=False)
    return time.perf_counter() - start


def measure(name: str, module, loader, layer: str, repeats: int, device: str) -> None:
    plain, hooked = [], []
    _validate_seconds(module, loader, None, device)  # warm-up
    for _ in range(repeats):
        plain.append(_validate_seconds(module, loader, None, device))
        callback = AtlasCallback(layer, run_analysis=False, options={"samples_per_image": 1})
        hooked.append(_validate_seconds(module, loader, callback, device))
    base, with_cb = statistics.median(plain), statistics.median(hooked)
    n = len(callback.last_activations)
    print(f"{name:<28} images={len(loader.dataset):>6} samples={n:>6} without={base:7.3f}s "
          f"with={with_cb:7.3f}s ratio={with_cb / base:.3f} overhead={100 * (with_cb / base - 1):+.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=2000, help="images for the CIFAR-size ResNet")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    _, val = digits(size=24)
    digits_val = TensorDataset(torch.stack([val[i][0] for i in range(len(val))]), val.labels)
    measure("SmallCNN digits 24px", ClassifierModule(SmallCNN(1, 10, 16)).eval(),
            DataLoader(digits_val, batch_size=128), "model.layer3", args.repeats, args.device)
    cifar = TensorDataset(torch.rand(args.images, 3, 32, 32), torch.randint(0, 10, (args.images,)))
    measure("CifarResNet-20 32px", ClassifierModule(CifarResNet()).eval(),
            DataLoader(cifar, batch_size=128), "model.layer3", args.repeats, args.device)


if __name__ == "__main__":
    main()
