"""Attribution speed: batched all-class `attribute()` vs a per-class loop, same samples, one run.

The loop runs one forward pass per image batch and one backward pass per class
(``torch.autograd.grad(logits[:, c].sum(), h, retain_graph=True)``), the way a Captum
``LayerGradientXActivation`` call per target class would. Both results are compared.

    .venv/bin/python experiments/bench_attribution.py [--images 512] [--classes 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from debugatlas.attribution import attribute
from debugatlas.capture import capture
from debugatlas.data import TensorImageDataset
from debugatlas.models import CifarResNet

LAYER = "layer2"


def per_class_loop(model, dataset, acts, num_classes: int, batch_size: int = 64, device="cpu") -> torch.Tensor:
    module = dict(model.named_modules())[LAYER]
    out = torch.zeros(len(acts), num_classes)
    ids = acts.image_ids
    model.eval()
    for start in range(0, len(dataset), batch_size):
        batch_ids = torch.arange(start, min(len(dataset), start + batch_size))
        images = torch.stack([dataset[i][0] for i in batch_ids.tolist()]).to(device)
        keep = {}
        handle = module.register_forward_hook(lambda m, i, o: keep.__setitem__("h", o))
        try:
            logits = model(images)
        finally:
            handle.remove()
        h = keep["h"]
        samples = torch.nonzero((ids >= start) & (ids < start + len(batch_ids))).flatten()
        b = (ids[samples] - start).to(device)
        r, c = acts.positions[samples, 0].to(device), acts.positions[samples, 1].to(device)
        vec = h.detach()[b, :, r, c]
        for k in range(num_classes):
            (grad,) = torch.autograd.grad(logits[:, k].sum(), h, retain_graph=True)
            out[samples, k] = (grad[b, :, r, c] * vec).sum(1).cpu()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CifarResNet(num_classes=args.classes, width=16).eval().to(args.device)
    dataset = TensorImageDataset(torch.rand(args.images, 3, 32, 32), [i % args.classes for i in range(args.images)],
                                 [str(i) for i in range(args.classes)])
    acts = capture(model, dataset, LAYER, samples_per_image=4, seed=0, dtype=torch.float32, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    batched, looped = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        a = attribute(model, LAYER, dataset, acts, device=args.device)
        sync()
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        b = per_class_loop(model, dataset, acts, args.classes, device=args.device)
        sync()
        looped.append(time.perf_counter() - start)
    err = (a - b).abs().max() / b.abs().max()
    tb, tl = statistics.median(batched), statistics.median(looped)
    print(f"CifarResNet(width=16) layer {LAYER!r}, {args.images} images, {len(acts)} vectors, {args.classes} classes, "
          f"device {args.device}" + (f" ({torch.cuda.get_device_name(0)})" if args.device.startswith("cuda") else
                                    f" ({torch.get_num_threads()} threads)"))
    print(f"batched all-class attribute(): {tb:.2f} s   per-class loop: {tl:.2f} s   "
          f"ratio loop/batched {tl / tb:.2f}x   max relative difference {err:.1e}")


if __name__ == "__main__":
    main()
