"""Train the converged CIFAR-10 models of the speed benchmark once, and keep their weights.

The patch stage's cost grows with the correctly classified held-out images of A, so the benchmark
(`experiments/bench_analyze.py --case cifar-vgg-converged | cifar-resnet-converged`) needs models
like the ones users have, not two-epoch ones. This script trains them on every CIFAR-10 image that
`bench_analyze` does not analyse (its `folder_split(..., n_val=3000, seed=0)` puts the same 3,000
aside), with the usual recipe: random crops (4 px padding) and horizontal flips, SGD with Nesterov
momentum 0.9, weight decay 5e-4, a one-cycle learning rate peaking at 0.1, batch 128, seed 0.
Images are held in memory as uint8 and augmented as tensors (decoding 47,000 JPEGs per epoch would
cost more than the training on two cores). On a CPU with native bfloat16 the forwards and
backwards run under bfloat16 autocast (`--precision auto`), the weights stay float32.

    .venv/bin/python experiments/train_converged.py --model vgg --epochs 12 --out ~/.cache/debugatlas/models/vgg.pt
    .venv/bin/python experiments/train_converged.py --model resnet20 --epochs 15 --out ~/.cache/debugatlas/models/resnet20.pt

It prints one line per epoch (loss, accuracy on the 3,000 analysed images, seconds) and stops
early once that accuracy reaches `--target` (0.82). An existing `--out` is not overwritten unless
`--force`. Weights stay outside git.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "experiments"))

from bench_analyze import converged_model  # noqa: E402


def _augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32 px crops of the 4 px zero-padded images and random horizontal flips (uint8 in, float out)."""
    n, _, h, w = images.shape
    padded = nn.functional.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, 3, h, w + 8)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, 3, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out.float() / 255.0


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        for i in range(0, len(images), 500):
            correct += int((model(images[i:i + 500]).argmax(-1) == labels[i:i + 500]).sum())
    model.train()
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["vgg", "resnet20"], required=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--target", type=float, default=0.82, help="stop once the held-out accuracy reaches it")
    parser.add_argument("--out", required=True)
    parser.add_argument("--archive", default=str(ROOT.parent / "shared" / "data" / "cifar10-train.tgz"))
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    out = Path(args.out).expanduser()
    if out.exists() and not args.force:
        print(f"{out} exists (pass --force to train again)")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    from debugatlas.core.model import fast_precision
    from debugatlas.data import folder_split, unpack_cifar10

    precision = fast_precision("cpu") if args.precision == "auto" else args.precision
    start = time.perf_counter()
    train, val = folder_split(unpack_cifar10(args.archive), n_train=None, n_val=3000, seed=0)
    x = (train.images * 255).round().to(torch.uint8)
    y = torch.as_tensor(train.labels)
    vx, vy = val.images, torch.as_tensor(val.labels)
    print(f"{len(x)} training images, {len(vx)} held out, loaded in {time.perf_counter() - start:.0f} s; "
          f"precision {precision}, threads {torch.get_num_threads()}", flush=True)
    torch.manual_seed(0)
    model = converged_model(args.model)
    model = model.to(memory_format=torch.channels_last).train()
    batch = 128
    steps = args.epochs * (len(x) // batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.25)
    gen = torch.Generator().manual_seed(0)
    history = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(x), generator=gen)
        total, seen = 0.0, 0
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i:i + batch]
            images = _augment(x[idx], gen).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                loss = nn.functional.cross_entropy(model(images).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
            seen += len(idx)
        acc = _accuracy(model, vx, vy, "float32")
        history.append({"epoch": epoch + 1, "loss": total / seen, "accuracy": acc,
                        "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(history[-1]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out)
        if acc >= args.target:
            break
    out.with_suffix(".json").write_text(json.dumps({"model": args.model, "precision": precision,
                                                    "recipe": "SGD nesterov 0.9, wd 5e-4, one-cycle 0.1, batch 128,"
                                                              " crop+flip, seed 0", "history": history}, indent=1))
    print(f"written {out}")


if __name__ == "__main__":
    main()
