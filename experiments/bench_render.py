"""Benchmark: feature inversion of many atlas cells in one batch vs one cell at a time.

Both runs call the same `FeatureInversion` code with the same cells and steps; the loop uses
batch_size=1 and one `invert` call per cell, as per-neuron visualisation tutorials do.
Cells are stand-ins for atlas cells: whitened means of seeded random groups of captured vectors.

    python experiments/bench_render.py --model smallcnn --cells 64 --steps 32
    python experiments/bench_render.py --model resnet --cells 400 --steps 256 --device cuda
"""
from __future__ import annotations

import argparse
import time

import torch

from debugatlas.capture import capture
from debugatlas.data import TensorImageDataset, digits
from debugatlas.models import CifarResNet, SmallCNN, train_classifier
from debugatlas.render import FeatureInversion, cell_directions, whitening_matrix


def _data(model_name: str):
    if model_name == "smallcnn":
        return digits(size=24), (1, 24, 24)
    train, val = digits(size=32)
    def rgb(ds: TensorImageDataset) -> TensorImageDataset:
        return TensorImageDataset(ds.images.expand(-1, 3, -1, -1).contiguous(), ds.labels, ds.classes)

    return (rgb(train), rgb(val)), (3, 32, 32)


def _model(model_name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return SmallCNN(1, 10, width=8) if model_name == "smallcnn" else CifarResNet(10, width=16, blocks=3)


def _directions(model, layer, val, cells: int, seed: int) -> torch.Tensor:
    acts = capture(model, val, layer, sampling="random", samples_per_image=4, seed=seed)
    vectors = acts.vectors.float()
    groups = torch.randint(0, cells, (len(vectors),), generator=torch.Generator().manual_seed(seed))
    means = torch.stack([vectors[groups == k].mean(0) if (groups == k).any() else vectors[k % len(vectors)]
                         for k in range(cells)])
    return cell_directions(means, whitening_matrix(vectors))


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smallcnn", "resnet"], default="smallcnn")
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cells", type=int, default=400, help="number of cells (400 = a 20x20 atlas)")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 1 smallcnn, 0 resnet)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="alternate both runs N times, keep each best")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    (train, val), image_size = _data(args.model)
    model = _model(args.model)
    epochs = args.epochs if args.epochs is not None else (1 if args.model == "smallcnn" else 0)
    if epochs:
        train_classifier(model, train, epochs=epochs, seed=args.seed)
    model = model.to(device).eval()
    dirs = _directions(model, args.layer, val, args.cells, args.seed)
    options = dict(image_size=image_size, steps=args.steps, seed=args.seed)
    batched = FeatureInversion(model, args.layer, batch_size=args.batch_size, **options)
    single = FeatureInversion(model, args.layer, batch_size=1, **options)
    for size in (1, min(args.batch_size, len(dirs))):  # warm-up: imports, kernels for both batch shapes
        FeatureInversion(model, args.layer, image_size=image_size, steps=2).invert(dirs[:size])

    results, t_batched, t_loop = {}, float("inf"), float("inf")
    for _ in range(args.repeat):
        t_batched = min(t_batched, _timed(lambda: results.update(batched=batched.invert(dirs)), device))
        t_loop = min(t_loop, _timed(
            lambda: results.update(loop=[single.invert(dirs[k:k + 1]) for k in range(len(dirs))]), device))
    loop_objective = torch.cat([r.objective for r in results["loop"]])
    print(f"device: {device} ({torch.get_num_threads()} CPU threads)   model: {args.model} {args.layer}   "
          f"image: {tuple(image_size)}   cells: {len(dirs)}   steps: {args.steps}   batch_size: {args.batch_size}   "
          f"repeat: {args.repeat}")
    print(f"batched:       {t_batched:8.2f} s  ({1000 * t_batched / len(dirs):7.1f} ms/cell)  "
          f"mean objective {results['batched'].objective.nanmean():.4g}")
    print(f"one at a time: {t_loop:8.2f} s  ({1000 * t_loop / len(dirs):7.1f} ms/cell)  "
          f"mean objective {loop_objective.nanmean():.4g}")
    print(f"speed-up (one at a time / batched): {t_loop / t_batched:.1f}x")


if __name__ == "__main__":
    main()
