"""The run record: schema checks, a written summary read back byte for byte, the previous
version's file, the shared rules, and every reader agreeing on the confirmed findings of a run."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _records import complete, finding, pair, patch_row, run

from debugatlas.artifacts.record import (RunRecord, gate, is_confirmed, margin, rate_interval, sentence)
from debugatlas.artifacts.summary import dumps, read_summary
from debugatlas.core.errors import DebugAtlasError
from debugatlas.patches.stats import wilson_interval

DATA = Path(__file__).parent / "data"


def test_the_rules_have_one_definition():
    assert is_confirmed("confirmed") and not is_confirmed("natural") and not is_confirmed(None)
    assert margin(0.6, 0.1, 0.25) == pytest.approx(0.35)
    assert margin(0.6, None, 0.25) == pytest.approx(0.35) and margin(0.6, float("nan"), 0.2) == pytest.approx(0.4)
    assert margin(0.6, None, None) is None and margin(None, 0.1, 0.1) is None and margin(float("nan"), 0, 0) is None
    assert rate_interval(0.25, 40, [0.1, 0.4]) == (0.1, 0.4)
    assert rate_interval(0.25, 40) == pytest.approx(wilson_interval(10, 40))
    assert rate_interval(0.25, None) == (0.25, 0.25) and rate_interval(None, 40) is None
    assert gate((0.5, 0.7), (0.2, 0.4), 0.05) == "above" and gate((0.5, 0.7), (0.2, 0.46), 0.05) == "within"
    assert gate((0.1, 0.2), (0.3, 0.5), 0.05) == "below" and gate((0.1, 0.25), (0.3, 0.5), 0.05) == "within"
    assert sentence("2", "3", 0.41, (0.33, 0.49), 0.02, 0.09, 60, "random") == (
        "Pasting this feature on images of 2 makes the model say 3 in 41 % of them [33–49 %], against 2 % for "
        "noise and 9 % for a crop of a real 3 (60 held-out images, random placement).")
    assert sentence("a", "b", 0.5, None, None, 0.25) == (
        "Pasting this feature on images of a makes the model say b in 50 % of them, "
        "against 25 % for a crop of a real b.")
    assert sentence("a", "b", None, None, 0.1, 0.1) == (
        "Pasting this feature on images of a makes the model say b (rate not recorded).")


def test_a_record_says_what_is_wrong_with_a_file(tmp_path):
    good = complete({"pairs": [{"a": "a", "b": "b", "patches": [{"id": "p", "flip_rate": 0.5}]}]})
    assert RunRecord.from_dict(good).to_dict() == good
    cases = [({"schema_version": 2}, "schema_version 2; this debugatlas reads 1"),
             ({"num_images": None}, "`num_images` is None; expected a whole number"),
             ({"classes": "abc"}, "`classes` is str; expected a list")]
    for change, message in cases:
        with pytest.raises(DebugAtlasError, match=re.escape(message)):
            RunRecord.from_dict({**good, **change})
    broken = json.loads(json.dumps(good))
    del broken["pairs"][0]["patches"][0]["n_images"]
    (tmp_path / "summary.json").write_text(json.dumps(broken))
    with pytest.raises(DebugAtlasError, match=r"summary.json': summary.json field `pairs\[0\].patches\[0\].n_images` "
                                              r"is missing. HINT: rerun the analysis"):
        read_summary(tmp_path)


def test_keys_this_version_does_not_know_are_kept():
    raw = complete({"pairs": [{"a": "a", "b": "b", "depth": [1, 2]}], "layers": [{"layer": "x"}]})
    record = RunRecord.from_dict(raw)
    assert record.extra == {"layers": [{"layer": "x"}]} and record.pairs[0].extra == {"depth": [1, 2]}
    assert dumps(record) == dumps(raw)


@pytest.mark.parametrize("name", ["summary_schema1_previous.json", "expected_summary.json"])
def test_summaries_of_this_and_the_previous_version_load(name):
    """summary_schema1_previous.json was written before the cost in W and the findings' sources
    were recorded: the fields schema 1 gained since take their defaults."""
    raw = json.loads((DATA / name).read_text())
    record = read_summary(DATA / name)
    assert len(record.pairs) == 2 and record.classes == tuple(str(d) for d in range(10))
    assert json.dumps(record.to_dict(), sort_keys=True) == json.dumps(raw, sort_keys=True)
    if name.endswith("previous.json"):
        assert record.cost_w is None and "cost_w" not in record.to_dict()


@pytest.fixture(scope="module")
def shortcut_run(demo_run):
    """The shortcut demo: a run with confirmed findings, one of them a suspected shortcut."""
    return demo_run("shortcut")


def test_a_written_summary_loaded_and_dumped_is_byte_identical(shortcut_run):
    out, result = shortcut_run
    text = (out / "summary.json").read_text(encoding="utf-8")
    assert dumps(read_summary(out)) == text == dumps(result.record)
    assert result.summary == json.loads(text)


def test_diff_timeline_loggers_and_report_agree_on_the_confirmed_findings(shortcut_run):
    from debugatlas.diff import BEST, diff_runs
    from debugatlas.lightning.loggers import scalar_metrics
    from debugatlas.report.timeline import pair_outcomes

    out, _ = shortcut_run
    record = read_summary(out)
    expected = {f"{p.a}→{p.b}": sorted(f"{f.patch} ({f.placement})" for f in p.confirmed) for p in record.pairs}
    assert sum(map(len, expected.values())) > 0

    diffed = diff_runs(out, out)
    from_diff = {name.replace(" -> ", "→"): [] for name in (p.name for p in record.pairs)}
    for change in diffed.findings:
        if change.key != BEST and change.statement_a is not None:
            from_diff[change.pair.replace(" -> ", "→")].append(change.key)
    assert {k: sorted(v) for k, v in from_diff.items()} == expected

    timeline = {o.name: o.confirmed for o in pair_outcomes(record)}
    metrics = scalar_metrics(record)
    logged = {name: int(metrics[f"atlas/{name}/confirmed_findings"]) for name in expected}
    html = (out / "index.html").read_text(encoding="utf-8")
    section = html[html.index('<section id="findings"'):html.index("</section>", html.index('<section id="findings"'))]
    on_page = {f"{p.a}→{p.b}": section.count(f'href="#pair-{k}">') - 1  # the pair's own heading links too
               for k, p in enumerate(record.pairs, start=1)}
    counts = {name: len(keys) for name, keys in expected.items()}
    assert timeline == logged == on_page == counts
    assert metrics["atlas/confirmed_findings"] == sum(counts.values())


def test_a_finding_row_is_its_confirmed_patch():
    record = RunRecord.from_dict(run([pair("a", "b", 2, [patch_row("p", 0.6, placement="random", verdict="confirmed",
                                                                   ci=[0.5, 0.7])],
                                          [finding("p", 0.6, [0.5, 0.7], placement="random")])]))
    (p,) = record.pairs
    assert p.patch_row(p.findings[0]).confirmed and p.best_finding() is p.findings[0]
    assert p.findings[0].interval == p.patches[0].interval == (0.5, 0.7)
    assert p.findings[0].margin == pytest.approx(0.55)
