"""The run timeline: what it reads from run records (findings, margins, None rates), the page's
escaping, links, gaps and policy, and its atomic write."""
from __future__ import annotations

import html as html_lib
import re

import _records as records
import pytest

from debugatlas.artifacts.record import RunRecord

from debugatlas.report.timeline import (PairOutcome, epoch_entry, pair_outcomes, relative_href, render_timeline,
                                        write_timeline)


def _pair(a="grid", b="stripes", confused=12, patches=(), findings=()):
    return records.pair(a, b, confused, patches, findings)


PATCHES = [records.patch_row("p1", 0.62, noise_flip_rate=0.05, natural_flip_rate=0.20, verdict="confirmed"),
           records.patch_row("p2", 0.70, noise_flip_rate=0.65, natural_flip_rate=0.10, verdict="natural"),
           records.patch_row("p3", None, noise_flip_rate=None, natural_flip_rate=None)]


def _record(pairs, accuracy=0.9):
    return RunRecord.from_dict(records.run(pairs, accuracy=accuracy))


def test_outcomes_count_the_findings_and_take_the_margin_over_the_larger_control():
    findings = [records.finding("p1", 0.62, None, noise_flip_rate=0.05, natural_flip_rate=0.20),
                records.finding("p4", 0.55, None, noise_flip_rate=0.01, natural_flip_rate=0.02)]
    (o,) = pair_outcomes(_record([_pair(patches=PATCHES, findings=findings)]))
    # the best confirmed is p1: margin 0.62 - max(0.05, 0.20) = 0.42; the best patch of any verdict p2
    assert o == PairOutcome("grid", "stripes", 12, 2, 0.70, 0.62, pytest.approx(0.42))
    assert o.name == "grid→stripes"


def test_confirmed_findings_are_the_findings_not_the_confirmed_patch_rows():
    (o,) = pair_outcomes(_record([_pair(patches=PATCHES)]))
    assert (o.confirmed, o.confirmed_flip_rate, o.confirmed_margin, o.best_flip_rate) == (0, None, None, 0.70)


def test_missing_rates_are_none_never_zero():
    none_only = [records.patch_row("p", None, noise_flip_rate=None, natural_flip_rate=None)]
    record = _record([_pair(patches=none_only, findings=[records.finding("p", None, None)]),
                      _pair(a="a", b="b", confused=0, patches=[records.patch_row("q", float("nan"))])])
    first, second = pair_outcomes(record)
    assert (first.best_flip_rate, first.confirmed, first.confirmed_flip_rate, first.confirmed_margin) == (
        None, 1, None, None)
    assert (second.confused, second.best_flip_rate) == (0, None)
    assert pair_outcomes(_record([])) == []


P1 = records.finding("p1", 0.62, None, noise_flip_rate=0.05, natural_flip_rate=0.20)


def _entries():
    s0 = _record([_pair(confused=40, patches=[PATCHES[2]])], accuracy=0.3)
    s1 = _record([_pair(confused=25, patches=PATCHES[:2], findings=[P1]),
                  _pair(a="<script>alert(1)</script>", b="b&c", confused=3)], accuracy=0.7)
    s2 = _record([_pair(confused=10, patches=PATCHES[:1], findings=[P1])],
                 accuracy=0.9)
    return [epoch_entry(s2, 2, "epoch_2/index.html"), epoch_entry(s0, 0, "epoch_0/index.html"),
            epoch_entry(s1, 1, "epoch_1/index.html")]


def test_page_plots_each_pair_over_the_epochs_with_gaps_and_links():
    html = render_timeline(_entries(), title="run <1>")
    assert re.findall(r'<a href="(epoch_\d/index.html)">epoch', html) == [
        "epoch_0/index.html", "epoch_1/index.html", "epoch_2/index.html"]  # sorted by epoch
    grid = html[html.index("<h2>grid → stripes</h2>"):]
    grid = grid[:grid.index("</section>")]
    lines = re.findall(r'<polyline points="([^"]+)"', grid)
    confused = [tuple(map(float, p.split(","))) for p in lines[0].split()]
    # confusions 40, 25, 10 on a 0..40 axis: three points, left to right, falling
    assert len(confused) == 3 and confused[0][0] < confused[1][0] < confused[2][0]
    assert confused[0][1] < confused[1][1] < confused[2][1]
    assert (confused[1][1] - confused[0][1]) == pytest.approx(confused[2][1] - confused[1][1], abs=0.2)
    # the confirmed flip rate is missing at epoch 0: its line starts at epoch 1
    confirmed = lines[-1].split()
    assert len(confirmed) == 2 and float(confirmed[0].split(",")[0]) == confused[1][0]
    assert "62.0 %" in grid and "+42.0 pts" in grid and "—" in grid
    other = html[html.index("&lt;script&gt;alert(1)&lt;/script&gt; → b&amp;c"):]
    assert other.count("not among the analysed pairs") == 2
    assert "<script" not in html and "run &lt;1&gt;" in html


def test_page_denies_scripts_and_network_and_links_only_inside_the_run():
    entries = _entries()
    entries[0]["href"] = "javascript:alert(1)"
    entries[1]["href"] = "../../etc/passwd"
    html = render_timeline(entries)
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    csp = html_lib.unescape(csp)
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert "javascript:" not in html and "passwd" not in html
    # only epoch 1 keeps its link: in the epoch table and in the rows of its two pairs
    assert re.findall(r'href="([^"]+)"', html) == ["epoch_1/index.html"] * 3


def test_relative_href_and_atomic_write(tmp_path):
    assert relative_href(tmp_path / "atlas" / "epoch_3", tmp_path / "atlas") == "epoch_3/index.html"
    assert relative_href(tmp_path / "elsewhere", tmp_path / "atlas") is None
    path = write_timeline(tmp_path / "atlas", _entries(), title="t")
    assert path == tmp_path / "atlas" / "index.html" and path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in path.parent.iterdir()] == ["index.html"]  # no temporary file left
    assert render_timeline([]).count("No epoch has been analysed yet") == 1


def test_a_failed_epoch_is_listed_with_its_cause_and_is_a_gap_in_every_plot():
    from debugatlas.report.timeline import failed_entry

    entries = _entries()
    entries[2] = failed_entry(1, "TypeError: analyze() got <two> values", "pass each option once")
    html = render_timeline(entries)
    assert "3 analysed epochs, 1 failed" in html
    row = re.search(r'<tr class="failed">(.*?)</tr>', html, re.S).group(1)
    assert "<td>1</td>" in row and "analysis failed: TypeError: analyze() got &lt;two&gt; values" in row
    assert "HINT: pass each option once" in row
    grid = html[html.index("<h2>grid → stripes</h2>"):]
    grid = grid[:grid.index("</section>")]
    assert grid.count("analysis failed") == 1 and "not among the analysed pairs" not in grid
    confused = re.findall(r'<polyline points="([^"]+)"', grid)[0]
    assert len(confused.split()) == 1  # epochs 0 and 2 with a gap at the failed epoch between them
    assert re.findall(r'href="([^"]+)"', html) == ["epoch_0/index.html", "epoch_2/index.html"] * 2
    assert failed_entry(3, "x")["pairs"] == [] and render_timeline([failed_entry(3, "x")]).count("analysis failed") == 1
