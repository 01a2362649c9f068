"""The CI gate: rerun saved patch suites against a checkpoint; fail when a confusion comes back.

`check_suite` measures and returns a `CheckReport`; `main` is `debugatlas check` (exit 0 when every
check holds, 1 when one fails, 2 for bad input); `assert_suite_holds` is the pytest form.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .core.errors import DebugAtlasError
from .patches.suite import SUITE_FILE, PatchSuite, SuiteRun

_EPS = 1e-9


@dataclass
class CheckRow:
    """One check: `measured` must be <= `limit` (>= for accuracy). `limit` None: reported only.

    kind: "flip_rate", "accuracy" or "confusion"; pair: "A->B" or None; message: why it failed,
    or the reference values (baseline, controls) when it held.
    """

    name: str
    kind: str
    measured: float | None
    limit: float | None
    passed: bool
    message: str = ""
    pair: str | None = None

    def to_dict(self) -> dict:
        """Plain values (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


@dataclass
class CheckReport:
    """All checks of one gate run; `passed` when every row passed. `runs`: the suite reruns."""

    rows: list[CheckRow]
    runs: list[SuiteRun] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        return [row for row in self.rows if not row.passed]

    def to_dict(self) -> dict:
        """Plain values: overall result, settings, every check, and per pair the rerun's totals."""
        pairs = [{"a": r.a, "b": r.b, "n_images": r.evaluation.n_images, "num_a": r.num_a,
                  "accuracy": r.accuracy, "confusion_rate": r.confusion_rate,
                  "results": [x.to_dict() for x in r.evaluation.results]} for r in self.runs]
        return {"passed": self.passed, "num_checks": len(self.rows), "num_failed": len(self.failures),
                "settings": dict(self.settings), "checks": [row.to_dict() for row in self.rows], "pairs": pairs}

    def table(self) -> str:
        """A fixed-width text table, one line per check, and a verdict line."""
        def num(v: float | None) -> str:
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

        head = ("check", "measured", "limit", "result", "note")
        lines = [(r.name, num(r.measured), num(r.limit), "ok" if r.passed else "FAIL", r.message) for r in self.rows]
        widths = [max(len(head[i]), *(len(line[i]) for line in lines)) if lines else len(head[i]) for i in range(4)]
        fmt = lambda cols: "  ".join(  # noqa: E731
            [cols[0].ljust(widths[0]), cols[1].rjust(widths[1]), cols[2].rjust(widths[2]),
             cols[3].ljust(widths[3]), cols[4]]).rstrip()
        out = [fmt(head), fmt(tuple("-" * w for w in widths) + ("----",))] + [fmt(line) for line in lines]
        verdict = "PASSED" if self.passed else "FAILED"
        out.append(f"{verdict}: {len(self.rows) - len(self.failures)} of {len(self.rows)} checks hold")
        return "\n".join(out)

    def to_junit_xml(self) -> str:
        """JUnit XML: one testsuite, one testcase per check, a <failure> for each failed one."""
        failures = str(len(self.failures))
        root = ET.Element("testsuites", name="debugatlas check", tests=str(len(self.rows)), failures=failures)
        suite = ET.SubElement(root, "testsuite", name="debugatlas check", tests=str(len(self.rows)),
                              failures=failures, errors="0", skipped="0")
        for row in self.rows:
            classname = "debugatlas.check" + (f".{row.pair.replace('.', '_')}" if row.pair else "")
            case = ET.SubElement(suite, "testcase", classname=classname, name=row.name, time="0")
            if not row.passed:
                failure = ET.SubElement(case, "failure", message=row.message or "check failed", type=row.kind)
                failure.text = f"measured {row.measured} limit {row.limit}: {row.message}"
        return ET.tostring(root, encoding="unicode", xml_declaration=True)


def _baseline_rates(baseline: dict | None, suite: PatchSuite) -> dict[tuple[str, str], float]:
    """(patch id, placement) -> baseline flip rate, from a summary.json dict or a patches list."""
    if baseline is None:
        return {}
    if not isinstance(baseline, dict):
        raise DebugAtlasError(f"`baseline` is a {type(baseline).__name__}; expected the dict of a summary.json.")
    entries = baseline.get("patches")
    if "pairs" in baseline:
        pairs = [p for p in baseline["pairs"] if str(p.get("a")) == suite.a and str(p.get("b")) == suite.b]
        if not pairs:
            found = [(p.get("a"), p.get("b")) for p in baseline["pairs"]]
            raise DebugAtlasError(
                f"The baseline has no pair ({suite.a!r}, {suite.b!r}); it has {found}. "
                "HINT: pass the summary.json written with this suite."
            )
        entries = pairs[0].get("patches", [])
    if not isinstance(entries, list):
        raise DebugAtlasError(
            "The baseline has neither `pairs` nor a `patches` list. HINT: pass a summary.json written by analyze()."
        )
    try:
        return {(str(e["id"]), str(e.get("placement", "static"))): float(e["flip_rate"])
                for e in entries if e.get("flip_rate") is not None}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DebugAtlasError(f"A baseline patch entry is malformed ({exc}). HINT: each needs id and flip_rate.") from exc


def _as_suites(suite) -> list[PatchSuite]:
    if isinstance(suite, PatchSuite):
        return [suite]
    if isinstance(suite, (str, Path)):
        return load_suites(suite)
    suites = list(suite)
    if not suites or not all(isinstance(s, PatchSuite) for s in suites):
        raise DebugAtlasError("`suite` must be a PatchSuite, a folder, or a non-empty list of PatchSuite.")
    return suites


def load_suites(path: str | Path) -> list[PatchSuite]:
    """One suite (`path/suite.json`) or every suite in the sub-folders of `path`, sorted by name."""
    path = Path(path)
    if path.is_dir() and not (path / SUITE_FILE).is_file():
        subdirs = sorted(d for d in path.iterdir() if (d / SUITE_FILE).is_file())
        if subdirs:
            return [PatchSuite.load(d) for d in subdirs]
    return [PatchSuite.load(path)]


def check_suite(
    suite,
    model: nn.Module,
    dataset,
    max_flip_rate: float | None = None,
    baseline: dict | None = None,
    tolerance: float = 0.05,
    min_accuracy: float | None = None,
    max_confusion: float | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> CheckReport:
    """Rerun the suite(s) on `model` and `dataset` and check every patch under every placement.

    Flip-rate limit: `max_flip_rate` when given; otherwise the patch's baseline flip rate (from
    `baseline`, a summary.json dict, else the suite's own) + `tolerance`. Also checks the accuracy
    on `dataset` (>= `min_accuracy`) and per pair the rate of images of A predicted B
    (<= `max_confusion`); without a limit those are reported only.
    """
    if max_flip_rate is not None and baseline is not None:
        raise DebugAtlasError("Pass `max_flip_rate` or `baseline`, not both. HINT: choose one rule.")
    for label, value in (("max_flip_rate", max_flip_rate), ("min_accuracy", min_accuracy),
                         ("max_confusion", max_confusion), ("tolerance", tolerance)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise DebugAtlasError(f"`{label}={value!r}` must be a rate in [0, 1].")
    rows: list[CheckRow] = []
    runs: list[SuiteRun] = []
    for s in _as_suites(suite):
        run = s.run(model, dataset, batch_size=batch_size, device=device)
        runs.append(run)
        pair = f"{s.a}->{s.b}"
        external = _baseline_rates(baseline, s)
        for patch in s.patches:
            for placement in s.placements:
                rows.append(_flip_row(s, run, pair, patch.id, placement, max_flip_rate, external, tolerance))
        ok = max_confusion is None or run.confusion_rate <= max_confusion + _EPS
        rows.append(CheckRow(f"{pair} confusion", "confusion", run.confusion_rate, max_confusion, ok,
                             "" if ok else f"{run.confusion_rate:.4f} of images of {s.a!r} predicted {s.b!r} "
                                           f"> {max_confusion}", pair))
    accuracy = runs[0].accuracy
    ok = min_accuracy is None or accuracy >= min_accuracy - _EPS
    rows.insert(0, CheckRow("accuracy", "accuracy", accuracy, min_accuracy, ok,
                            "" if ok else f"accuracy {accuracy:.4f} < {min_accuracy}"))
    settings = {"max_flip_rate": max_flip_rate, "tolerance": tolerance, "min_accuracy": min_accuracy,
                "max_confusion": max_confusion,
                "baseline": "given" if baseline is not None else ("none" if max_flip_rate is not None else "suite")}
    return CheckReport(rows, runs, settings)


def _flip_row(s: PatchSuite, run: SuiteRun, pair: str, patch_id: str, placement: str,
              max_flip_rate: float | None, external: dict, tolerance: float) -> CheckRow:
    result = run.evaluation.get(patch_id, placement)
    name = f"{pair} {patch_id} {placement}"
    controls = f"noise {_fmt(result.noise_flip_rate)}, natural {_fmt(result.natural_flip_rate)}"
    if max_flip_rate is not None:
        limit, reference = float(max_flip_rate), "max_flip_rate"
    else:
        if (patch_id, placement) in external:
            base, origin = external[(patch_id, placement)], "baseline"
        else:
            base, origin = s.baseline.get(patch_id, placement).flip_rate, "suite baseline"
        limit, reference = base + tolerance, f"{origin} {_fmt(base)} + {tolerance}"
        if math.isnan(base):
            return CheckRow(name, "flip_rate", result.flip_rate, None, False,
                            f"the {origin} has no flip rate for this patch (no image counted when it was "
                            "measured). HINT: rebuild the suite, or pass --max-flip-rate", pair)
    if result.n_images == 0:
        return CheckRow(name, "flip_rate", result.flip_rate, limit, False,
                        f"no image of {s.a!r} is classified correctly, nothing to measure", pair)
    ok = result.flip_rate <= limit + _EPS
    verdict = "" if ok else f"flip rate {result.flip_rate:.4f} > "
    return CheckRow(name, "flip_rate", result.flip_rate, limit, ok,
                    f"{verdict}{reference}; {controls}; n={result.n_images}", pair)


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def assert_suite_holds(suite_or_dir, model: nn.Module, dataset, **limits) -> CheckReport:
    """`check_suite` for pytest: raises AssertionError with the table when a check fails."""
    report = check_suite(suite_or_dir, model, dataset, **limits)
    if not report.passed:
        raise AssertionError("patch suite check failed:\n" + report.table())
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="debugatlas check",
        description="Rerun a saved patch suite against a checkpoint (exit 0: all hold, 1: a check failed, 2: bad input).",
    )
    parser.add_argument("--suite", required=True, help="suite folder (suite.json), or a folder of suite folders")
    parser.add_argument("--model", required=True, help="pkg.module:factory building the model")
    parser.add_argument("--weights", help="state_dict file saved with torch.save")
    parser.add_argument("--data", required=True, help="ImageFolder root: <class>/<image files>")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--max-flip-rate", type=float, help="absolute limit on every patch's flip rate")
    rule.add_argument("--baseline", help="summary.json whose flip rates (+ tolerance) are the limits")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed rise over the baseline (0.05)")
    parser.add_argument("--min-accuracy", type=float)
    parser.add_argument("--max-confusion", type=float, help="limit on the rate of images of A predicted B")
    parser.add_argument("--json", help="write the report as JSON here")
    parser.add_argument("--junit", help="write JUnit XML here")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--image-size", type=int, help="resize images to N x N (default: the suite's)")
    parser.add_argument("--grayscale", action="store_true", help="read images as one channel (default: as the suite)")
    return parser


def _write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    """`debugatlas check ...`: prints the table; returns 0 (all hold), 1 (a check failed), 2 (bad input)."""
    from .data import image_folder
    from .models import load_model

    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        suites = load_suites(args.suite)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise DebugAtlasError("`--device cuda` but CUDA is not available. HINT: use `--device cpu`.")
        model = load_model(args.model, args.weights).to(args.device)
        c, h, w = suites[0].image_shape
        size = args.image_size if args.image_size is not None else (h if h == w else None)
        dataset = image_folder(args.data, size=size, grayscale=args.grayscale or c == 1)
        baseline = None
        if args.baseline is not None:
            try:
                baseline = json.loads(Path(args.baseline).read_text())
            except json.JSONDecodeError as exc:
                raise DebugAtlasError(f"`--baseline {args.baseline!r}` is not valid JSON ({exc}).") from exc
        report = check_suite(suites, model, dataset, max_flip_rate=args.max_flip_rate, baseline=baseline,
                             tolerance=args.tolerance, min_accuracy=args.min_accuracy,
                             max_confusion=args.max_confusion, device=args.device)
        print(report.table())
        if args.json:
            _write_text(args.json, json.dumps(report.to_dict(), indent=1))
        if args.junit:
            _write_text(args.junit, report.to_junit_xml())
    except (DebugAtlasError, OSError) as exc:
        print(f"debugatlas check: error: {exc}", file=sys.stderr)
        return 2
    return 0 if report.passed else 1
