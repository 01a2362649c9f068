"""The pipeline's own contract: stages on one RunContext, inputs left as they were given."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from debugatlas import analyze
from debugatlas.capture import capture
from debugatlas.core.errors import DebugAtlasError
from debugatlas.data import TensorImageDataset
from debugatlas.pipeline.config import AnalysisConfig, auto_filter_top_n


class Wide(nn.Module):
    """A 1x1 convolution to 4,096 channels: a default cap of 100,000 vectors of it exceeds the
    in-memory limit, so capture writes them to the on-disk store."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.Conv2d(1, 4096, 1)
        self.head = nn.Linear(4096, 2)

    def forward(self, x):
        return self.head(torch.relu(self.wide(x)).mean((2, 3)))


def _images(n: int = 16) -> TensorImageDataset:
    g = torch.Generator().manual_seed(1)
    return TensorImageDataset(torch.rand(n, 1, 8, 8, generator=g), [i % 2 for i in range(n)], ["a", "b"])


def test_a_capture_that_goes_to_disk_names_its_layer(tmp_path):
    result = analyze(Wide(), _images(), "wide", samples_per_image=4, n_neighbors=5, render=False, patches=False,
                     layout="pca", out_dir=tmp_path / "run")
    assert result.activations.layer == "wide" and result.summary["layer"] == "wide"
    assert len(result.activations) == 16 * 4 and (tmp_path / "run" / "summary.json").is_file()


def test_given_activations_are_not_changed():
    data = _images()
    model = Wide()
    acts = capture(model, data, "wide", samples_per_image=4)
    acts.preds[:] = -1  # unknown predictions: analyze() fills them in its own copy
    before = {name: getattr(acts, name).clone() for name in ("vectors", "image_ids", "labels", "preds", "positions")}
    layer = acts.layer
    result = analyze(model, data, "wide", activations=acts, n_neighbors=5, render=False, patches=False, layout="pca")
    assert (result.activations.preds >= 0).all()
    assert acts.layer == layer
    for name, value in before.items():
        assert torch.equal(getattr(acts, name), value), name


def test_the_patch_stage_chooses_on_a_capped_selection_half_and_reports_on_the_other(tmp_path, trained_cnn,
                                                                                      digits_data):
    import json

    from debugatlas.artifacts.paths import SUITE_FILE, suite_dir

    out = tmp_path / "run"
    analyze(trained_cnn, digits_data[1], "layer3", pairs=[("1", "2")], out_dir=out, seed=0, layout="pca",
            grid_size=8, grid_sizes=(8,), render_steps=4, patch_cells=3, n_random=2, n_examples=1,
            selection_images=6, max_patch_images=9)
    meta = json.loads((out / suite_dir(0) / SUITE_FILE).read_text())["metadata"]
    selection, confirmation = meta["selection_image_ids"], meta["confirmation_image_ids"]
    assert len(selection) == 6 and len(confirmation) == 9  # the digits' 1s hold more than 15
    assert not set(selection) & set(confirmation)
    rows = json.loads((out / "summary.json").read_text())["pairs"][0]["patches"]
    assert rows and all(r["n_images"] <= 9 for r in rows)  # counted on the confirmation half only


def _record_trials(monkeypatch):
    """Every `TrialLog.measure` call of a run: (log, precision, chunk images, patch ids). The log
    itself is kept, not its id: a freed log's id may be reused by the next one."""
    from debugatlas.patches.trials import TrialLog

    calls = []
    real = TrialLog.measure

    def measure(self, patches, chunk):
        calls.append((self, self.experiment.precision, int(self.chunks[chunk].n_offered), [p.id for p in patches]))
        return real(self, patches, chunk)

    monkeypatch.setattr(TrialLog, "measure", measure)
    return calls


def _by_log(calls):
    logs = list({id(c[0]): c[0] for c in calls}.values())
    return [[c[1:] for c in calls if c[0] is log] for log in logs]


def test_many_candidates_race_on_a_few_images_before_the_whole_selection_half(monkeypatch, tmp_path, trained_cnn,
                                                                              digits_data):
    """The selection is a race: every candidate on the first small chunk, a third of them on the
    next, twice as large, and so on; the kept ones come from the survivors."""
    import json

    from debugatlas.pipeline import patch_stage

    calls = _record_trials(monkeypatch)
    monkeypatch.setattr(patch_stage, "DESIGN", dataclasses.replace(patch_stage.DESIGN, keep=2))
    analyze(trained_cnn, digits_data[1], "layer3", pairs=[("1", "2")], out_dir=tmp_path / "run", seed=0,
            layout="pca", grid_size=8, grid_sizes=(8,), render_steps=4, patch_cells=4, n_random=2,
            n_examples=1, selection_images=12, max_patch_images=9, crop_sizes=(4, 6))
    _screen, selection, _confirmation = _by_log(calls)
    sizes = [n for _, n, _ in selection]
    assert sizes[0] == patch_stage.DESIGN.selection_race_images and sizes[1] == 8  # 4, then the 8 left of 12
    candidates = [i for i in selection[0][2] if not i.startswith(("noise", "natural"))]
    second = [i for i in selection[1][2] if not i.startswith(("noise", "natural"))]
    assert len(candidates) > 3 * 2 and set(second) < set(candidates)
    assert len(second) <= max(2, -(-len(candidates) // 3)) + 2 + 1  # a third, plus the reserved places
    pair = json.loads((tmp_path / "run" / "summary.json").read_text())["pairs"][0]
    assert pair["screening"]["n_candidates"] == len(candidates)  # every candidate was measured, not the survivors
    kept = {r["id"] for r in pair["patches"]}
    assert kept and kept <= set(candidates)


def test_choosing_runs_at_the_chosen_precision_and_the_confirmation_at_the_models_own(monkeypatch, tmp_path,
                                                                                       trained_cnn, digits_data):
    """Screening and the selection race only choose: they may run in bfloat16. The held-out
    measurement every reported rate comes from runs the model as given (no autocast)."""
    import json

    calls = _record_trials(monkeypatch)
    analyze(trained_cnn, digits_data[1], "layer3", pairs=[("1", "2")], out_dir=tmp_path / "run", seed=0,
            layout="pca", grid_size=8, grid_sizes=(8,), render_steps=4, patch_cells=3, n_random=2, n_examples=1,
            selection_images=12, max_patch_images=9, choosing_precision="bfloat16")
    screen, selection, confirmation = _by_log(calls)
    assert {c[0] for c in screen} == {c[0] for c in selection} == {"bfloat16"}
    assert {c[0] for c in confirmation} == {"float32"}
    # every screened cell is tried as its icon and as a crop of its first real exemplar
    ids = screen[0][2]
    icons = {i for i in ids if not i.endswith("-x")}
    crops = {i[:-2] for i in ids if i.endswith("-x")}
    assert crops and crops <= icons | crops and len(crops) >= len(icons) // 2
    config = json.loads((tmp_path / "run" / "summary.json").read_text())["config"]
    assert config["choosing_precision"] == "bfloat16"


def test_auto_precision_is_resolved_and_recorded(tmp_path, trained_cnn, digits_data):
    from debugatlas.core.model import PRECISIONS, fast_precision

    result = analyze(trained_cnn, digits_data[1], "layer3", pairs=[("1", "2")], seed=0, layout="pca",
                     grid_size=8, grid_sizes=(8,), render=False, patches=False, n_examples=1)
    assert result.summary["config"]["choosing_precision"] == fast_precision("cpu") in PRECISIONS


def test_many_screened_cells_race_on_a_few_images_before_the_full_screen(monkeypatch, tmp_path, trained_cnn,
                                                                         digits_data):
    import json

    from debugatlas.pipeline import patch_stage

    calls = _record_trials(monkeypatch)
    monkeypatch.setattr(patch_stage, "DESIGN", dataclasses.replace(patch_stage.DESIGN, screen_race_images=3))
    analyze(trained_cnn, digits_data[1], "layer3", pairs=[("1", "2")], out_dir=tmp_path / "run", seed=0,
            layout="pca", grid_size=8, grid_sizes=(8,), render_steps=4, patch_cells=1, n_random=2, n_examples=1,
            selection_images=12, max_patch_images=9)
    screen = _by_log(calls)[0]
    (_, n_first, first), (_, n_next, nxt) = screen[:2]
    cells = {i.removesuffix("-x") for i in first}
    assert (n_first, n_next) == (3, 9) and len(first) > max(3, len(cells) // 4)  # 3, then the 9 left of 12
    assert len(nxt) < len(first) and set(nxt) <= set(first)
    screening = json.loads((tmp_path / "run" / "summary.json").read_text())["pairs"][0]["screening"]
    assert screening["n_screened"] == len(cells)  # every cell counts, not only the survivors


def test_auto_filter_top_n_is_one_class_share_of_the_samples_at_most_the_papers_2000():

    assert auto_filter_top_n(1800, 3) == 600
    assert auto_filter_top_n(1_000_000, 1000) == 1000
    assert auto_filter_top_n(100_000, 10) == 2000
    assert auto_filter_top_n(5, 10) == 1
    assert AnalysisConfig.from_options({}).filter_top_n == "auto"
    assert AnalysisConfig.from_options({"filter_top_n": 50}).filter_top_n == 50
    for bad in (0, "all", 2.5, True):
        with pytest.raises(DebugAtlasError, match="filter_top_n"):
            AnalysisConfig.from_options({"filter_top_n": bad})


def test_a_spent_budget_cuts_the_patch_tests_and_says_so(tmp_path, trained_cnn, digits_data):
    result = analyze(trained_cnn, digits_data[1], "layer3", pairs=[("1", "2"), ("3", "5")], seed=0, layout="pca",
                     grid_size=8, grid_sizes=(8,), render_steps=4, n_examples=1, budget_w=1e-3)
    summary = result.summary
    assert summary["budget"] == {"budget_w": 1e-3, "cut_pairs": ["1->2", "3->5"]}
    assert all(p["patches"] == [] and any("budget_w" in n for n in p["notes"]) for p in summary["pairs"])
    assert summary["forwards"]["patches"] == 0 and summary["cost_w"]["total"] > 1e-3
    with pytest.raises(DebugAtlasError, match="budget_w"):
        AnalysisConfig.from_options({"budget_w": 0})


def test_cost_in_w_and_forwards_per_stage_are_recorded(trained_cnn, digits_data):
    result = analyze(trained_cnn, digits_data[1], "layer3", pairs=[("1", "2")], seed=0, layout="pca",
                     grid_size=8, grid_sizes=(8,), render_steps=4, n_examples=1)
    s = result.summary
    assert s["w_s"]["images"] == len(digits_data[1]) and s["w_s"]["seconds"] > 0
    assert s["forwards"]["capture"] >= len(digits_data[1])  # every image once (guided: and its gradient pass)
    parts = sum(s["forwards"][k] for k in s["forwards"] if k.startswith("patches."))
    assert 0 < parts <= s["forwards"]["patches"]
    for stage, seconds in s["timings_s"].items():
        assert s["cost_w"][stage] == pytest.approx(seconds / s["w_s"]["seconds"], rel=2e-3, abs=2e-3)  # both rounded
