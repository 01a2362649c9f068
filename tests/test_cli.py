"""The command line: `--option` read as AnalysisConfig types, exit codes, shared model flags, a rendered run."""
from __future__ import annotations

import argparse
import json

import pytest
from _folders import make_image_folder

from debugatlas.cli import add_model_arguments, analysis_options, main, model_from_args, parse_value
from debugatlas.core.errors import DebugAtlasError

FAST = ["--option", "layout=pca", "--option", "render=false", "--option", "patches=no",
        "--option", "grid_size=4", "--option", "grid_sizes=4", "--option", "n_pairs=1", "--option", "n_examples=0"]
SMALL_CNN = ["--model", "debugatlas.models:SmallCNN", "--model-args", "in_channels=3", "num_classes=3", "width=4"]


def _image_folder(root, per_class=8, size=32):
    return make_image_folder(root, classes=("a", "b", "c"), per_class=per_class, size=size)


def test_parse_value_reads_python_literals():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("-2") == -2
    assert parse_value("true") is True and parse_value("False") is False
    assert parse_value("None") is None and parse_value("null") is None
    assert parse_value("(1, 2)") == (1, 2) and parse_value("[0.1,0.2]") == [0.1, 0.2]
    assert parse_value("layer3") == "layer3" and parse_value("'x'") == "x"


def test_options_take_the_type_of_their_config_field():
    options = analysis_options(["render_steps=64", "render=no", "patch_sizes=0.2,0.3", "grid_sizes=(10, 20)",
                                "layout_epochs=None", "layout_pca_dims=8", "min_dist=0.1", "metric=euclidean",
                                "crop_sizes="])
    assert options == {"render_steps": 64, "render": False, "patch_sizes": (0.2, 0.3), "grid_sizes": (10, 20),
                       "layout_epochs": None, "layout_pca_dims": 8, "min_dist": 0.1, "metric": "euclidean",
                       "crop_sizes": ()}
    assert type(options["render_steps"]) is int and type(options["min_dist"]) is float
    assert analysis_options(["render_steps=8", "render_steps=16"]) == {"render_steps": 16}  # the last one wins
    assert analysis_options(None) == {}


@pytest.mark.parametrize("item, message", [
    ("render_step=3", r"closest valid names \{'render_step': \['render_steps'"),
    ("render_steps=1.5", "expected int"),
    ("render=maybe", "expected bool"),
    ("render_steps=0", "must be an integer >= 1"),
    ("layout_backend=gpu", "is not one of"),
    ("render_steps", "name=value"),
])
def test_bad_options_are_errors_before_anything_runs(item, message):
    with pytest.raises(DebugAtlasError, match=message):
        analysis_options([item])


def test_bad_option_exits_2_with_the_closest_name(tmp_path, capsys):
    code = main(["analyze", *SMALL_CNN, "--data", str(tmp_path / "nowhere"), "--layer", "layer2",
                 "--option", "grid_szie=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "grid_szie" in err and "'grid_size'" in err
    assert not (tmp_path / "nowhere").exists()


def test_usage_errors_and_help_exit_codes(capsys):
    assert main(["analyze", "--model", "x:y"]) == 2  # --data and --layer missing
    assert main(["frobnicate"]) == 2
    capsys.readouterr()
    assert main(["analyze", "--help"]) == 0
    assert "--option NAME=VALUE" in capsys.readouterr().out
    assert main(["--help"]) == 0 and main(["diff", "--help"]) == 0


def test_shared_model_flags_build_the_model_and_normalization():
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    args = parser.parse_args(["--model", "debugatlas.models:SmallCNN", "--model-args", "num_classes=5",
                              "--model-args", "width=2", "--normalize", "cifar10"])
    model, normalize = model_from_args(args)
    assert model.fc.out_features == 5 and model.fc.in_features == 8 and not model.training
    assert normalize == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    with pytest.raises(SystemExit):  # --weights and --checkpoint exclude each other
        parser.parse_args(["--model", "a:b", "--weights", "w.pt", "--checkpoint", "c.ckpt"])


def test_options_reach_the_analysis(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["analyze", *SMALL_CNN, "--data", str(data), "--layer", "layer2", "--out", str(out), *FAST,
                 "--option", "n_exemplars=2", "--option", "min_count=1", "--option", "samples_per_image=2",
                 "--option", "filter_top_n=400"]) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert (config["n_exemplars"], config["min_count"], config["samples_per_image"]) == (2, 1, 2)
    assert (config["render"], config["patches"], config["grid_size"], config["layout"]) == (False, False, 4, "pca")
    # 48 samples and filter_top_n=400: both class filters hold every sample, and the pair says so
    notes = json.loads((out / "summary.json").read_text())["pairs"][0]["notes"]
    assert any("share 100 % of their samples" in n for n in notes)
    # stderr is not a terminal here (a log file, CI): no progress bar unless asked
    assert "debugatlas (" not in capsys.readouterr().err
    assert main(["analyze", *SMALL_CNN, "--data", str(data), "--layer", "layer2", "--out", str(out), *FAST,
                 "--progress"]) == 0
    assert "debugatlas (capture)" in capsys.readouterr().err


@pytest.mark.slow
def test_rendered_run_on_a_very_small_config(tmp_path):
    import torch

    torch.manual_seed(0)  # the factory's random initialisation: an untrained model, most confused pair chosen
    data = _image_folder(tmp_path / "data", per_class=6, size=24)
    out = tmp_path / "run"
    code = main(["analyze", *SMALL_CNN, "--data", str(data), "--layer", "layer2", "--out", str(out),
                 "--option", "n_pairs=1", "--option", "layout=pca", "--option", "grid_size=3", "--option", "grid_sizes=3",
                 "--option", "min_count=1", "--option", "render_steps=4", "--option", "render_cells=2",
                 "--option", "top_cells=2", "--option", "patches=false"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["render_steps"] == 4 and summary["config"]["render"] is True
    icons = [c["icon"] for p in summary["pairs"] for c in p["confusing_cells"] if c.get("icon")]
    assert icons and all((out / icon).is_file() for icon in icons)
    assert (out / "icon_atlas.png").is_file()
