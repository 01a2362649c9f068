"""What `AtlasCallback` adds to a validation epoch: a torchvision ResNet-18 on three CIFAR-10
classes at 32 px, 120 validation images, the callback with its default options, on this machine.

Two Lightning fits of one epoch each, same seed, same data, one after the other in one run: without
the callback and with `AtlasCallback(layer)` (default options). The script prints both epoch
times, the difference (what the callback costs per epoch), and the analysis' own
`summary["timings_s"]`; it writes the same text to ``reports/bench/callback_<layer>.txt``.

    .venv/bin/python experiments/bench_callback.py [--layer layer3] [--val-images 120]
        [--train-images 600] [--classes cat dog airplane] [--archive ../shared/data/cifar10-train.tgz]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ARCHIVE, command_line  # noqa: E402


def three_classes(args):
    """(train, val) TensorImageDatasets of the chosen classes, relabelled 0..2 in the given order."""
    from debugatlas.data import TensorImageDataset, folder_split, unpack_cifar10

    root = unpack_cifar10(args.archive)
    n = 12 * (args.train_images + args.val_images)  # enough of all ten classes to draw both splits
    train, val = folder_split(root, n_train=n, n_val=2 * args.val_images * 10 // 3, seed=0)
    wanted = [train.classes.index(c) for c in args.classes]

    def pick(data, limit):
        keep = [i for i in range(len(data)) if int(data.labels[i]) in wanted][:limit]
        labels = [wanted.index(int(data.labels[i])) for i in keep]
        return TensorImageDataset(data.images[keep], labels, args.classes)

    return pick(train, args.train_images), pick(val, args.val_images)


def fit(args, train, val, callback, out: Path) -> float:
    """Seconds of a one-epoch fit (training and validation), with `callback` when given."""
    import pytorch_lightning as pl
    import torchvision

    from debugatlas.lightning import ClassifierModule

    pl.seed_everything(0, verbose=False)
    model = torchvision.models.resnet18(num_classes=len(args.classes))
    module = ClassifierModule(model, lr=1e-3)
    callbacks = [callback] if callback is not None else []
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=str(out))
    start = time.perf_counter()
    trainer.fit(module, DataLoader(train, batch_size=64, shuffle=True),
                DataLoader(val, batch_size=64))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", default="layer3", help="a ResNet-18 module name (model. is prefixed)")
    parser.add_argument("--val-images", type=int, default=120)
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--classes", nargs=3, default=["cat", "dog", "airplane"])
    parser.add_argument("--archive", default=str(ARCHIVE.resolve()))
    parser.add_argument("--out", default=None, help="report file (default reports/bench/callback_<layer>.txt)")
    args = parser.parse_args()
    from debugatlas.lightning import AtlasCallback

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    train, val = three_classes(args)
    say(f"bench_callback: ResNet-18 (torchvision, {len(args.classes)} classes {args.classes}), 32 px, "
        f"{len(train)} training and {len(val)} validation images, layer model.{args.layer}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}")
    say(f"command: {command_line()}")
    with tempfile.TemporaryDirectory() as tmp:
        plain = fit(args, train, val, None, Path(tmp) / "plain")
        callback = AtlasCallback(f"model.{args.layer}", dirpath=Path(tmp) / "atlas", timeline=False)
        with_cb = fit(args, train, val, callback, Path(tmp) / "atlas")
        result = callback.last_result
    say(f"one epoch without the callback: {plain:.1f} s")
    say(f"one epoch with AtlasCallback (default options): {with_cb:.1f} s")
    say(f"added by the callback: {with_cb - plain:.1f} s (goal: <= 30 s)")
    if result is None:
        say("the callback produced no analysis (see its log)")
    else:
        timings = result.summary.get("timings_s", {})
        say("analysis stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        say(f"pairs: {[(p['a'], p['b'], p.get('kind', 'confused')) for p in result.summary['pairs']]}; "
            f"findings: {sum(len(p.get('findings') or []) for p in result.summary['pairs'])}")
    out = Path(args.out) if args.out else Path(__file__).resolve().parent.parent / "reports" / "bench" / \
        f"callback_{args.layer}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
