"""Models people have: any importable factory with keyword arguments, weights, Lightning checkpoints,
modules in the current directory, normalisation presets; torchvision's ResNet-18 and GoogLeNet end to end."""
from __future__ import annotations

import json
import sys
import uuid

import pytest
from _folders import make_image_folder
import torch

from debugatlas.cli import main
from debugatlas.core.errors import DebugAtlasError
from debugatlas.models import NORMALIZE_PRESETS, load_model, normalization

FAST = ["--option", "layout=pca", "--option", "render=False", "--option", "patches=False",
        "--option", "grid_size=4", "--option", "grid_sizes=4", "--option", "n_pairs=1", "--option", "batch_size=16",
        "--option", "n_examples=0"]


def _accuracy(model, root, normalize=None):
    from debugatlas.core.model import Normalized
    from debugatlas.data import image_folder

    data = image_folder(root)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor([data[i][1] for i in range(len(data))])
    net = Normalized(model, *normalize) if normalize else model
    with torch.no_grad():
        return float((net.eval()(images).argmax(-1) == labels).float().mean())


def _same_weights(m1, m2):
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


@pytest.mark.slow
@pytest.mark.parametrize("factory, args, layer", [
    ("resnet18", {"num_classes": 3}, "layer2"),
    ("googlenet", {"num_classes": 3, "aux_logits": False, "init_weights": True}, "inception3b"),
])
def test_torchvision_model_through_the_cli(tmp_path, factory, args, layer):
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, factory)(**args).eval()
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    data = make_image_folder(tmp_path / "data")
    model_args = [f"{k}={v}" for k, v in args.items()]
    loaded = load_model(f"torchvision.models:{factory}", tmp_path / "model.pt",
                        model_args={k: v for k, v in args.items()})
    assert _same_weights(loaded, reference) and not loaded.training
    out = tmp_path / "run"
    code = main(["analyze", "--model", f"torchvision.models:{factory}", "--model-args", *model_args,
                 "--weights", str(tmp_path / "model.pt"), "--normalize", "imagenet", "--data", str(data),
                 "--layer", layer, "--out", str(out), *FAST])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["cat", "dog", "fox"]
    assert summary["layer"].split(".")[-1] == layer.split(".")[-1]  # "model.<layer>" under --normalize today
    assert summary["config"]["normalize"] == [list(v) for v in NORMALIZE_PRESETS["imagenet"]]
    assert summary["config"]["render"] is False and summary["config"]["grid_size"] == 4
    assert summary["accuracy"] == pytest.approx(_accuracy(reference, data, NORMALIZE_PRESETS["imagenet"]))
    assert (out / "index.html").is_file()


def test_module_in_the_current_directory_is_found_as_python_m_does(tmp_path, monkeypatch):
    name = f"mymodels_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from debugatlas.models import SmallCNN\n\n"
        "def factory(num_classes=3, width=4):\n"
        "    return SmallCNN(in_channels=3, num_classes=num_classes, width=width)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    model = load_model(f"{name}:factory", model_args={"num_classes": 5, "width": 2})
    assert model.fc.out_features == 5 and model.fc.in_features == 8
    monkeypatch.delitem(sys.modules, name)
    make_image_folder(tmp_path / "data")
    assert main(["analyze", "--model", f"{name}:factory", "--data", "data", "--layer", "layer2",
                 "--out", "run", *FAST]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["config"]["model_spec"] == f"{name}:factory"


def test_a_missing_dependency_of_the_module_is_not_hidden(tmp_path, monkeypatch):
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import no_such_package_xyz\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DebugAtlasError, match="no_such_package_xyz"):
        load_model(f"{name}:factory")


def test_lightning_checkpoint_loads_through_the_module_class(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    name = f"litmods_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import pytorch_lightning as pl\nimport torch\n\n"
        "class Lit(pl.LightningModule):\n"
        "    def __init__(self, num_classes=3, width=4):\n"
        "        super().__init__()\n"
        "        self.save_hyperparameters()\n"
        "        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU())\n"
        "        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),\n"
        "                                        torch.nn.Linear(width, num_classes))\n\n"
        "    def forward(self, x):\n"
        "        return self.head(self.features(x))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    from debugatlas.models import import_object

    cls = import_object(f"{name}:Lit")
    torch.manual_seed(1)
    trained = cls(num_classes=3, width=6)
    torch.save({"state_dict": trained.state_dict(), "hyper_parameters": dict(trained.hparams),
                "pytorch-lightning_version": pl.__version__}, tmp_path / "lit.ckpt")
    loaded = load_model(f"{name}:Lit", checkpoint=tmp_path / "lit.ckpt")
    assert isinstance(loaded, pl.LightningModule) and loaded.hparams.width == 6 and not loaded.training
    assert _same_weights(loaded, trained)
    data = make_image_folder(tmp_path / "data")
    assert main(["analyze", "--model", f"{name}:Lit", "--checkpoint", "lit.ckpt", "--data", "data",
                 "--layer", "features", "--out", "run", *FAST]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(_accuracy(trained, data))
    with pytest.raises(DebugAtlasError, match="not a LightningModule class"):
        load_model("debugatlas.models:small_digits_cnn", checkpoint=tmp_path / "lit.ckpt")
    with pytest.raises(DebugAtlasError, match="not both"):
        load_model(f"{name}:Lit", tmp_path / "lit.ckpt", checkpoint=tmp_path / "lit.ckpt")


def test_weights_from_a_classifier_module_checkpoint(tmp_path):
    from debugatlas.models import SmallCNN

    torch.manual_seed(2)
    inner = SmallCNN(3, 3, width=4)
    torch.save({"state_dict": {f"model.{k}": v for k, v in inner.state_dict().items()}}, tmp_path / "c.ckpt")
    loaded = load_model("debugatlas.models:SmallCNN", tmp_path / "c.ckpt",
                        model_args={"in_channels": 3, "num_classes": 3, "width": 4})
    assert _same_weights(loaded, inner)


def test_load_model_errors_say_what_to_do(tmp_path):
    with pytest.raises(DebugAtlasError, match="closest names \\['resnet18'"):
        load_model("torchvision.models:resnet18x")
    with pytest.raises(DebugAtlasError, match="form pkg.module:name"):
        load_model("torchvision.models.resnet18")
    with pytest.raises(DebugAtlasError, match="num_clases"):
        load_model("debugatlas.models:SmallCNN", model_args={"num_clases": 3})
    torch.save(load_model("debugatlas.models:SmallCNN", model_args={"num_classes": 4}).state_dict(),
               tmp_path / "four.pt")
    with pytest.raises(DebugAtlasError, match="same --model-args"):
        load_model("debugatlas.models:SmallCNN", tmp_path / "four.pt", model_args={"num_classes": 3})
    with pytest.raises(DebugAtlasError, match="does not exist"):
        load_model("debugatlas.models:SmallCNN", tmp_path / "missing.pt")
    with pytest.raises(DebugAtlasError, match="not a torch.nn.Module"):
        load_model("builtins:dict", model_args={"x": 4.0})


def test_normalization_presets_and_numbers():
    assert normalization(["imagenet"]) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert normalization(["ImageNet"]) == normalization(["imagenet"])
    assert normalization(["0.5", "0.5", "0.5", "0.25", "0.25", "0.25"]) == ((0.5,) * 3, (0.25,) * 3)
    assert normalization(None) is None and normalization(["none"]) is None
    with pytest.raises(DebugAtlasError, match="closest \\['imagenet'\\]"):
        normalization(["imagenett"])
    with pytest.raises(DebugAtlasError, match="even count"):
        normalization(["0.5", "0.5", "0.5"])
    with pytest.raises(DebugAtlasError, match="positive"):
        normalization(["0.5", "0"])
