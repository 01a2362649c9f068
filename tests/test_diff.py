"""`debugatlas diff`: pairs, findings and flip-rate intervals compared between two run directories."""
from __future__ import annotations

import json

import _records as records
import pytest

from debugatlas.cli import main
from debugatlas.core.errors import DebugAtlasError
from debugatlas.diff import BEST, diff_runs, write_diff
from debugatlas.patches.stats import wilson_interval


def _patch(pid, rate, n=40, placement="static", verdict=None, ci=None):
    return records.patch_row(pid, rate, n=n, placement=placement, verdict=verdict, ci=ci)


def _finding(pid, rate, ci):
    return records.finding(pid, rate, ci)


def _run(tmp_path, name, pairs, accuracy=0.9, classes=("a", "b", "c")):
    run = tmp_path / name
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(records.run(pairs, accuracy=accuracy, classes=classes)))
    return run


def _pair(a, b, confused, patches=(), findings=()):
    return records.pair(a, b, confused, patches, findings)


def test_worse_confirmed_finding_fails_and_tolerance_lets_it_pass(tmp_path, capsys):
    a = _run(tmp_path, "a", [_pair("a", "b", 4, [_patch("c1-2", 0.3, verdict="confirmed", ci=[0.2, 0.4])],
                                   [_finding("c1-2", 0.3, [0.2, 0.4])])], accuracy=0.90)
    b = _run(tmp_path, "b", [_pair("a", "b", 9, [_patch("c1-2", 0.7, verdict="confirmed", ci=[0.6, 0.8])],
                                   [_finding("c1-2", 0.7, [0.6, 0.8])])], accuracy=0.85)
    result = diff_runs(a, b)
    best, change = result.findings  # the pair's best confirmed finding first, then the patch
    assert (best.key, best.status, best.rate_b) == (BEST, "worse", change.rate_b)
    assert (change.pair, change.key, change.status) == ("a -> b", "c1-2 (static)", "worse")
    assert change.change == pytest.approx(0.4)
    assert result.accuracy_change == pytest.approx(-0.05)
    assert result.pairs[0].status == "kept" and (result.pairs[0].confused_a, result.pairs[0].confused_b) == (4, 9)
    assert not result.passed and result.failures == (change,)  # counted once, on the patch
    assert main(["diff", str(a), str(b)]) == 1
    assert "FAIL a -> b c1-2 (static)" in capsys.readouterr().out
    # the gap between the intervals is 0.6 - 0.4 = 0.2: a tolerance of 0.25 covers it, 0.15 does not
    assert main(["diff", str(a), str(b), "--tolerance", "0.25"]) == 0
    assert main(["diff", str(a), str(b), "--tolerance", "0.15"]) == 1
    # the other way round the finding got better
    assert [f.status for f in diff_runs(b, a).findings] == ["better", "better"]
    assert main(["diff", str(b), str(a)]) == 0


def test_wilson_interval_used_when_the_summary_has_none(tmp_path):
    a = _run(tmp_path, "a", [_pair("a", "b", 2, [_patch("p", 0.5, n=10, verdict="confirmed")])])
    b = _run(tmp_path, "b", [_pair("a", "b", 2, [_patch("p", 0.95, n=20, verdict="confirmed")])])
    _, change = diff_runs(a, b).findings
    # 5 of 10: (0.5 ± 1.96·sqrt(0.025 + 0.0096)) / 1.384, by hand
    assert (change.rate_a.lo, change.rate_a.hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert change.rate_b.lo == pytest.approx(wilson_interval(19, 20)[0])
    assert change.status == "worse"  # 0.7639 (B's lower bound) > 0.7634 (A's upper bound)


def test_best_confirmed_finding_compares_checkpoints_whose_cells_differ(tmp_path):
    a = _run(tmp_path, "a", [_pair("a", "b", 3, [_patch("c1-2", 0.3, verdict="confirmed", ci=[0.2, 0.4]),
                                                 _patch("c4-4", 0.1, verdict="confirmed", ci=[0.05, 0.2])])])
    b = _run(tmp_path, "b", [_pair("a", "b", 3, [_patch("c9-9", 0.8, verdict="confirmed", ci=[0.7, 0.9])])])
    result = diff_runs(a, b)
    best = result.findings[0]
    assert (best.key, best.status) == (BEST, "worse")
    assert (best.rate_a.value, best.rate_b.value) == (0.3, 0.8)  # A's strongest of its two, B's one
    assert best.statement_a == "c1-2 (static)" and best.statement_b == "c9-9 (static)"
    assert {f.key: f.status for f in result.findings[1:]} == {"c1-2 (static)": "only_a", "c4-4 (static)": "only_a",
                                                              "c9-9 (static)": "only_b"}
    assert result.failures == (best,)
    assert diff_runs(a, b, tolerance=0.35).passed  # the gap 0.7 - 0.4 = 0.3 is within 0.35


def test_overlapping_intervals_are_not_a_regression(tmp_path):
    a = _run(tmp_path, "a", [_pair("a", "b", 2, [_patch("p", 0.4, n=10, verdict="confirmed")])])
    b = _run(tmp_path, "b", [_pair("a", "b", 2, [_patch("p", 0.6, n=10, verdict="confirmed")])])
    result = diff_runs(a, b)
    assert result.findings[0].status == "within" and result.passed


def test_pairs_and_findings_that_appear_or_go_away(tmp_path):
    a = _run(tmp_path, "a", [_pair("a", "b", 3, [_patch("p", 0.2, verdict="not_confirmed")]),
                             _pair("c", "a", 5, [_patch("q", 0.5, verdict="confirmed")])])
    b = _run(tmp_path, "b", [_pair("a", "b", 3, [_patch("p", 0.2, verdict="confirmed"), _patch("new", 0.3)]),
                             _pair("b", "c", 1)])
    result = diff_runs(a, b)
    assert [(p.a, p.b, p.status) for p in result.pairs] == [("a", "b", "kept"), ("c", "a", "went_away"),
                                                            ("b", "c", "appeared")]
    by_key = {(f.pair, f.key): f for f in result.findings}
    assert by_key[("c -> a", "q (static)")].status == "only_a" and by_key[("c -> a", "q (static)")].confirmed_a
    assert by_key[("a -> b", "new (static)")].status == "only_b" and not by_key[("a -> b", "new (static)")].is_finding
    newly = by_key[("a -> b", "p (static)")]
    assert (newly.confirmed_a, newly.confirmed_b, newly.status) == (False, True, "within")
    assert result.passed  # nothing measured in both got worse
    assert not diff_runs(a, b, fail_on_new=True).passed  # B confirms p, which A did not
    assert main(["diff", str(a), str(b), "--fail-on-new"]) == 1


def test_findings_key_to_their_patch_and_placement(tmp_path):
    patches = [_patch("c1-2", 0.2, placement="static", verdict="not_confirmed"),
               _patch("c1-2", 0.6, placement="dynamic", verdict="confirmed")]
    finding = records.finding("c1-2", 0.6, None, placement="dynamic")  # no interval: Wilson's from its 40 images
    a = _run(tmp_path, "a", [_pair("a", "b", 3, patches, [finding])])
    result = diff_runs(a, a)
    by_key = {f.key: f for f in result.findings}
    assert by_key["c1-2 (dynamic)"].confirmed_a and not by_key["c1-2 (static)"].confirmed_a
    assert by_key["c1-2 (dynamic)"].rate_a.n_images == 40
    assert by_key["c1-2 (dynamic)"].rate_a.lo == pytest.approx(wilson_interval(24, 40)[0])
    assert all(f.status == "within" for f in result.findings) and result.passed


def test_writes_escaped_offline_html_and_json(tmp_path):
    evil = "<script>alert(1)</script>"
    a = _run(tmp_path, "a", [_pair(evil, "b", 3, [_patch("p", 0.1, verdict="confirmed", ci=[0.05, 0.2])])],
             classes=(evil, "b"))
    b = _run(tmp_path, "b", [_pair(evil, "b", 3, [_patch("p", 0.9, verdict="confirmed", ci=[0.8, 0.95])])],
             classes=(evil, "b"))
    (a / "index.html").write_text("<html></html>")
    out = tmp_path / "diff"
    assert main(["diff", str(a), str(b), "--out", str(out)]) == 1
    page = (out / "index.html").read_text()
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page and 'href="../a/index.html"' in page
    data = json.loads((out / "diff.json").read_text())
    assert data["passed"] is False and data["num_failed"] == 1
    row = data["findings"][1]
    assert row["key"] == "p (static)" and row["failed"] is True and data["findings"][0]["key"] == BEST
    assert row["rate_b"] == {"value": 0.9, "lo": 0.8, "hi": 0.95, "n_images": 40}
    assert sorted(p.name for p in out.iterdir()) == ["diff.json", "index.html"]  # no temporary files left


def test_bad_input_exits_2(tmp_path, capsys):
    good = _run(tmp_path, "good", [])
    assert main(["diff", str(tmp_path / "missing"), str(good)]) == 2
    assert "does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    assert main(["diff", str(broken), str(good)]) == 2
    future = tmp_path / "future"
    future.mkdir()
    (future / "summary.json").write_text(json.dumps({"schema_version": 2, "pairs": []}))
    assert main(["diff", str(future), str(good)]) == 2
    assert "schema_version 2" in capsys.readouterr().err
    assert main(["diff", str(good)]) == 2  # usage error
    with pytest.raises(DebugAtlasError, match="tolerance"):
        diff_runs(good, good, tolerance=-0.1)


def test_summaries_without_verdicts_say_so(tmp_path):
    a = _run(tmp_path, "a", [_pair("a", "b", 3, [_patch("p", 0.1)])])
    b = _run(tmp_path, "b", [_pair("a", "b", 3, [_patch("p", 0.9)])], classes=("a", "b"))
    result = diff_runs(a, b)
    assert result.passed and result.findings[0].status == "worse" and not result.findings[0].is_finding
    assert any("no finding counts as confirmed" in n for n in result.notes)
    assert any("differ in classes" in n for n in result.notes)


@pytest.mark.slow
def test_diff_of_two_real_runs(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b", "c")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 128, (24, 24, 3))
            pixels[..., k] += 127
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    fast = [x for o in ("layout=pca", "render=false", "patches=false", "grid_size=4", "grid_sizes=4",
                        "n_examples=0") for x in ("--option", o)]
    for run, width in (("run_a", 4), ("run_b", 6)):
        assert main(["analyze", "--model", "debugatlas.models:SmallCNN", "--model-args", "in_channels=3",
                     "num_classes=3", f"width={width}", "--data", str(tmp_path / "data"), "--layer", "layer2",
                     "--out", str(tmp_path / run), *fast]) == 0
    assert main(["diff", str(tmp_path / "run_a"), str(tmp_path / "run_b"), "--out", str(tmp_path / "d")]) == 0
    data = json.loads((tmp_path / "d" / "diff.json").read_text())
    sa, sb = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("run_a", "run_b"))
    assert data["accuracy"]["change"] == pytest.approx(sb["accuracy"] - sa["accuracy"])
    pairs_a = {(p["a"], p["b"]) for p in sa["pairs"]}
    pairs_b = {(p["a"], p["b"]) for p in sb["pairs"]}
    assert {(p["a"], p["b"]) for p in data["pairs"] if p["status"] == "appeared"} == pairs_b - pairs_a
    assert {(p["a"], p["b"]) for p in data["pairs"] if p["status"] == "went_away"} == pairs_a - pairs_b
    assert 'href="../run_a/index.html"' in (tmp_path / "d" / "index.html").read_text()
