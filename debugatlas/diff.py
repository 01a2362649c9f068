"""What changed between two run directories: `debugatlas diff RUN_A RUN_B`.

Reads each run's summary.json (schema 1) and compares: the pairs studied (appeared, went away,
confusions), every patch measured in either run matched by (pair, patch id, placement), which of
them are confirmed findings in each run (`artifacts.record.is_confirmed`), their flip rates with 95 %
intervals (`artifacts.record.rate_interval`), and the accuracy.

A finding *got worse* when it is confirmed in either run and B's interval lies above A's by more
than `tolerance` (`artifacts.record.gate`: B's lower bound minus A's upper bound > tolerance);
*better* the other way round.
Each pair also gets a row "best confirmed finding": its strongest confirmed finding in A against
the one in B, whichever patch each is (two checkpoints lay their atlases out differently, so their
patch ids rarely match), judged by the same rule.
`DiffResult.passed` is False when one got worse (and, with `fail_on_new`, when B confirms a finding
A does not). `diff_runs` only reads; `write_diff` writes `diff.json` and `index.html` atomically.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .artifacts.record import RunRecord, gate, rate_interval
from .artifacts.summary import read_summary
from .core.errors import DebugAtlasError

BEST = "best confirmed finding"



@dataclass(frozen=True)
class Rate:
    """A flip rate with its 95 % interval [lo, hi]; `n_images` None when the summary does not say."""

    value: float
    lo: float
    hi: float
    n_images: int | None = None


@dataclass(frozen=True)
class FindingChange:
    """One patch of one pair across the two runs (a side is None where that run lacks it).

    status: "worse", "better", "within" (intervals overlap or differ by no more than the
    tolerance), "only_a" or "only_b". confirmed_a / confirmed_b: a confirmed finding in that run.
    """

    pair: str
    key: str
    status: str
    confirmed_a: bool
    confirmed_b: bool
    rate_a: Rate | None
    rate_b: Rate | None
    statement_a: str | None = None
    statement_b: str | None = None

    @property
    def change(self) -> float | None:
        """B's flip rate minus A's, when both runs measured it."""
        return None if self.rate_a is None or self.rate_b is None else self.rate_b.value - self.rate_a.value

    @property
    def is_finding(self) -> bool:
        return self.confirmed_a or self.confirmed_b


@dataclass(frozen=True)
class PairChange:
    """A pair (a = true class, b = predicted class) and its confusion count in each run (None: absent)."""

    a: str
    b: str
    confused_a: int | None
    confused_b: int | None
    kind_a: str | None = None
    kind_b: str | None = None

    @property
    def status(self) -> str:
        return "appeared" if self.confused_a is None else "went_away" if self.confused_b is None else "kept"


@dataclass(frozen=True)
class DiffResult:
    """The comparison of run A (earlier) with run B (later); `failures` are the changes that fail it."""

    run_a: str
    run_b: str
    tolerance: float
    fail_on_new: bool
    accuracy_a: float | None
    accuracy_b: float | None
    pairs: tuple[PairChange, ...]
    findings: tuple[FindingChange, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def accuracy_change(self) -> float | None:
        return None if self.accuracy_a is None or self.accuracy_b is None else self.accuracy_b - self.accuracy_a

    @property
    def failures(self) -> tuple[FindingChange, ...]:
        rows = [f for f in self.findings if f.key != BEST and (
            (f.is_finding and f.status == "worse") or (self.fail_on_new and f.confirmed_b and not f.confirmed_a))]
        failed_pairs = {f.pair for f in rows}  # a pair's best row only when none of its patches failed
        rows += [f for f in self.findings if f.key == BEST and f.status == "worse" and f.pair not in failed_pairs]
        return tuple(rows)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        """Plain values for diff.json."""
        def finding(f: FindingChange) -> dict:
            out = asdict(f)
            out.update(change=f.change, failed=f in self.failures)
            return out

        return {"schema_version": 1, "run_a": self.run_a, "run_b": self.run_b, "tolerance": self.tolerance,
                "fail_on_new": self.fail_on_new, "passed": self.passed, "num_failed": len(self.failures),
                "accuracy": {"a": self.accuracy_a, "b": self.accuracy_b, "change": self.accuracy_change},
                "pairs": [dict(asdict(p), status=p.status) for p in self.pairs],
                "findings": [finding(f) for f in self.findings], "notes": list(self.notes)}

    def text(self) -> str:
        """A few lines for the terminal: accuracy, pairs, findings that changed, the verdict."""
        lines = [f"debugatlas diff: {self.run_a} -> {self.run_b}"]
        if self.accuracy_change is not None:
            lines.append(f"accuracy {self.accuracy_a:.4f} -> {self.accuracy_b:.4f} ({self.accuracy_change:+.4f})")
        for p in self.pairs:
            if p.status != "kept":
                lines.append(f"pair {p.a} -> {p.b}: {p.status.replace('_', ' ')}")
            elif p.confused_a != p.confused_b:
                lines.append(f"pair {p.a} -> {p.b}: confused {p.confused_a} -> {p.confused_b}")
        for f in self.findings:
            if f.is_finding:
                lines.append(f"{'FAIL ' if f in self.failures else ''}{f.pair} {f.key}: {_rate_text(f.rate_a)} -> "
                             f"{_rate_text(f.rate_b)} [{f.status}; confirmed in "
                             f"{_sides(f.confirmed_a, f.confirmed_b)}]")
        lines += [f"note: {n}" for n in self.notes]
        lines.append("PASSED" if self.passed else f"FAILED: {len(self.failures)} confirmed finding(s) got worse "
                     f"beyond the tolerance {self.tolerance}" + (" or are new" if self.fail_on_new else ""))
        return "\n".join(lines)


def _sides(a: bool, b: bool) -> str:
    return {(True, True): "both", (True, False): "A only", (False, True): "B only"}.get((a, b), "neither")


def _rate_text(rate: Rate | None) -> str:
    return "absent" if rate is None else f"{rate.value:.3f} [{rate.lo:.3f}, {rate.hi:.3f}]"


def read_run(path: str | os.PathLike) -> RunRecord:
    """A run's record (the run directory or its summary.json)."""
    return read_summary(path)


@dataclass(frozen=True)
class _Item:
    rate: Rate | None
    confirmed: bool
    statement: str | None


def _rate(rate: float | None, n: int | None, ci) -> Rate | None:
    interval = rate_interval(rate, n, ci)
    return None if interval is None else Rate(float(rate), interval[0], interval[1], n)


def _items(record: RunRecord) -> dict[tuple[str, str], _Item]:
    """(pair "A -> B", key) -> what the run measured; key is "patch id (placement)" or "patch id"
    for a finding whose patch row the run does not list."""
    items: dict[tuple[str, str], _Item] = {}
    for pair in record.pairs:
        for p in pair.patches:
            items[(pair.name, f"{p.id} ({p.placement})")] = _Item(
                _rate(p.flip_rate, p.n_images, p.flip_rate_ci), p.confirmed, None)
        for f in pair.confirmed:
            row = pair.patch_row(f)
            key = f"{f.patch} ({f.placement})" if row is not None else f.patch
            items[(pair.name, key)] = _Item(_rate(f.flip_rate, f.n_images, f.flip_rate_ci), True, f.statement)
    return items


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _pairs(ra: RunRecord, rb: RunRecord) -> tuple[PairChange, ...]:
    ia = {(p.a, p.b): p for p in ra.pairs}
    ib = {(p.a, p.b): p for p in rb.pairs}
    out = []
    for key in list(ia) + [k for k in ib if k not in ia]:
        pa, pb = ia.get(key), ib.get(key)
        out.append(PairChange(key[0], key[1], pa.confused if pa else None, pb.confused if pb else None,
                              pa.kind if pa else None, pb.kind if pb else None))
    return tuple(out)


def _status(a: Rate | None, b: Rate | None, tolerance: float) -> str:
    if a is None:
        return "only_b"
    if b is None:
        return "only_a"
    return {"above": "worse", "below": "better", "within": "within"}[gate((b.lo, b.hi), (a.lo, a.hi), tolerance)]


def diff_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, *, tolerance: float = 0.0,
              fail_on_new: bool = False) -> DiffResult:
    """Compare run B (later) with run A (earlier); see the module docstring for the rules."""
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0.0 <= tolerance <= 1.0:
        raise DebugAtlasError(f"`tolerance={tolerance!r}` must be a rate in [0, 1]. HINT: e.g. 0.05.")
    sa, sb = read_run(run_a), read_run(run_b)
    notes = []
    for field_name in ("layer", "classes"):
        if getattr(sa, field_name) != getattr(sb, field_name):
            notes.append(f"the runs differ in {field_name}: {_plain(getattr(sa, field_name))!r} vs "
                         f"{_plain(getattr(sb, field_name))!r}")
    if not any(p.findings or any(q.verdict is not None for q in p.patches) for s in (sa, sb) for p in s.pairs):
        notes.append("neither summary has findings or verdicts, so no finding counts as confirmed")
    ia, ib = _items(sa), _items(sb)
    changes = []
    for key in list(ia) + [k for k in ib if k not in ia]:
        a, b = ia.get(key), ib.get(key)
        ra, rb = a.rate if a else None, b.rate if b else None
        status = "only_a" if b is None else "only_b" if a is None else _status(ra, rb, float(tolerance))
        changes.append(FindingChange(key[0], key[1], status, bool(a and a.confirmed), bool(b and b.confirmed),
                                     ra, rb, a.statement if a else None, b.statement if b else None))
    changes += _best_rows(ia, ib, float(tolerance))
    changes.sort(key=lambda f: (not f.is_finding, f.pair, f.key != BEST, f.key))
    return DiffResult(str(run_a), str(run_b), float(tolerance), bool(fail_on_new), sa.accuracy, sb.accuracy,
                      _pairs(sa, sb), tuple(changes), tuple(notes))


def _best_rows(ia: dict, ib: dict, tolerance: float) -> list[FindingChange]:
    """Per pair, its strongest confirmed finding in A against the one in B, whatever their patches.

    Cells (and so patch ids) are placed by each run's own layout, so two checkpoints rarely share
    them; this row compares the pairs themselves.
    """
    def best(items: dict) -> dict[str, tuple[str, _Item]]:
        out: dict[str, tuple[str, _Item]] = {}
        for (pair, key), item in items.items():
            if item.confirmed and item.rate is not None and (
                    pair not in out or item.rate.value > out[pair][1].rate.value):
                out[pair] = (key, item)
        return out

    ba, bb = best(ia), best(ib)
    rows = []
    for pair in list(ba) + [p for p in bb if p not in ba]:
        a, b = ba.get(pair), bb.get(pair)
        ra, rb = (a[1].rate if a else None), (b[1].rate if b else None)
        status = "only_a" if b is None else "only_b" if a is None else _status(ra, rb, tolerance)
        rows.append(FindingChange(pair, BEST, status, a is not None, b is not None, ra, rb,
                                  _label(a), _label(b)))
    return rows


def _label(best: tuple[str, _Item] | None) -> str | None:
    if best is None:
        return None
    key, item = best
    return f"{key}: {item.statement}" if item.statement else key


def render_diff(result: DiffResult, out_dir: str | os.PathLike | None = None) -> str:
    """The diff as one offline HTML page (escaped; no script; links to both runs' reports)."""
    from markupsafe import Markup

    from .report.writer import _environment

    def link(run: str) -> str | None:
        page = Path(run) / "index.html" if Path(run).is_dir() else Path(run).with_name("index.html")
        if not page.is_file():
            return None
        return os.path.relpath(page, Path(out_dir)) if out_dir is not None else page.resolve().as_uri()

    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'"
    return _environment().get_template("diff.html").render(
        d=result, csp=Markup(csp), link_a=link(result.run_a), link_b=link(result.run_b))


def write_diff(result: DiffResult, out_dir: str | os.PathLike) -> Path:
    """Write `diff.json` and `index.html` into `out_dir`, each atomically; returns the page's path."""
    from .artifacts import write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DebugAtlasError(f"`--out {str(out)!r}` is a file. HINT: pass a folder for diff.json and index.html.")
    write_text(out / "diff.json", json.dumps(result.to_dict(), indent=1, allow_nan=False))
    return write_text(out / "index.html", render_diff(result, out))

