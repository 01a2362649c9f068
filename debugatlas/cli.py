"""Command line: `debugatlas demo | analyze | check | diff` (exit codes: 0 ok, 1 a check failed, 2 bad input).

`add_model_arguments` and `model_from_args` are the one way a subcommand names a model
(`--model`, `--model-args`, `--weights`, `--checkpoint`, `--normalize`); `analysis_options` turns
repeated `--option name=value` into `analyze()` keywords, checked against `AnalysisConfig`.
"""
from __future__ import annotations

import argparse
import ast
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .core.errors import DebugAtlasError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_value(text: str) -> Any:
    """A Python literal from the command line: `3`, `0.5`, `true`, `None`, `(1, 2)`, `[a, b]`; else the text."""
    lower = text.strip().lower()
    if lower in ("true", "false"):
        return lower == "true"
    if lower in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """`["a=1", "b=x"]` -> `{"a": "1", "b": "x"}` (values still text); a later name wins."""
    out: dict[str, str] = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise DebugAtlasError(
                f"`{flag} {item}` is not of the form name=value. HINT: e.g. `{flag} "
                f"{'render_steps=64' if flag == '--option' else 'num_classes=3'}`; quote values with spaces."
            )
        out[name.strip()] = value.strip()
    return out


def analysis_options(items: Sequence[str] | None) -> dict[str, Any]:
    """`--option name=value` items as `analyze()` keywords, each value read as its `AnalysisConfig` type.

    Booleans take true/false/yes/no/1/0, tuples a comma list (`patch_sizes=0.2,0.3`), optional
    fields `None`. An unknown name or a bad value raises `DebugAtlasError` as the Python keyword would.
    """
    import typing

    from .pipeline.config import AnalysisConfig

    raw = parse_assignments(items, "--option")
    hints = typing.get_type_hints(AnalysisConfig)
    unknown = {k: v for k, v in raw.items() if k not in hints}
    if unknown:
        AnalysisConfig.from_options(unknown)  # raises with the closest valid names
    options = {name: _coerce(name, text, hints[name]) for name, text in raw.items()}
    AnalysisConfig.from_options(options)  # checks the values now, before a model is loaded
    return options


def _coerce(name: str, text: str, hint: Any) -> Any:
    try:
        return _as_type(text, hint)
    except ValueError:
        shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        raise DebugAtlasError(
            f"`--option {name}={text}`: expected {shown}. HINT: booleans are true/false, tuples a comma list "
            "(`patch_sizes=0.2,0.3`), and an optional value may be None."
        ) from None


def _as_type(text: str, hint: Any) -> Any:
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _as_type(text, arg)
            except ValueError:
                continue
        raise ValueError(text)
    if origin is tuple:
        parts = [p.strip() for p in text.strip().strip("()[]").split(",") if p.strip()]
        return tuple(_as_type(p, args[0] if args else str) for p in parts)
    if hint is bool:
        lower = text.strip().lower()
        if lower in _TRUE or lower in _FALSE:
            return lower in _TRUE
        raise ValueError(text)
    if hint is int:
        return int(text.strip())
    if hint is float:
        return float(text.strip())
    if hint is str:
        return text
    return parse_value(text)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags every subcommand shares; read them back with `model_from_args`."""
    parser.add_argument("--model", required=True, metavar="PKG.MODULE:FACTORY",
                        help="importable class or function building the model (the current directory is "
                             "searched as `python -m` does), e.g. torchvision.models:resnet18")
    parser.add_argument("--model-args", nargs="+", action="append", metavar="NAME=VALUE",
                        help="keyword arguments for the factory, e.g. num_classes=3 (repeatable)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="state_dict file saved with torch.save(model.state_dict())")
    source.add_argument("--checkpoint", help="Lightning .ckpt; --model then names the LightningModule class")
    parser.add_argument("--normalize", nargs="+", metavar="X",
                        help="preset (imagenet, cifar10, mnist) or the means then the stds, one per channel")


def model_from_args(args: argparse.Namespace):
    """(model in eval mode on the CPU, normalize (mean, std) or None) from `add_model_arguments` flags."""
    from .models import load_model, normalization

    normalize = normalization(args.normalize)
    items = [item for group in (args.model_args or []) for item in group]
    model_args = {k: parse_value(v) for k, v in parse_assignments(items, "--model-args").items()}
    model = load_model(args.model, args.weights, model_args=model_args, checkpoint=args.checkpoint)
    return model, normalize


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="debugatlas", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="analyse the shipped digits CNN with AtlasCallback and write a report")
    demo.add_argument("--out", default="reports/demo", help="run directory (default reports/demo)")
    demo.add_argument("--scenario", choices=["natural", "shortcut"], default="natural",
                      help="natural digits, or a planted trigger in one class's training images")
    demo.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    demo.add_argument("--epochs", type=int, default=8, help="training epochs with --train")
    demo.add_argument("--train", action="store_true",
                      help="train the model anew (the results then depend on the machine) instead of the shipped weights")
    demo.add_argument("--seed", type=int, default=0)

    an = sub.add_parser("analyze", help="analyse a model on an ImageFolder")
    add_model_arguments(an)
    an.add_argument("--data", required=True, help="ImageFolder root: <class>/<image files>")
    an.add_argument("--layer", required=True, help="module name from model.named_modules()")
    an.add_argument("--pair", nargs=2, action="append", metavar=("A", "B"), help="class pair to compare (repeatable)")
    an.add_argument("--out", default="reports/run")
    an.add_argument("--image-size", type=int, help="resize images to this side")
    an.add_argument("--grayscale", action="store_true", help="read images as one channel")
    an.add_argument("--device", choices=["cpu", "cuda"], default=None)
    an.add_argument("--seed", type=int, default=0)
    an.add_argument("--no-render", action="store_true", help="skip feature inversion (and the patch tests)")
    an.add_argument("--no-patches", action="store_true", help="skip the patch tests")
    an.add_argument("--progress", action="store_true",
                    help="show the progress bar even when stderr is not a terminal (a log file, CI)")
    an.add_argument("--option", action="append", metavar="NAME=VALUE",
                    help="any AnalysisConfig option, e.g. render_steps=64 or grid_sizes=10,20 (repeatable)")

    diff = sub.add_parser("diff", help="what changed between two run directories (exit 1: a confirmed finding got worse)")
    diff.add_argument("run_a", metavar="RUN_A", help="the earlier run directory (or its summary.json)")
    diff.add_argument("run_b", metavar="RUN_B", help="the later run directory (or its summary.json)")
    diff.add_argument("--out", help="write index.html and diff.json here")
    diff.add_argument("--tolerance", type=float, default=0.0,
                      help="a finding got worse when B's flip-rate interval lies above A's by more than this (0)")
    diff.add_argument("--fail-on-new", action="store_true",
                      help="also fail when B confirms a finding that A does not have at all")

    sub.add_parser("check", help="rerun a saved patch suite against a checkpoint (CI gate)", add_help=False)
    return parser


def _demo(args) -> int:
    from .demo import run_demo

    started = time.perf_counter()
    result = run_demo(Path(args.out), scenario=args.scenario, device=args.device, epochs=args.epochs, seed=args.seed,
                      train=args.train)
    record = result.record
    print(f"debugatlas demo ({args.scenario}): accuracy {record.accuracy:.3f} on {record.num_images} "
          f"validation images, {record.num_samples} activation samples at {record.layer!r}")
    for pair in record.pairs:
        near = ", a near miss" if pair.kind == "near_miss" else ""
        print(f"  {pair.a} -> {pair.b}: {pair.confused} confused{near}; "
              f"{len(pair.confirmed) or 'nothing'} confirmed")
        for finding in pair.confirmed:
            flag = " [suspected shortcut]" if finding.suspected_shortcut else ""
            flag += " [synthesised patches only]" if finding.synthesized_only else ""
            print(f"    - {finding.statement}{flag}")
    print(f"report: {Path(args.out) / 'index.html'}  ({time.perf_counter() - started:.0f} s)")
    return EXIT_OK


def _analyze(args) -> int:
    from .data import image_folder
    from .pipeline import analyze

    options: dict[str, Any] = {}
    if args.no_render:
        options.update(render=False, patches=False)
    if args.no_patches:
        options["patches"] = False
    options.update(analysis_options(args.option))
    model, normalize = model_from_args(args)
    dataset = image_folder(args.data, size=args.image_size, grayscale=args.grayscale)
    result = analyze(model, dataset, args.layer, pairs=[tuple(p) for p in args.pair] if args.pair else "auto",
                     normalize=normalize, out_dir=args.out, seed=args.seed, device=args.device,
                     progress=True if args.progress else None,
                     title=f"{args.model} on {args.data}", data_description=str(args.data),
                     model_spec=args.model, **options)
    print(f"accuracy {result.record.accuracy:.3f}; report: {Path(args.out) / 'index.html'}")
    return EXIT_OK


def _diff(args) -> int:
    from .diff import diff_runs, write_diff

    result = diff_runs(args.run_a, args.run_b, tolerance=args.tolerance, fail_on_new=args.fail_on_new)
    print(result.text())
    if args.out:
        write_diff(result, args.out)
        print(f"diff: {Path(args.out) / 'index.html'}")
    return EXIT_OK if result.passed else EXIT_FAILED


# -- debugatlas check: the gate's command line (the gate itself is `check.check_suite`) --------------
def _check_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="debugatlas check",
        description="Rerun a saved patch suite against a checkpoint and gate its confirmed findings "
                    "(exit 0: all hold, 1: a check failed, 2: bad input).",
    )
    parser.add_argument("--suite", required=True, help="suite folder (suite.json), or a folder of suite folders")
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="ImageFolder root: <class>/<image files>")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--max-flip-rate", type=float, help="absolute limit on every gated patch's flip rate")
    rule.add_argument("--baseline", help="summary.json whose rates, accuracy and confusions are the reference "
                                         "(default: the suite's own baseline)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="allowed gap between the new and the baseline 95 %% intervals (0.05)")
    parser.add_argument("--min-accuracy", type=float)
    parser.add_argument("--max-confusion", type=float, help="limit on the rate of images of A predicted B")
    parser.add_argument("--json", help="write the report as JSON here")
    parser.add_argument("--junit", help="write JUnit XML here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--image-size", type=int, help="resize images to N x N (default: the suite's)")
    parser.add_argument("--grayscale", action="store_true", help="read images as one channel (default: as the suite)")
    return parser


def check_main(argv: Sequence[str] | None = None) -> int:
    """`debugatlas check ...`: prints the table; returns 0 (all hold), 1 (a check failed), 2 (bad input)."""
    import json

    import torch

    from .artifacts.atomic import write_text
    from .artifacts.summary import read_summary
    from .check import check_suite, load_suites
    from .core.model import Normalized
    from .data import image_folder

    try:
        args = _check_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        suites = load_suites(args.suite)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise DebugAtlasError("`--device cuda` but CUDA is not available. HINT: use `--device cpu`.")
        model, normalize = model_from_args(args)
        model = (Normalized(model, *normalize) if normalize else model).to(args.device)
        c, h, w = suites[0].image_shape
        size = args.image_size if args.image_size is not None else (h if h == w else None)
        dataset = image_folder(args.data, size=size, grayscale=args.grayscale or c == 1)
        baseline = None
        if args.baseline is not None:
            baseline = read_summary(args.baseline)
        report = check_suite(suites, model, dataset, max_flip_rate=args.max_flip_rate, baseline=baseline,
                             tolerance=args.tolerance, min_accuracy=args.min_accuracy,
                             max_confusion=args.max_confusion)
        print(report.table())
        if args.json:
            write_text(args.json, json.dumps(report.to_dict(), indent=1))
        if args.junit:
            write_text(args.junit, report.to_junit_xml())
    except (DebugAtlasError, OSError) as exc:
        print(f"debugatlas check: error: {exc}", file=sys.stderr)
        return 2
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `debugatlas` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv and argv[0] == "check":
        return check_main(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    try:
        return {"demo": _demo, "analyze": _analyze, "diff": _diff}[args.command](args)
    except DebugAtlasError as exc:
        print(f"debugatlas {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
