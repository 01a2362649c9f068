"""The CI gate: rerun saved patch suites against a checkpoint; fail when a confirmed confusion comes back.

`check_suite` measures and returns a `CheckReport`; `cli.check_main` is `debugatlas check` (exit 0 when every
check holds, 1 when one fails, 2 for bad input); `assert_suite_holds` is the pytest form.
Rates are compared by their Wilson 95 % intervals (`GATE_RULE`), so a rerun on other images of
the same classes does not fail by chance.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .artifacts.record import GATE_EPS as _EPS, PairRecord, RunRecord, gate, rate_interval
from .artifacts.suite_file import suite_dirs
from .artifacts.summary import as_record, baseline_pair
from .core.errors import DebugAtlasError
from .patches.stats import wilson_interval, z_for_looks
from .patches.suite import PatchSuite, SuiteRun

STATUSES = ("ok", "failed", "reported", "nothing_to_measure")
CHECK_IMAGES = 100  # images of A a rerun measures at most by default, as the confirmation half
GATE_RULE = (
    "Gated: patches whose baseline verdict is 'confirmed' (every patch of a suite without verdicts); "
    "others are reported. A flip rate fails when its Wilson 95 % interval lies above the baseline's "
    "by more than the tolerance (new lower bound > baseline upper bound + tolerance), or above "
    "max_flip_rate when given. Accuracy fails when its interval lies below the baseline's by more "
    "than the tolerance (or below min_accuracy); a pair's confusion rate (A predicted B) like a flip "
    "rate (or above max_confusion). No correctly classified image of A: 'nothing to measure'."
)


@dataclass
class CheckRow:
    """One check: `measured` against `limit` (see `GATE_RULE`). `limit` None: nothing to hold it to.

    kind: "flip_rate", "accuracy" or "confusion"; pair: "A->B" or None; message: why it failed,
    or the reference values (baseline, controls) when it held. status: one of STATUSES, derived
    from `passed` unless "reported" (measured, not gated) or "nothing_to_measure" (with its reason).
    """

    name: str
    kind: str
    measured: float | None
    limit: float | None
    passed: bool
    message: str = ""
    pair: str | None = None
    status: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "ok" if self.passed else "failed"
        if self.status not in STATUSES:
            raise DebugAtlasError(f"`CheckRow(status={self.status!r})` is not one of {list(STATUSES)}.")

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
        shown = {"ok": "ok", "failed": "FAIL", "reported": "info", "nothing_to_measure": "skip"}
        lines = [(r.name, num(r.measured), num(r.limit), shown[r.status], r.message) for r in self.rows]
        widths = [max(len(head[i]), *(len(line[i]) for line in lines)) if lines else len(head[i]) for i in range(4)]
        fmt = lambda cols: "  ".join(  # noqa: E731
            [cols[0].ljust(widths[0]), cols[1].rjust(widths[1]), cols[2].rjust(widths[2]),
             cols[3].ljust(widths[3]), cols[4]]).rstrip()
        out = [fmt(head), fmt(tuple("-" * w for w in widths) + ("----",))] + [fmt(line) for line in lines]
        verdict = "PASSED" if self.passed else "FAILED"
        out.append(f"{verdict}: {len(self.rows) - len(self.failures)} of {len(self.rows)} checks hold")
        skipped = sum(r.status == "nothing_to_measure" for r in self.rows)
        reported = sum(r.status == "reported" for r in self.rows)
        if skipped or reported:
            out[-1] += f" ({reported} reported only, {skipped} with nothing to measure)"
        return "\n".join(out)

    def to_junit_xml(self) -> str:
        """JUnit XML: one testsuite, one testcase per check, a <failure> for each failed one."""
        failures = str(len(self.failures))
        skipped = str(sum(r.status == "nothing_to_measure" for r in self.rows))
        root = ET.Element("testsuites", name="debugatlas check", tests=str(len(self.rows)), failures=failures)
        suite = ET.SubElement(root, "testsuite", name="debugatlas check", tests=str(len(self.rows)),
                              failures=failures, errors="0", skipped=skipped)
        for row in self.rows:
            classname = "debugatlas.check" + (f".{row.pair.replace('.', '_')}" if row.pair else "")
            case = ET.SubElement(suite, "testcase", classname=classname, name=row.name, time="0")
            if not row.passed:
                failure = ET.SubElement(case, "failure", message=row.message or "check failed", type=row.kind)
                failure.text = f"measured {row.measured} limit {row.limit}: {row.message}"
            elif row.status == "nothing_to_measure":
                ET.SubElement(case, "skipped", message=row.message)
            elif row.message:
                ET.SubElement(case, "system-out").text = row.message
        return ET.tostring(root, encoding="unicode", xml_declaration=True)


@dataclass(frozen=True)
class _Reference:
    """A baseline value with its 95 % interval; n None when unknown (the interval is the point)."""

    value: float
    lo: float
    hi: float
    n: int | None
    origin: str
    verdict: str | None = None

    def text(self) -> str:
        span = "" if self.n is None else f" [{self.lo:.2f}-{self.hi:.2f}]"
        return f"{self.origin} {self.value:.4f}{span}"


def _reference(value: float, n, ci, origin: str, verdict: str | None = None) -> _Reference:
    value = float(value)
    lo, hi = rate_interval(value, n, ci) or (value, value)
    return _Reference(value, lo, hi, None if n is None else int(n), origin, verdict)


def _baseline_patches(pair: PairRecord | None) -> dict[tuple[str, str], _Reference]:
    """(patch id, placement) -> baseline flip rate with its interval and verdict, from the run record."""
    if pair is None:
        return {}
    return {(p.id, p.placement): _reference(p.flip_rate, p.n_images, p.flip_rate_ci, "baseline", p.verdict)
            for p in pair.patches if p.flip_rate is not None}


def _suite_reference(suite: PatchSuite, patch_id: str, placement: str) -> _Reference:
    r = suite.baseline.get(patch_id, placement)
    ci = r.flip_rate_ci if r.flip_rate_ci is not None or r.n_images == 0 else None
    return _reference(r.flip_rate, r.n_images, ci, "suite baseline", r.verdict)


def _pair_references(baseline: RunRecord | None, suite: PatchSuite) -> tuple[_Reference | None, _Reference | None]:
    """Baseline accuracy and a->b confusion rate: from the run record, else the suite's metadata."""
    meta = suite.metadata or {}
    accuracy = confusion = None
    if baseline is not None:
        accuracy = _reference(baseline.accuracy, baseline.num_images, None, "baseline")
        rate = baseline.confusion_rate(suite.a, suite.b)
        if rate is not None:
            confusion = _reference(rate[0], rate[1], None, "baseline")
    elif meta.get("accuracy") is not None:
        accuracy = _reference(meta["accuracy"], meta.get("num_images"), None, "suite baseline")
    if confusion is None and meta.get("confusion_rate") is not None:
        confusion = _reference(meta["confusion_rate"], meta.get("num_a"), None, "suite baseline")
    return accuracy, confusion


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
    return [PatchSuite.load(d) for d in suite_dirs(path)]


def check_suite(
    suite,
    model: nn.Module,
    dataset,
    max_flip_rate: float | None = None,
    baseline: RunRecord | dict | str | Path | None = None,
    tolerance: float = 0.05,
    min_accuracy: float | None = None,
    max_confusion: float | None = None,
    batch_size: int | None = None,
    max_images: int | None = None,
) -> CheckReport:
    """Rerun the suite(s) on `model` and `dataset`; gate the confirmed findings (see `GATE_RULE`).

    Gated patches: those whose baseline verdict is "confirmed" (all of them in a suite without
    verdicts); the others are measured and reported. A gated patch fails when its new flip rate
    exceeds `max_flip_rate`, or else when its Wilson 95 % interval lies above the baseline's
    (`baseline`: a run record, the dict of a summary.json or its path; else the suite's own) by more than `tolerance`. Accuracy and
    each pair's rate of A predicted B: against `min_accuracy` / `max_confusion` when given, else
    against the baseline's the same way (a drop / rise beyond the intervals and `tolerance` fails),
    else reported. A pair with no correctly classified image of A has nothing to measure: one row
    with that status and its reason, not a failure.

    Cost: the patches are measured on at most `max_images` images of A (default: the larger of
    `CHECK_IMAGES` and what the baseline measured), in looks (`patches.sequential`): a gated patch
    stops once its interval lies wholly on one side of its limit, a reported one after the first
    look; intervals are then at 1 - 0.05 / looks, so a rerun stopped early keeps 95 % coverage.
    The model runs where its parameters are.
    """
    if max_flip_rate is not None and baseline is not None:
        raise DebugAtlasError("Pass `max_flip_rate` or `baseline`, not both. HINT: choose one rule.")
    for label, value in (("max_flip_rate", max_flip_rate), ("min_accuracy", min_accuracy),
                         ("max_confusion", max_confusion), ("tolerance", tolerance)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise DebugAtlasError(f"`{label}={value!r}` must be a rate in [0, 1].")
    baseline = None if baseline is None else as_record(baseline)
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    rows: list[CheckRow] = []
    runs: list[SuiteRun] = []
    accuracy_ref = None
    for s in _as_suites(suite):
        pair = f"{s.a}->{s.b}"
        entry = baseline_pair(baseline, s.a, s.b)
        external = _baseline_patches(entry)
        refs = {(p.id, pl): external.get((p.id, pl)) or _suite_reference(s, p.id, pl)
                for p in s.patches for pl in s.placements}
        gated = [p.id for p in s.patches
                 if any(_is_gated(refs[(p.id, pl)].verdict if refs[(p.id, pl)].verdict is not None
                                  else s.baseline.get(p.id, pl).verdict) for pl in s.placements)]
        limits = {key: (float(max_flip_rate) if max_flip_rate is not None else ref.hi + tolerance)
                  for key, ref in refs.items()}
        cap = max_images if max_images is not None else max(
            [CHECK_IMAGES] + [r.n_images for r in s.baseline.results])
        run = s.run(model, dataset, batch_size=batch_size, device=device, max_images=cap,
                    settled=lambda results, z, limits=limits: _decided(results, z, limits), gated=gated)
        runs.append(run)
        pair_accuracy, pair_confusion = _pair_references(baseline, s)
        accuracy_ref = accuracy_ref or pair_accuracy
        if run.evaluation.n_images == 0:
            rows.append(CheckRow(
                f"{pair} patches", "flip_rate", None, None, True,
                f"nothing to measure: none of the {run.num_a} images of {s.a!r} is classified as {s.a!r} by this "
                "checkpoint, so no patch can flip one (the accuracy and confusion checks still apply)",
                pair, "nothing_to_measure"))
        else:
            for patch in s.patches:
                for placement in s.placements:
                    ref = refs[(patch.id, placement)]
                    verdict = ref.verdict if ref.verdict is not None else s.baseline.get(patch.id, placement).verdict
                    rows.append(_flip_row(s, run, pair, patch.id, placement, max_flip_rate, ref, verdict, tolerance))
        rows.append(_confusion_row(s, run, pair, max_confusion, pair_confusion, tolerance))
    rows.insert(0, _accuracy_row(runs[0], min_accuracy, accuracy_ref, tolerance))
    settings = {"max_flip_rate": max_flip_rate, "tolerance": tolerance, "min_accuracy": min_accuracy,
                "max_confusion": max_confusion, "rule": GATE_RULE,
                "baseline": "given" if baseline is not None else ("none" if max_flip_rate is not None else "suite")}
    return CheckReport(rows, runs, settings)


def _is_gated(verdict: str | None) -> bool:
    return verdict is None or verdict == "confirmed"


def _decided(results, z: float, limits: dict) -> bool:
    """A gated patch's rerun is decided when, at every placement, its interval lies wholly below
    or wholly above its limit (the baseline's upper bound + tolerance, or `max_flip_rate`)."""
    for r in results:
        lo, hi = wilson_interval(r.flips, r.n_images, z)
        limit = limits[(r.patch_id, r.placement)]
        if r.n_images == 0 or lo <= limit + _EPS < hi:
            return False
    return True


def _flip_row(s: PatchSuite, run: SuiteRun, pair: str, patch_id: str, placement: str,
              max_flip_rate: float | None, ref: _Reference, verdict: str | None, tolerance: float) -> CheckRow:
    result = run.evaluation.get(patch_id, placement)
    name = f"{pair} {patch_id} {placement}"
    n = result.n_images
    lo, hi = wilson_interval(result.flips, n, z_for_looks(run.looks))
    new = f"{result.flip_rate:.4f} [{lo:.2f}-{hi:.2f}]"
    context = f"noise {_fmt(result.noise_flip_rate)}, natural {_fmt(result.natural_flip_rate)}; n={n}"
    gated = _is_gated(verdict)
    if gated and verdict is not None:
        context += f"; baseline verdict {verdict}"
    if not gated:
        return CheckRow(name, "flip_rate", result.flip_rate, None, True,
                        f"reported, not gated (baseline verdict {verdict}): new {new} vs {ref.text()}; {context}",
                        pair, "reported")
    if max_flip_rate is not None:
        ok = result.flip_rate <= max_flip_rate + _EPS
        message = (f"flip rate {new} vs max_flip_rate {max_flip_rate}" if ok else
                   f"flip rate {new} > max_flip_rate {max_flip_rate}")
        return CheckRow(name, "flip_rate", result.flip_rate, float(max_flip_rate), ok, f"{message}; {context}", pair)
    if math.isnan(ref.value) or ref.n == 0:
        return CheckRow(name, "flip_rate", result.flip_rate, None, True,
                        f"nothing to measure: the {ref.origin} counted no image for this patch; {context}",
                        pair, "nothing_to_measure")
    limit = ref.hi + tolerance
    ok = gate((lo, hi), (ref.lo, ref.hi), tolerance) != "above"
    if ok:
        message = f"new {new} vs {ref.text()} + tolerance {tolerance}"
    else:
        message = (f"flip rate {new}: its 95 % interval lies above the {ref.text()} by more than "
                   f"the tolerance {tolerance} ({lo:.4f} > {ref.hi:.4f} + {tolerance})")
    return CheckRow(name, "flip_rate", result.flip_rate, limit, ok, f"{message}; {context}", pair)


def _accuracy_row(run: SuiteRun, min_accuracy: float | None, ref: _Reference | None, tolerance: float) -> CheckRow:
    acc, n = run.accuracy, run.num_images
    lo, hi = wilson_interval(round(acc * n), n)
    if min_accuracy is not None:
        ok = acc >= min_accuracy - _EPS
        return CheckRow("accuracy", "accuracy", acc, min_accuracy, ok,
                        "" if ok else f"accuracy {acc:.4f} < {min_accuracy}")
    if ref is None:
        return CheckRow("accuracy", "accuracy", acc, None, True, "reported (no baseline accuracy)", status="reported")
    limit = ref.lo - tolerance
    ok = gate((lo, hi), (ref.lo, ref.hi), tolerance) != "below"
    new = f"{acc:.4f} [{lo:.2f}-{hi:.2f}]"
    message = (f"new {new} vs {ref.text()} - tolerance {tolerance}" if ok else
               f"accuracy {new}: its 95 % interval lies below the {ref.text()} by more than the tolerance {tolerance}")
    return CheckRow("accuracy", "accuracy", acc, limit, ok, message)


def _confusion_row(s: PatchSuite, run: SuiteRun, pair: str, max_confusion: float | None,
                   ref: _Reference | None, tolerance: float) -> CheckRow:
    rate, name = run.confusion_rate, f"{pair} confusion"
    lo, hi = wilson_interval(round(rate * run.num_a), run.num_a)
    new = f"{rate:.4f} [{lo:.2f}-{hi:.2f}]"
    if max_confusion is not None:
        ok = rate <= max_confusion + _EPS
        return CheckRow(name, "confusion", rate, max_confusion, ok,
                        "" if ok else f"{rate:.4f} of images of {s.a!r} predicted {s.b!r} > {max_confusion}", pair)
    if ref is None:
        return CheckRow(name, "confusion", rate, None, True, "reported (no baseline confusion rate)", pair, "reported")
    limit = ref.hi + tolerance
    ok = gate((lo, hi), (ref.lo, ref.hi), tolerance) != "above"
    message = (f"new {new} vs {ref.text()} + tolerance {tolerance}" if ok else
               f"{new} of images of {s.a!r} predicted {s.b!r}: its 95 % interval lies above the {ref.text()} "
               f"by more than the tolerance {tolerance}")
    return CheckRow(name, "confusion", rate, limit, ok, message, pair)


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def assert_suite_holds(suite_or_dir, model: nn.Module, dataset, **limits) -> CheckReport:
    """`check_suite` for pytest: raises AssertionError with the table when a check fails."""
    report = check_suite(suite_or_dir, model, dataset, **limits)
    if not report.passed:
        raise AssertionError("patch suite check failed:\n" + report.table())
    return report
