"""The CI gate: check_suite rows and limits, report formats, and `debugatlas check` exit codes."""
from __future__ import annotations

import copy
import dataclasses
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from _planted import train_until_learned
from _records import pair, run, suite_baseline
from PIL import Image
from torch import nn

from debugatlas.core import DebugAtlasError
from debugatlas.core import load_images
from debugatlas.check import assert_suite_holds, check_suite
from debugatlas.cli import check_main as main
from debugatlas.data import PlantedShortcut, TensorImageDataset, digits, image_folder
from debugatlas.models import small_digits_cnn, train_classifier
from debugatlas.patches import Experiment, KeepRule, Patch, to_uint8
from debugatlas.patches.stats import judge_evaluation, wilson_interval
from debugatlas.patches.suite import PatchSuite, build_suite


class RegionModel(nn.Module):
    """logits = [0.5, scale * mean(x[..., 4:, 4:]), -1] for classes a, b, c."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        region = x[:, :, 4:, 4:].mean((1, 2, 3)) * self.scale
        return torch.stack([torch.full_like(region, 0.5), region, torch.full_like(region, -1.0)], 1)


def region_dataset() -> TensorImageDataset:
    values = [0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.0, 0.0, 0.0]  # class a; 0.6 and 0.7 predicted b
    images = torch.zeros(13, 1, 8, 8)
    for k, v in enumerate(values):
        images[k, :, 4:, 4:] = v
    images[10:, :, 4:, 4:] = 0.9  # class b
    return TensorImageDataset(images, [0] * 10 + [1] * 3, ["a", "b", "c"])


@pytest.fixture(scope="module")
def region_suite():
    data = region_dataset()
    patches = [Patch("white2", None, "icon", torch.ones(1, 2, 2), resize=False),
               Patch("white-r", (3, 4), "icon", torch.ones(1, 1, 1), resize=True)]
    suite = build_suite(RegionModel(), data.images[:10], patches, Experiment(0, 1, sizes=(0.25, 0.5), n_random=4),
                        class_names=data.classes, images_b=data.images[10:], keep=KeepRule(None))
    return suite, data


def test_same_model_passes_with_default_rule(region_suite):
    suite, data = region_suite
    model = RegionModel().train()
    report = check_suite(suite, model, data)
    assert report.passed and report.failures == []
    names = [row.name for row in report.rows]
    assert names[0] == "accuracy" and names[-1] == "a->b confusion"
    assert len(report.rows) == 1 + 2 * 3 + 1
    flip = {row.name: row for row in report.rows if row.kind == "flip_rate"}
    dyn = flip["a->b white-r dynamic"]
    assert dyn.measured == 1.0 and dyn.limit == pytest.approx(1.05)
    assert report.rows[0].measured == pytest.approx(11 / 13) and report.rows[-1].measured == pytest.approx(0.2)
    assert model.training and model.scale.requires_grad
    assert all(not m._forward_hooks for m in model.modules())


def test_limits_fail_and_report_formats(region_suite):
    suite, data = region_suite
    report = check_suite(suite, RegionModel(), data, max_flip_rate=0.5, min_accuracy=0.9, max_confusion=0.1)
    assert not report.passed
    failed = {row.name for row in report.failures}
    assert failed == {"accuracy", "a->b confusion", "a->b white-r dynamic"}
    table = report.table()
    lines = table.splitlines()
    assert lines[0].startswith("check") and "FAILED: 5 of 8 checks hold" == lines[-1]
    assert all(name in table for name in failed) and table.count("FAIL") == 3 + 1
    end = lines[0].index("measured") + len("measured")  # right-aligned numbers end in one column
    assert all(line[end - 1] != " " and line[end] == " " for line in lines[2:-1])
    root = ET.fromstring(report.to_junit_xml())
    cases = root.findall(".//testcase")
    assert root.tag == "testsuites" and len(cases) == 8 and root.get("failures") == "3"
    assert {c.get("name") for c in cases if c.find("failure") is not None} == failed
    data_out = json.loads(json.dumps(report.to_dict()))
    assert data_out["passed"] is False and data_out["num_failed"] == 3 and len(data_out["checks"]) == 8
    with pytest.raises(AssertionError, match="FAILED: 5 of 8"):
        assert_suite_holds(suite, RegionModel(), data, max_flip_rate=0.5, min_accuracy=0.9, max_confusion=0.1)
    assert assert_suite_holds(suite, RegionModel(), data).passed


def test_regressed_model_fails_against_baseline(region_suite):
    suite, data = region_suite
    summary = suite_baseline(suite, data.classes, accuracy=11 / 13, num_images=13,
                             confusion_matrix=[[8, 2, 0], [0, 3, 0], [0, 0, 0]])
    assert check_suite(suite, RegionModel(), data, baseline=summary).passed
    small = check_suite(suite, RegionModel(scale=10), data, baseline=summary)
    # scale 10 reads every a with a region mean above 0.05 as b: 6 of 10 a ([0.31-0.83]) and
    # accuracy 7 / 13; measured on 10 and 13 images, neither interval clears the baseline's + 0.05
    assert small.passed
    rows = {row.name: row for row in small.rows}
    assert rows["a->b confusion"].measured == pytest.approx(0.6) and rows["accuracy"].measured == pytest.approx(7 / 13)
    big = dict(summary, accuracy=0.95, num_images=400, confusion_matrix=[[180, 20, 0], [0, 30, 0], [0, 0, 0]])
    report = check_suite(suite, RegionModel(scale=10), data, baseline=big)  # region evidence for b grows
    assert not report.passed
    rows = {row.name: row for row in report.rows}
    acc_lo, acc_hi = wilson_interval(380, 400)
    assert rows["accuracy"].limit == pytest.approx(acc_lo - 0.05) and wilson_interval(7, 13)[1] < acc_lo - 0.05
    assert not rows["accuracy"].passed and "interval lies below" in rows["accuracy"].message
    assert rows["a->b confusion"].limit == pytest.approx(wilson_interval(20, 200)[1] + 0.05)
    assert not rows["a->b confusion"].passed and "interval lies above" in rows["a->b confusion"].message
    for entry in summary["pairs"][0]["patches"]:
        entry.update(flip_rate=0.0, n_images=400, flip_rate_ci=None)
    lowered = check_suite(suite, RegionModel(), data, baseline=summary, tolerance=0.1)
    # a baseline of 0 / 400 has the interval [0, 0.0095]: a new rate fails when its own interval
    # (n = 5 counted images) starts above 0.0095 + 0.1
    expect = set()
    for r in lowered.runs[0].evaluation.candidates():
        if wilson_interval(r.flips, r.n_images)[0] > wilson_interval(0, 400)[1] + 0.1:
            expect.add(f"a->b {r.patch_id} {r.placement}")
    assert expect and {row.name for row in lowered.failures} == expect
    xml = ET.fromstring(lowered.to_junit_xml())
    assert all("95 % interval lies above" in f.get("message") for f in xml.iter("failure"))
    with pytest.raises(DebugAtlasError, match="no pair"):
        check_suite(suite, RegionModel(), data, baseline=run([pair("x", "y")], classes=data.classes))
    with pytest.raises(DebugAtlasError, match="not both"):
        check_suite(suite, RegionModel(), data, max_flip_rate=0.1, baseline=summary)
    with pytest.raises(DebugAtlasError, match="tolerance"):
        check_suite(suite, RegionModel(), data, tolerance=2.0)


def test_only_confirmed_findings_are_gated(region_suite):
    suite, data = region_suite
    judged = judge_evaluation(suite.baseline)
    # the large white square flips all 8 counted images under dynamic placement, and so does the
    # crop of a real b: "natural"; nothing else flips more than its controls
    assert judged.get("white-r", "dynamic").verdict == "natural"
    assert {r.verdict for r in judged.candidates()} == {"natural", "not_confirmed"}
    gated = copy.copy(suite)
    gated.baseline = dataclasses.replace(judged, results=[
        dataclasses.replace(r, verdict="confirmed") if r.patch_id == "white-r" and r.placement != "dynamic" else r
        for r in judged.results])
    report = check_suite(gated, RegionModel(scale=2.5), data, max_flip_rate=0.0)
    statuses = {row.name: row.status for row in report.rows if row.kind == "flip_rate"}
    assert statuses == {"a->b white-r static": "ok", "a->b white-r random": "failed",
                        "a->b white-r dynamic": "reported", "a->b white2 static": "reported",
                        "a->b white2 dynamic": "reported", "a->b white2 random": "reported"}
    reported = [row for row in report.rows if row.status == "reported"]
    assert all(row.passed and row.limit is None for row in reported)
    assert "not gated (baseline verdict natural)" in {r.name: r for r in reported}["a->b white-r dynamic"].message
    assert {row.name for row in report.failures} == {"a->b white-r random"}
    # an old suite (no verdicts) gates every patch, as before
    old = check_suite(suite, RegionModel(scale=2.5), data, max_flip_rate=0.0)
    assert all(r.status in ("ok", "failed") for r in old.rows if r.kind == "flip_rate")
    assert len(old.failures) > len(report.failures)


class NeverA(nn.Module):
    """Reads every image as b."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([0.0, 1.0, -1.0]).expand(len(x), 3) + self.w


def test_nothing_to_measure_is_its_own_status(region_suite):
    suite, data = region_suite
    report = check_suite(suite, NeverA(), data, max_confusion=1.0)
    assert report.passed
    rows = {row.name: row for row in report.rows}
    assert "a->b patches" in rows and not any(r.kind == "flip_rate" and r.name != "a->b patches" for r in report.rows)
    row = rows["a->b patches"]
    assert row.status == "nothing_to_measure" and "none of the 10 images of 'a'" in row.message
    assert rows["a->b confusion"].measured == 1.0
    assert "1 with nothing to measure" in report.table().splitlines()[-1]
    xml = ET.fromstring(report.to_junit_xml())
    assert xml.find("testsuite").get("skipped") == "1" and xml.find(".//skipped") is not None
    assert json.loads(json.dumps(report.to_dict()))["checks"][1]["status"] == "nothing_to_measure"
    # against the suite's own baseline (2 of 10 a read as b) the confusion check is what fails
    meta = copy.copy(suite)
    meta.metadata = {"accuracy": 11 / 13, "num_images": 13, "confusion_rate": 0.2, "num_a": 10}
    failed = check_suite(meta, NeverA(), data)
    assert {r.name for r in failed.failures} == {"accuracy", "a->b confusion"}


# -- the command line on a checkpoint with and without a planted trigger -------------------------
TARGET, A = 1, 4


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gate")
    shortcut = PlantedShortcut(target=TARGET, fraction=1.0, size=5)
    train, val = digits(size=24, shortcut=shortcut)
    clean_train, _ = digits(size=24)
    clean = train_classifier(small_digits_cnn(), clean_train, epochs=8, lr=2e-3, batch_size=16)
    torch.save(clean.state_dict(), root / "clean.pt")
    planted = train_until_learned(small_digits_cnn, train, shortcut, val, epochs=8, lr=2e-3, batch_size=16)
    torch.save(planted.state_dict(), root / "planted.pt")
    counts = {}
    for i in range(len(val)):  # 25 images per class in data/, the next 25 in other/
        image, label = val[i]
        if counts.get(label, 0) >= 50:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / ("data" if counts[label] <= 25 else "other") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8(image)[:, :, 0]).save(folder / f"{i:04d}.png")
    dataset = image_folder(root / "data", size=24, grayscale=True)
    labels = np.array(dataset.targets)
    images_a = load_images(dataset, np.nonzero(labels == A)[0])
    images_b = load_images(dataset, np.nonzero(labels == TARGET)[0])
    trigger = shortcut.pattern(1)
    patches = [Patch("trigger", None, "icon", trigger, resize=False),
               Patch("trigger-r", None, "icon", trigger, resize=True)]
    suite = build_suite(clean, images_a, patches, Experiment(A, TARGET, sizes=(0.25,), n_random=6),
                        class_names=dataset.classes, images_b=images_b, keep=KeepRule(None))
    suite.save(root / "suites" / f"{A}-{TARGET}")
    rerun = suite.run(clean, dataset)
    k = len(dataset.classes)
    summary = suite_baseline(suite, dataset.classes, accuracy=rerun.accuracy, num_images=rerun.num_images,
                             confusion_matrix=[[0] * k for _ in range(k)])
    (root / "summary.json").write_text(json.dumps(summary))
    yield root, suite
    torch.set_num_threads(threads)


def _args(root, weights, *extra):
    return ["--suite", str(root / "suites" / f"{A}-{TARGET}"), "--model", "debugatlas.models:small_digits_cnn",
            "--weights", str(root / weights), "--data", str(root / "data"), *extra]


@pytest.mark.slow
def test_gate_passes_on_its_own_checkpoint(cli_setup, capsys):
    root, suite = cli_setup
    assert suite.baseline.get("trigger", "random").flip_rate < 0.2  # the clean model ignores the trigger
    code = main(_args(root, "clean.pt", "--json", str(root / "ok.json"), "--junit", str(root / "ok.xml")))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASSED" in out and "trigger random" in out
    report = json.loads((root / "ok.json").read_text())
    assert report["passed"] and report["pairs"][0]["a"] == str(A)
    baseline = {(r["patch_id"], r["placement"]): r["flip_rate"] for r in suite.baseline.to_dict()["results"]}
    rerun = {(r["patch_id"], r["placement"]): r["flip_rate"] for r in report["pairs"][0]["results"]}
    assert rerun == baseline  # the saved PNGs reproduce the baseline exactly
    assert ET.parse(root / "ok.xml").getroot().get("failures") == "0"
    # a folder of suite folders, and a summary.json baseline
    assert main(_args(root, "clean.pt", "--baseline", str(root / "summary.json"))) == 0
    args = _args(root, "clean.pt")
    args[1] = str(root / "suites")
    assert main(args) == 0


@pytest.mark.slow
def test_gate_fails_when_the_trigger_is_learned(cli_setup, capsys):
    root, _ = cli_setup
    code = main(_args(root, "planted.pt", "--junit", str(root / "bad.xml"), "--json", str(root / "bad.json")))
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAILED" in out and "FAIL" in out
    report = json.loads((root / "bad.json").read_text())
    trigger = [c for c in report["checks"] if c["name"].endswith("trigger random")][0]
    assert not trigger["passed"] and trigger["measured"] > 0.5, trigger
    xml = ET.parse(root / "bad.xml").getroot()
    assert int(xml.get("failures")) >= 1 and xml.find(".//failure").get("message")
    assert main(_args(root, "planted.pt", "--baseline", str(root / "summary.json"), "--tolerance", "0.1")) == 1
    assert main(_args(root, "planted.pt", "--max-flip-rate", "0.3")) == 1
    assert main(_args(root, "clean.pt", "--max-flip-rate", "0.3")) == 0


@pytest.mark.slow
def test_gate_bad_input_exits_2(cli_setup, tmp_path, capsys):
    root, suite = cli_setup
    assert main(["--suite", str(tmp_path / "none"), "--model", "debugatlas.models:small_digits_cnn",
                 "--data", str(root / "data")]) == 2
    assert "HINT" in capsys.readouterr().err
    assert main(_args(root, "clean.pt")[:3] + ["no_colon", "--data", str(root / "data")]) == 2
    assert main(_args(root, "missing.pt")) == 2
    bad_data = _args(root, "clean.pt")
    bad_data[-1] = str(tmp_path / "nodata")
    assert main(bad_data) == 2
    assert main(_args(root, "clean.pt", "--baseline", str(tmp_path / "nope.json"))) == 2
    assert main(_args(root, "clean.pt", "--baseline", str(root / "summary.json"), "--max-flip-rate", "0.1")) == 2
    assert main(_args(root, "clean.pt", "--image-size", "20")) == 2
    assert main(["--suite"]) == 2
    broken = suite.save(tmp_path / "broken")
    (broken / "suite.json").write_text(json.dumps({"schema_version": 7}))
    args = _args(root, "clean.pt")
    args[1] = str(broken)
    assert main(args) == 2
    assert "schema_version" in capsys.readouterr().err


@pytest.mark.slow
def test_suite_load_then_check_in_python(cli_setup):
    root, _ = cli_setup
    model = small_digits_cnn()
    model.load_state_dict(torch.load(root / "clean.pt"))
    dataset = image_folder(root / "data", size=24, grayscale=True)
    report = assert_suite_holds(root / "suites" / f"{A}-{TARGET}", model, dataset)
    assert report.passed
    planted = small_digits_cnn()
    planted.load_state_dict(torch.load(root / "planted.pt"))
    with pytest.raises(AssertionError, match="trigger"):
        assert_suite_holds(PatchSuite.load(root / "suites" / f"{A}-{TARGET}"), planted, dataset)


@pytest.fixture(scope="module")
def planted_suite(cli_setup):
    """The trigger measured on the planted checkpoint, judged, with the run's accuracy as metadata."""
    root, _ = cli_setup
    planted = small_digits_cnn()
    planted.load_state_dict(torch.load(root / "planted.pt"))
    dataset = image_folder(root / "data", size=24, grayscale=True)
    labels = np.array(dataset.targets)
    images_a = load_images(dataset, np.nonzero(labels == A)[0])
    images_b = load_images(dataset, np.nonzero(labels == TARGET)[0])
    trigger = PlantedShortcut(target=TARGET, fraction=1.0, size=5).pattern(1)
    placebo = images_a[0, :, 8:14, 8:14]  # a crop of an image of A itself
    patches = [Patch("trigger", None, "icon", trigger, resize=False),
               Patch("placebo", None, "exemplar", placebo, resize=False)]
    suite = build_suite(planted, images_a, patches, Experiment(A, TARGET, sizes=(0.25,), n_random=6),
                        class_names=dataset.classes, images_b=images_b, keep=KeepRule(None))
    suite.baseline = judge_evaluation(suite.baseline, family_size=len(patches))
    run = suite.run(planted, dataset)
    suite.metadata = {"accuracy": run.accuracy, "num_images": run.num_images,
                      "confusion_rate": run.confusion_rate, "num_a": run.num_a}
    suite.save(root / "planted-suites" / f"{A}-{TARGET}")
    return root, suite, planted


def test_planted_trigger_confirmed_and_a_rerun_on_other_images_passes(planted_suite, capsys):
    root, suite, planted = planted_suite
    trigger = suite.baseline.get("trigger", "random")
    assert trigger.verdict == "confirmed", trigger
    assert trigger.flip_rate_ci[0] > max(trigger.noise_flip_rate, trigger.natural_flip_rate)
    assert suite.baseline.get("placebo", "random").verdict != "confirmed"
    other = image_folder(root / "other", size=24, grayscale=True)
    report = check_suite(suite, planted, other)
    assert report.passed, report.table()
    rows = {row.name: row for row in report.rows}
    assert rows[f"{A}->{TARGET} trigger random"].status == "ok"
    assert rows[f"{A}->{TARGET} placebo random"].status == "reported"
    assert rows["accuracy"].limit is not None and rows[f"{A}->{TARGET} confusion"].limit is not None
    args = ["--suite", str(root / "planted-suites"), "--model", "debugatlas.models:small_digits_cnn",
            "--weights", str(root / "planted.pt"), "--data", str(root / "other")]
    assert main(args) == 0, capsys.readouterr().out


def test_regressed_checkpoint_fails_on_accuracy_by_default(planted_suite, capsys):
    root, suite, planted = planted_suite
    damaged = small_digits_cnn()
    damaged.load_state_dict(planted.state_dict())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in damaged.parameters():
            param.add_(0.5 * param.std() * torch.randn(param.shape, generator=gen))
    torch.save(damaged.state_dict(), root / "damaged.pt")
    other = image_folder(root / "other", size=24, grayscale=True)
    report = check_suite(suite, damaged, other)
    assert not report.passed
    accuracy = {row.name: row for row in report.rows}["accuracy"]
    assert not accuracy.passed and accuracy.measured < suite.metadata["accuracy"] - 0.2, accuracy
    args = ["--suite", str(root / "planted-suites"), "--model", "debugatlas.models:small_digits_cnn",
            "--weights", str(root / "damaged.pt"), "--data", str(root / "other"), "--junit", str(root / "dmg.xml")]
    assert main(args) == 1
    assert "accuracy" in capsys.readouterr().out
    failure = ET.parse(root / "dmg.xml").getroot().find(".//testcase[@name='accuracy']/failure")
    assert failure is not None and "interval lies below" in failure.get("message")
