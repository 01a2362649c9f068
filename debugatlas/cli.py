"""Command line: `debugatlas demo | analyze | check` (exit codes: 0 ok, 1 a check failed, 2 bad input)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .core.errors import DebugAtlasError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="debugatlas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small CNN on the bundled digits with AtlasCallback and write a report")
    demo.add_argument("--out", default="reports/demo", help="run directory (default reports/demo)")
    demo.add_argument("--scenario", choices=["natural", "shortcut"], default="natural",
                      help="natural digits, or a planted trigger in one class's training images")
    demo.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)

    an = sub.add_parser("analyze", help="analyse a model on an ImageFolder")
    an.add_argument("--model", required=True, help="pkg.module:factory returning an nn.Module")
    an.add_argument("--weights", help="state_dict file saved with torch.save")
    an.add_argument("--data", required=True, help="ImageFolder root: <class>/<image files>")
    an.add_argument("--layer", required=True, help="module name from model.named_modules()")
    an.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"), help="class pair to compare (repeatable)")
    an.add_argument("--normalize", nargs="+", type=float, metavar="X", help="means then stds, one per channel")
    an.add_argument("--out", default="reports/run")
    an.add_argument("--image-size", type=int, help="resize images to this side")
    an.add_argument("--grayscale", action="store_true", help="read images as one channel")
    an.add_argument("--device", choices=["cpu", "cuda"], default=None)
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--no-render", action="store_true", help="skip feature inversion (and the patch tests)")
    an.add_argument("--no-patches", action="store_true", help="skip the patch tests")

    sub.add_parser("check", help="rerun a saved patch suite against a checkpoint (CI gate)", add_help=False)
    return parser


def _demo(args) -> int:
    from .demo import run_demo

    started = time.perf_counter()
    result = run_demo(Path(args.out), scenario=args.scenario, device=args.device, epochs=args.epochs, seed=args.seed)
    summary = result.summary
    print(f"debugatlas demo ({args.scenario}): accuracy {summary['accuracy']:.3f} on {summary['num_images']} "
          f"validation images, {summary['num_samples']} activation samples at {summary['layer']!r}")
    for pair in summary["pairs"]:
        best = max((p["flip_rate"] for p in pair["patches"]), default=None)
        tail = f", best patch flips {best:.0%}" if best is not None else ""
        print(f"  {pair['a']} -> {pair['b']}: {pair['confused']} confused, "
              f"{len(pair['confusing_cells'])} candidate cells{tail}")
    print(f"report: {Path(args.out) / 'index.html'}  ({time.perf_counter() - started:.0f} s)")
    return EXIT_OK


def _analyze(args) -> int:
    from .pipeline import analyze
    from .data import image_folder
    from .models import load_model

    model = load_model(args.model, args.weights)
    dataset = image_folder(args.data, size=args.image_size, grayscale=args.grayscale)
    normalize = None
    if args.normalize:
        n = len(args.normalize)
        if n % 2:
            raise DebugAtlasError(f"`--normalize` got {n} numbers; give the means then the stds, one per channel.")
        normalize = (args.normalize[: n // 2], args.normalize[n // 2:])
    options = {}
    if args.no_render:
        options.update(render=False, patches=False)
    if args.no_patches:
        options["patches"] = False
    result = analyze(model, dataset, args.layer, pairs=[tuple(p) for p in args.pair] if args.pair else "auto",
                     normalize=normalize, out_dir=args.out, seed=args.seed, device=args.device, progress=True,
                     title=f"{args.model} on {args.data}", data_description=str(args.data),
                     model_spec=args.model, **options)
    print(f"accuracy {result.summary['accuracy']:.3f}; report: {Path(args.out) / 'index.html'}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `debugatlas` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] == "check":
        from .check import main as check_main

        return check_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return {"demo": _demo, "analyze": _analyze}[args.command](args)
    except DebugAtlasError as exc:
        print(f"debugatlas {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
