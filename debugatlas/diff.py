"""What changed between two run directories: `debugatlas diff RUN_A RUN_B`.

Reads each run's summary.json (schema 1) and compares: the pairs studied (appeared, went away,
confusions), every patch measured in either run matched by (pair, patch id, placement), which of
them are confirmed findings in each run, their flip rates with 95 % intervals (`flip_rate_ci` when
the summary has one, else `patches.stats.wilson_interval` from `flip_rate` and `n_images`), and the accuracy.

A finding *got worse* when it is confirmed in either run and B's interval lies above A's by more
than `tolerance` (B's lower bound minus A's upper bound > tolerance); *better* the other way round.
Each pair also gets a row "best confirmed finding": its strongest confirmed finding in A against
the one in B, whichever patch each is (two checkpoints lay their atlases out differently, so their
patch ids rarely match), judged by the same rule.
`DiffResult.passed` is False when one got worse (and, with `fail_on_new`, when B confirms a finding
A does not). `diff_runs` only reads; `write_diff` writes `diff.json` and `index.html` atomically.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

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


def read_run(path: str | os.PathLike) -> dict:
    """A run's summary.json (the run directory or the file), with a `pairs` list."""
    from .artifacts.summary import read_summary

    summary = read_summary(path)
    if not isinstance(summary.get("pairs", []), list):
        raise DebugAtlasError(f"The summary at {str(path)!r} has no `pairs` list. HINT: pass a run directory "
                              "written by `debugatlas analyze` or AtlasCallback.")
    return summary


@dataclass(frozen=True)
class _Item:
    rate: Rate | None
    confirmed: bool
    statement: str | None


def _rate(entry: Mapping, fallback_n: int | None = None) -> Rate | None:
    value = entry.get("flip_rate")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        return None
    n = entry.get("n_images", fallback_n)
    n = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else None
    ci = entry.get("flip_rate_ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        lo, hi = float(ci[0]), float(ci[1])
    elif n:
        from .patches.stats import wilson_interval

        lo, hi = wilson_interval(round(float(value) * n), n)
    else:
        lo = hi = float(value)
    return Rate(float(value), lo, hi, n)


def _patch_id(finding: Mapping) -> str | None:
    patch = finding.get("patch")
    if isinstance(patch, Mapping):
        patch = patch.get("id")
    return str(patch) if patch is not None else None


def _items(summary: Mapping) -> dict[tuple[str, str], _Item]:
    """(pair "A -> B", key) -> what the run measured; key is "patch id (placement)" or "cell [i, j]"."""
    items: dict[tuple[str, str], _Item] = {}
    for pair in summary.get("pairs", []):
        name = f"{pair.get('a')} -> {pair.get('b')}"
        patches = [p for p in pair.get("patches", []) or [] if isinstance(p, Mapping)]
        for p in patches:
            key = f"{p.get('id')} ({p.get('placement', 'static')})"
            items[(name, key)] = _Item(_rate(p), p.get("verdict") == "confirmed", None)
        for f in pair.get("findings", []) or []:
            if not isinstance(f, Mapping):
                continue
            pid = _patch_id(f)
            same = [p for p in patches if pid is not None and str(p.get("id")) == pid]
            if f.get("placement") is not None:
                same = [p for p in same if p.get("placement") == f.get("placement")]
            if len(same) > 1:  # the finding's own placement: the one with its flip rate
                same = [p for p in same if p.get("flip_rate") == f.get("flip_rate")][:1] or same[:1]
            if same:
                key = f"{pid} ({same[0].get('placement', 'static')})"
                rate = _rate(f, same[0].get("n_images")) or _rate(same[0])
            else:
                key = f"{pid}" if pid is not None else f"cell {list(f.get('cell') or [])}"
                rate = _rate(f)
            items[(name, key)] = _Item(rate, True, f.get("statement"))
    return items


def _pairs(sa: Mapping, sb: Mapping) -> tuple[PairChange, ...]:
    def index(summary: Mapping) -> dict[tuple[str, str], Mapping]:
        return {(str(p.get("a")), str(p.get("b"))): p for p in summary.get("pairs", []) if isinstance(p, Mapping)}

    ia, ib = index(sa), index(sb)
    out = []
    for key in list(ia) + [k for k in ib if k not in ia]:
        pa, pb = ia.get(key), ib.get(key)
        out.append(PairChange(key[0], key[1], _confused(pa), _confused(pb),
                              str(pa.get("kind", "confused")) if pa else None,
                              str(pb.get("kind", "confused")) if pb else None))
    return tuple(out)


def _confused(pair: Mapping | None) -> int | None:
    if pair is None:
        return None
    value = pair.get("confused", 0)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _status(a: Rate | None, b: Rate | None, tolerance: float) -> str:
    if a is None:
        return "only_b"
    if b is None:
        return "only_a"
    if b.lo - a.hi > tolerance:
        return "worse"
    if a.lo - b.hi > tolerance:
        return "better"
    return "within"


def diff_runs(run_a: str | os.PathLike, run_b: str | os.PathLike, *, tolerance: float = 0.0,
              fail_on_new: bool = False) -> DiffResult:
    """Compare run B (later) with run A (earlier); see the module docstring for the rules."""
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not 0.0 <= tolerance <= 1.0:
        raise DebugAtlasError(f"`tolerance={tolerance!r}` must be a rate in [0, 1]. HINT: e.g. 0.05.")
    sa, sb = read_run(run_a), read_run(run_b)
    notes = []
    for field_name in ("layer", "classes"):
        if sa.get(field_name) != sb.get(field_name):
            notes.append(f"the runs differ in {field_name}: {sa.get(field_name)!r} vs {sb.get(field_name)!r}")
    if not any("findings" in p or any("verdict" in q for q in p.get("patches", []) or [])
               for s in (sa, sb) for p in s.get("pairs", [])):
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
    return DiffResult(str(run_a), str(run_b), float(tolerance), bool(fail_on_new), _accuracy(sa), _accuracy(sb),
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


def _accuracy(summary: Mapping) -> float | None:
    value = summary.get("accuracy")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return float(value) if ok else None


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

