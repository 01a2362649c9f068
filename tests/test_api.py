"""analyze(): the run directory, summary.json contract, model left as found, bad input, atomic writes."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from debugatlas import DebugAtlasError
from debugatlas.pipeline import analyze
from debugatlas.data import TensorImageDataset

FAST = {"layout": "pca", "render": False, "patches": False, "samples_per_image": 2, "grid_sizes": (10,),
        "grid_size": 10, "n_pairs": 2}


def _state(model):
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()))


def test_summary_matches_file_and_contract(trained_cnn, digits_data, tmp_path):
    _, val = digits_data
    before = _state(trained_cnn)
    result = analyze(trained_cnn, val, "layer3", out_dir=tmp_path / "run", seed=0, **FAST)
    assert _state(trained_cnn) == before
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == result.summary
    s = result.summary
    assert s["schema_version"] == 1 and s["layer"] == "layer3"
    assert s["num_samples"] == 2 * len(val) and s["classes"] == [str(d) for d in range(10)]
    # filter_top_n="auto" is recorded as the number it became: one class's share of the samples
    assert s["config"]["filter_top_n"] == 2 * len(val) // 10
    cm = torch.tensor(s["confusion_matrix"])
    assert cm.shape == (10, 10) and int(cm.sum()) == len(val)
    assert s["accuracy"] == pytest.approx(float(cm.diag().sum()) / len(val))
    assert set(s["timings_s"]) >= {"capture", "attribution", "layout", "render", "patches", "total"}
    assert len(s["pairs"]) == 2
    for pair in s["pairs"]:
        a, b = s["classes"].index(pair["a"]), s["classes"].index(pair["b"])
        assert pair["confused"] == cm[a, b] > 0
        assert pair["confusing_cells"], "each confused pair has candidate cells"
        scores = [c["score"] for c in pair["confusing_cells"]]
        assert scores == sorted(scores, reverse=True)
        for cell in pair["confusing_cells"]:
            assert all(val.labels[i] == a for i in cell["exemplar_ids"])
    for name in ("index.html", "cells.csv", "atlas_10.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_named_pairs_and_normalize(trained_cnn, digits_data):
    _, val = digits_data
    result = analyze(trained_cnn, val, "layer3", pairs=[("3", "8")], normalize=([0.0], [1.0]), **FAST)
    assert [(p["a"], p["b"]) for p in result.summary["pairs"]] == [("3", "8")]
    assert result.summary["config"]["normalize"] == [[0.0], [1.0]]


class Exploding(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("boom")
        return self.inner(x)


def test_model_left_as_found_when_it_raises(trained_cnn, digits_data):
    model = Exploding(trained_cnn).train()
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        analyze(model, digits_data[1], "inner.layer3", **FAST)
    assert _state(model) == before
    trained_cnn.eval()


def test_error_leaves_earlier_report_intact(trained_cnn, digits_data, tmp_path):
    out = tmp_path / "run"
    analyze(trained_cnn, digits_data[1], "layer3", out_dir=out, **FAST)
    first = (out / "summary.json").read_text()
    with pytest.raises(DebugAtlasError):
        analyze(trained_cnn, digits_data[1], "layer3", out_dir=out, pairs=[("3", "eight")], **FAST)
    assert (out / "summary.json").read_text() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_bad_inputs(trained_cnn, digits_data):
    _, val = digits_data
    with pytest.raises(DebugAtlasError, match="closest names.*layer3"):
        analyze(trained_cnn, val, "layer_3", **FAST)
    with pytest.raises(DebugAtlasError, match="unknown class 'eight'"):
        analyze(trained_cnn, val, "layer3", pairs=[("3", "eight")], **FAST)
    with pytest.raises(DebugAtlasError, match="empty"):
        analyze(trained_cnn, TensorImageDataset(torch.zeros(0, 1, 24, 24), [], val.classes), "layer3", **FAST)
    with pytest.raises(DebugAtlasError, match=r"\(image, label\)"):
        analyze(trained_cnn, [val[i][0] for i in range(20)], "layer3", **FAST)
    with pytest.raises(DebugAtlasError, match="Unknown analysis option"):
        analyze(trained_cnn, val, "layer3", grid=20)
    with pytest.raises(DebugAtlasError, match="choosing_precision='half'"):
        analyze(trained_cnn, val, "layer3", choosing_precision="half")
    few = TensorImageDataset(val.images[:10], val.labels[:10], val.classes)
    with pytest.raises(DebugAtlasError, match="n_neighbors"):
        analyze(trained_cnn, few, "layer3", samples_per_image=1, render=False, patches=False)
    nan = TensorImageDataset(val.images[:40] * float("nan"), val.labels[:40], val.classes)
    with pytest.raises(DebugAtlasError, match="NaN or infinite"):
        analyze(trained_cnn, nan, "layer3", **FAST)
    missing = TensorImageDataset(val.images[val.labels != 3][:100], val.labels[val.labels != 3][:100], val.classes)
    with pytest.raises(DebugAtlasError, match="no images"):
        analyze(trained_cnn, missing, "layer3", pairs=[("3", "8")], **FAST)


def test_models_with_more_than_100_classes_attribute_the_studied_pairs(trained_cnn, digits_data):
    class Wide(nn.Module):
        """The digits CNN with 140 outputs: the 10 digits, then 130 never-winning logits."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(x)
            return torch.cat([logits, logits.new_full((x.shape[0], 130), -1e4)], 1)

    _, val = digits_data
    names = [str(d) for d in range(10)] + [f"extra{k}" for k in range(130)]
    result = analyze(Wide(trained_cnn), val, "inner.layer3", pairs=[("3", "8")], class_names=names, **FAST)
    attr = result.attributions
    assert attr.shape == (len(result.activations), 140)
    assert attr[:, [3, 8]].abs().sum() > 0
    others = [k for k in range(140) if k not in (3, 8)]
    assert attr[:, others].abs().sum() == 0
    assert result.summary["pairs"][0]["confusing_cells"]
    # pairs="auto": picked first (with a pass for the probabilities), then only their classes attributed
    auto = analyze(Wide(trained_cnn), val, "inner.layer3", class_names=names, **FAST)
    studied = sorted({names.index(p[k]) for p in auto.summary["pairs"] for k in ("a", "b")})
    assert studied and max(studied) < 10
    assert auto.attributions[:, studied].abs().sum() > 0
    assert auto.attributions[:, [k for k in range(140) if k not in studied]].abs().sum() == 0


def test_layout_options_reach_the_layout_and_bad_ones_are_refused():
    from torch import nn

    from debugatlas.pipeline import AnalysisConfig, RunContext
    from debugatlas.pipeline.views import layout_options

    config = AnalysisConfig.from_options({"layout_backend": "umap-learn", "layout_pca_dims": 16})
    model = nn.Sequential(nn.Linear(2, 2))
    ctx = RunContext(model, "0", model[0], [], torch.device("cpu"), 0, config)
    options = layout_options(ctx)
    assert options["backend"] == "umap-learn" and options["pca_dims"] == 16 and options["device"] == torch.device("cpu")
    with pytest.raises(DebugAtlasError, match="layout_backend"):
        AnalysisConfig.from_options({"layout_backend": "cuml"})
    with pytest.raises(DebugAtlasError, match="layout_pca_dims"):
        AnalysisConfig.from_options({"layout_pca_dims": 1})
