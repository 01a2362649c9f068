"""Can an in-context patch, optimised from the planted trigger's own direction, flip like the trigger?

This separates the two halves of finding a shortcut blind: *finding the direction* (an atlas cell
whose mean activation is the trigger's) and *synthesising a patch from a direction*. Here the
direction is given: the mean `layer` activation at the trigger's centre position over the poisoned
validation images. For each trigger kind, a CifarResNet is trained on poisoned CIFAR-10 (as in
`planted_shortcut.py`'s CPU configuration), and `InContextInversion` makes a patch from the
whitened direction at each (lr, steps, copies pasted per step) asked for, with the images of A (truck) that the model
gets right as contexts. Each patch, the trigger itself (5 x 5, its own pixels) and a noise square
are pasted at 8 seeded random positions on held-out trucks the model gets right; the table is the
share of (image, position) trials sent to the planted class (airplane), with a Wilson 95 % interval
over those trials (positions on one image are not independent, so it is narrower than one over images).

    .venv/bin/python experiments/in_context_from_trigger.py     # 4 kinds, lr 0.05 / 0.5, 64 / 128 steps, 4 / 8 copies
    .venv/bin/python experiments/in_context_from_trigger.py --kinds square --lrs 0.05 0.2 0.5 --steps 64 128

Writes the table to reports/bench/in_context_from_trigger.txt (`--out`). Trained models are kept
in `--cache` so further settings reuse them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_data_args, cifar10_split, command_line  # noqa: E402
from planted_shortcut import Trigger, _train, trigger_box  # noqa: E402

from debugatlas.core.model import run_to_layer  # noqa: E402
from debugatlas.patches import Experiment, Patch, evaluate_patches  # noqa: E402
from debugatlas.patches.stats import wilson_interval  # noqa: E402
from debugatlas.render import cell_directions, whitening_matrix  # noqa: E402
from debugatlas.render.in_context import InContextInversion  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class _Log:
    @staticmethod
    def info(fmt, *values):
        print(fmt % values, flush=True)


def _model(args, kind: str, train):
    from debugatlas.models import CifarResNet

    path = Path(args.cache) / f"{kind}_{args.fraction:g}_w{args.width}_b{args.blocks}_e{args.epochs}_n{args.n_train}.pt"
    if path.exists():
        model = CifarResNet(10, width=args.width, blocks=args.blocks)
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model.eval()
    model, _, _ = _train(args, None, train, _Log, f"{kind} {args.fraction:g}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def trigger_direction(model, layer: str, val, shortcut, background: int = 500):
    """(mean activation at the trigger centre over poisoned images [1, C], whitening [C, C])."""
    module = dict(model.named_modules())[layer]
    poisoned = [i for i in range(len(val)) if val.poisoned[i]]
    with torch.no_grad():
        out = run_to_layer(model, module, torch.stack([val[i][0] for i in poisoned]), layer)
        h, w = out.shape[-2:]
        vectors = []
        for k, i in enumerate(poisoned):
            r0, r1, c0, c1 = trigger_box(shortcut, i, 32, 32)
            y = min(h - 1, int(((r0 + r1 - 1) / 2 + 0.5) * h / 32))
            x = min(w - 1, int(((c0 + c1 - 1) / 2 + 0.5) * w / 32))
            vectors.append(out[k, :, y, x])
        ids = list(range(min(background, len(val))))
        rest = run_to_layer(model, module, torch.stack([val[i][0] for i in ids]), layer)
        flat = rest.permute(0, 2, 3, 1).reshape(-1, rest.shape[1])
        pick = torch.randperm(flat.shape[0], generator=torch.Generator().manual_seed(0))[:4000]
    return torch.stack(vectors).mean(0, keepdim=True), whitening_matrix(flat[pick])


def run_kind(args, kind: str, say) -> None:
    shortcut = Trigger(target=args.target, fraction=args.fraction, size=args.size, kind=kind, seed=args.seed)
    train, val = cifar10_split(args, shortcut=shortcut, poison_val=True)
    model = _model(args, kind, train)
    mean, whitening = trigger_direction(model, args.layer, val, shortcut)
    direction = cell_directions(mean, whitening)
    ids = [i for i in range(len(val)) if int(val.labels[i]) == args.a and not val.poisoned[i]]
    images = torch.stack([val[i][0] for i in ids])
    with torch.no_grad():
        images = images[model(images).argmax(-1) == args.a]
    contexts, held = images[:args.contexts], images[args.contexts:args.contexts + args.held_out]
    pixels = shortcut.apply(torch.zeros(3, 32, 32), 10 ** 6)
    r0, r1, c0, c1 = trigger_box(shortcut, 10 ** 6, 32, 32)
    patches = [Patch("trigger", (0, 0), "exemplar", pixels[:, r0:r1, c0:c1].clone(), resize=False)]
    seconds = {}
    for lr in args.lrs:
        for steps in args.steps:
            for per_step in args.per_step:
                start = time.perf_counter()
                result = InContextInversion(model, args.layer, contexts, args.patch_size, steps=steps, lr=lr,
                                            contexts=per_step, seed=args.seed).invert(direction)
                name = f"lr{lr:g}-{steps}steps-{per_step}ctx"
                seconds[name] = time.perf_counter() - start
                patches.append(Patch(name, (0, 0), "in_context", result.patches[0], resize=False))
    evaluation = evaluate_patches(model, held, patches,
                                  Experiment(args.a, args.target, placements=("random",), n_random=8, seed=args.seed))
    say(f"\n{kind}: {len(contexts)} context and {evaluation.n_images} held-out {val.classes[args.a]} images "
        f"the model gets right; flips to {val.classes[args.target]} at 8 random positions")
    say(f"{'patch':26s} {'flip':>7s} {'95 % interval':>15s} {'seconds':>8s}")
    trials = evaluation.n_images * 8
    for r in evaluation.results:
        lo, hi = wilson_interval(round(r.flip_rate * trials), trials)
        label = f"noise {r.patch_id.split('-')[-1]}" if r.is_control else r.patch_id
        took = f"{seconds[r.patch_id]:.1f}" if r.patch_id in seconds else ""
        say(f"{label:26s} {100 * r.flip_rate:6.1f}% {f'[{100 * lo:.0f}-{100 * hi:.0f} %]':>15s} {took:>8s}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--kinds", nargs="+", default=["checker", "cross", "square", "line"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[0.05, 0.5])
    parser.add_argument("--steps", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--per-step", nargs="+", type=int, default=[4, 8], help="pasted copies per step")
    parser.add_argument("--layer", default="layer2")
    parser.add_argument("--patch-size", type=int, default=8, help="pixels (the pipeline: 0.25 x 32)")
    parser.add_argument("--contexts", type=int, default=32, help="images of A the patch is optimised on")
    parser.add_argument("--held-out", type=int, default=200, help="images of A it is measured on, at most")
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=5)
    parser.add_argument("--target", type=int, default=0, help="planted class (airplane)")
    parser.add_argument("--a", type=int, default=9, help="class A (truck)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3, help="training learning rate")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="/tmp/debugatlas-planted-models")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench" / "in_context_from_trigger.txt"))
    args = parser.parse_args(argv)
    args.n_train = args.n_train or 10_000
    args.n_val = args.n_val or 5000
    args.device, args.train_seconds, args.torchvision_root = "cpu", None, getattr(args, "torchvision_root", None)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"in_context_from_trigger: {command_line()}")
    say(f"CifarResNet width {args.width}, {args.blocks} block(s) per stage, {args.epochs} epochs on "
        f"{args.n_train} poisoned CIFAR-10 images (fraction {args.fraction:g}), {args.layer}, patch "
        f"{args.patch_size} px; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for kind in args.kinds:
        run_kind(args, kind, say)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    raise SystemExit(main())
