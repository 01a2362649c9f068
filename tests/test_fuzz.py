"""Fuzz: what users really pass, into the input checks, `analyze()` and the CLI.

For every input: a `DebugAtlasError` (CLI: exit 2) whose message names the problem, or a run that
completes; never another exception type, never a changed model (weights, buffers, training flags,
requires_grad, hooks, grad mode), never a half-written run directory. The inputs are the table of
issue 13 and a few dozen seeded random malformed datasets on tiny models.
"""
from __future__ import annotations

import hashlib
import json
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from debugatlas.core.errors import DebugAtlasError
from debugatlas.core.inputs import (
    check_class_names, check_model, checked_dataset, inspect_dataset, resolve_pairs,
)
from debugatlas.data import TensorImageDataset
from debugatlas.data import class_names as dataset_class_names
from debugatlas.models import SmallCNN
from debugatlas.pipeline import analyze

FAST = {"layout": "pca", "render": False, "patches": False, "grid_size": 4, "grid_sizes": (4,), "n_pairs": 2,
        "n_examples": 0}
LAYER = "layer2"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight the other tests for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- invariants ---------------------------------------------------------------------------------

def model_state(model: nn.Module) -> tuple:
    """Everything of a model that a run must leave as found."""
    hooks = {name: tuple(len(getattr(m, attr)) for attr in
                         ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
             for name, m in model.named_modules()}
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            hooks, torch.is_grad_enabled(), torch.is_inference_mode_enabled())


def assert_same_model(before: tuple, after: tuple) -> None:
    assert before[0].keys() == after[0].keys()
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), f"{key} changed"
    assert before[1:] == after[1:]


def dir_state(path: Path) -> dict[str, str] | None:
    """File -> content hash of a directory tree, or None when it does not exist."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def outcome(run: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) or ("error", DebugAtlasError); any other exception fails the test as it is."""
    try:
        return "ok", run()
    except DebugAtlasError as exc:
        return "error", exc


def assert_names(exc: Exception, words: tuple[str, ...]) -> None:
    message = str(exc).lower()
    assert any(w.lower() in message for w in words), f"{exc!s} names none of {words}"


# --- seeded random cases ------------------------------------------------------------------------

class ListDataset(torch.utils.data.Dataset):
    """Items exactly as given (anything may be malformed), with `classes`."""

    def __init__(self, items: list, classes: list[str]) -> None:
        self.items, self.classes = items, classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


@dataclass
class Case:
    """One input. words: alternatives of which the error must name one (None: the input is valid).
    input_level: the problem is one `core.inputs` catches on its own (without running a stage)."""

    kind: str
    model: nn.Module
    dataset: Any
    kwargs: dict = field(default_factory=dict)
    words: tuple[str, ...] | None = None
    input_level: bool = True
    may_fail: bool = False  # valid input that may still be too small to analyse (then an error naming why)


def _images(rng: np.random.Generator, n: int, c: int, s: int) -> torch.Tensor:
    return torch.from_numpy(rng.random((n, c, s, s), dtype=np.float32))


def _model(seed: int, c: int = 1, k: int = 3) -> nn.Module:
    """Round 0 of the seeds: eval mode, partly frozen; round 1: training mode. Every third: a user hook."""
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=c, num_classes=k, width=4)
    if (seed // len(KINDS)) % 2:
        model.train()                                  # a model mid-training: its mode must survive
    else:
        model.eval()
        model.layer1[0].weight.requires_grad_(False)  # a partly frozen model stays partly frozen
    if seed % 3 == 0:
        model.layer2.register_forward_hook(lambda *_: None)   # the user's own hook stays in place
    return model


class TupleOut(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x.mean()


class DictOut(TupleOut):
    def forward(self, x):
        return {"logits": self.net(x), "pooled": x.mean((2, 3))}


KINDS = ("ok", "nan", "inf", "label_oob", "neg_label", "float_label", "ragged", "bad_rank", "channels_last",
         "not_tensor", "not_pair", "empty", "one_image", "tiny_images", "dup_names", "html_names", "uint8",
         "float255", "normalised", "empty_class", "unknown_pair", "name_count", "gray_into_rgb", "tuple_output",
         "dict_output", "layer_typo", "bad_normalize", "one_class")


def make_case(seed: int) -> Case:
    """A seeded input of kind KINDS[seed % len(KINDS)], with random size, count and corrupted index."""
    kind = KINDS[seed % len(KINDS)]
    rng = np.random.default_rng(seed)
    n, s, k = int(rng.integers(8, 17)), int(rng.choice([12, 16])), 3
    bad = int(rng.integers(0, n))
    x = _images(rng, n, 1, s)
    labels = [int(v) for v in rng.integers(0, k, n)]
    labels[:k] = range(k)                              # every class present
    names = ["airplane", "cat", "dog"]
    model = _model(seed)

    def items(images=x, labs=labels):
        return [(images[i], labs[i]) for i in range(len(labs))]

    data = ListDataset(items(), names)
    if kind == "ok":
        return Case(kind, model, data)
    if kind in ("nan", "inf"):
        x[bad, 0, 1, 2] = float("nan") if kind == "nan" else float("inf")
        return Case(kind, model, ListDataset(items(), names), words=(f"dataset[{bad}]",))
    if kind == "label_oob":
        labels[max(bad, k)] = k + int(rng.integers(0, 5))
        return Case(kind, model, ListDataset(items(), names), words=(f"label {labels[max(bad, k)]}",
                                                                      f"holds {labels[max(bad, k)]}"))
    if kind == "neg_label":
        labels[bad] = -1
        return Case(kind, model, ListDataset(items(), names), words=("label -1",))
    if kind == "float_label":
        floats = [float(v) + 0.5 for v in labels]
        return Case(kind, model, ListDataset(items(labs=floats), names), words=("integer class index",))
    if kind == "ragged":
        it = items()
        it[bad] = (torch.rand(1, s + 2, s), labels[bad])
        return Case(kind, model, ListDataset(it, names), words=("shape",))
    if kind == "bad_rank":
        it = items()
        it[bad] = (torch.rand(2, 1, s, s) if seed % 2 else torch.rand(s), labels[bad])
        return Case(kind, model, ListDataset(it, names), words=("shape",))
    if kind == "channels_last":
        rgb = _images(rng, n, 3, s).permute(0, 2, 3, 1)
        return Case(kind, _model(seed, c=3), ListDataset(items(rgb), names), words=("channels look last",))
    if kind == "not_tensor":
        it = items()
        it[bad] = (x[bad].tolist(), labels[bad])
        return Case(kind, model, ListDataset(it, names), words=("not a tensor",))
    if kind == "not_pair":
        it = items()
        it[bad] = x[bad]
        return Case(kind, model, ListDataset(it, names), words=("(image, label) pair",))
    if kind == "empty":
        return Case(kind, model, ListDataset([], names), words=("empty",))
    if kind == "one_image":
        return Case(kind, model, ListDataset(items()[:1], names), may_fail=True, input_level=False,
                    words=("vector", "sample", "image"))
    if kind == "tiny_images":
        return Case(kind, model, ListDataset(items(_images(rng, n, 1, 3)), names), words=("shape", "size"))
    if kind == "dup_names":
        return Case(kind, model, ListDataset(items(), ["cat", "dog", "cat"]), words=("used twice",))
    if kind == "html_names":
        html = ["<script>alert(1)</script>", "a & b", '"quoted" <b>bold</b>']
        return Case(kind, model, TensorImageDataset(x, labels, html))
    if kind == "uint8":
        return Case(kind, model, TensorImageDataset((x * 255).round().to(torch.uint8), labels, names))
    if kind == "float255":
        return Case(kind, model, TensorImageDataset(x * 255, labels, names))
    if kind == "normalised":
        return Case(kind, model, TensorImageDataset((x - 0.5) / 0.25, labels, names), words=("normalised",))
    if kind == "empty_class":
        labels = [v % 2 for v in labels]             # class 2 has no images
        return Case(kind, model, TensorImageDataset(x, labels, names), {"pairs": [("dog", "cat")]},
                    words=("no images of class 'dog'", "class 'dog' of pair"))
    if kind == "unknown_pair":
        return Case(kind, model, data, {"pairs": [("grid", "cat")]}, words=("unknown class 'grid'",))
    if kind == "name_count":
        return Case(kind, model, data, {"class_names": names + ["extra"]}, words=("class names",))
    if kind == "gray_into_rgb":
        return Case(kind, _model(seed, c=3), data, words=("grayscale",))
    if kind in ("tuple_output", "dict_output"):
        wrapped = (TupleOut if kind == "tuple_output" else DictOut)(model)
        return Case(kind, wrapped, data, {"layer": "net.layer2"}, words=("logitsof",))
    if kind == "layer_typo":
        return Case(kind, model, data, {"layer": "layr2"}, words=("'layr2'",), input_level=False)
    if kind == "bad_normalize":
        return Case(kind, model, data, {"normalize": ([0.5, 0.5], [0.2, 0.2])}, words=("normalize",))
    if kind == "one_class":
        return Case(kind, model, TensorImageDataset(x, [0] * n, names))
    raise AssertionError(kind)


SEEDS = range(2 * len(KINDS))   # every kind twice, with different sizes, counts and corrupted indices

# Kinds whose run reaches capture: with a model in training mode, analyze()'s samples_per_image="auto"
# probe (`_auto_samples`) runs a forward pass without eval mode and BatchNorm statistics change.
def _analyze_params():
    for seed in SEEDS:
        yield pytest.param(seed, id=f"{seed}-{KINDS[seed % len(KINDS)]}")


def check_inputs(case: Case) -> list[str]:
    """The input checks, in the order a run makes them; returns the class names."""
    kwargs = case.kwargs
    inspect_dataset(case.dataset)
    data = checked_dataset(case.dataset)
    k = check_model(case.model, torch.stack([data[i][0] for i in range(min(4, len(data)))]))
    data = checked_dataset(data, num_classes=k)                           # labels checked against K too
    images = torch.stack([data[i][0] for i in range(len(data))])          # every item, converted
    from debugatlas.core.inputs import check_normalize

    check_normalize(kwargs.get("normalize"), images.shape[1])
    names = check_class_names(dataset_class_names(case.dataset, kwargs.get("class_names"), k), k)
    resolve_pairs(kwargs.get("pairs", "auto"), names)
    labels = [data[i][1] for i in range(len(data))]
    resolve_pairs(kwargs.get("pairs", "auto"), names, class_counts=np.bincount(labels, minlength=k))
    return names


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"{s}-{KINDS[s % len(KINDS)]}")
def test_input_checks_fuzz(seed):
    case = make_case(seed)
    before = model_state(case.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kind, value = outcome(lambda: check_inputs(case))
    assert_same_model(before, model_state(case.model))
    if case.words is not None and case.input_level:
        assert kind == "error", f"{case.kind}: the input checks let it through"
        assert_names(value, case.words)
    else:
        assert kind == "ok", f"{case.kind}: valid input rejected: {value}"


@pytest.mark.parametrize("seed", list(_analyze_params()))
def test_analyze_fuzz(seed, tmp_path):
    case = make_case(seed)
    kwargs = dict(case.kwargs)
    layer = kwargs.pop("layer", LAYER)
    out = tmp_path / "run"
    write = case.words is not None or seed % 7 == 0        # writing a report costs seconds: only some
    if seed % 4 == 0:                                      # an earlier report in the folder stays intact
        out.mkdir()
        (out / "summary.json").write_text('{"earlier": true}')
    before, before_dir = model_state(case.model), dir_state(out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kind, value = outcome(lambda: analyze(case.model, case.dataset, layer, out_dir=out if write else None,
                                              seed=seed, **kwargs, **FAST))
    assert_same_model(before, model_state(case.model))
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if before_dir is not None or
                                                          (kind == "ok" and write) else [])
    if kind == "error":
        assert case.words is not None or case.may_fail, f"{case.kind}: valid input rejected: {value}"
        assert_names(value, case.words)
        assert dir_state(out) == before_dir, "an error changed the run directory"
        return
    assert case.words is None or case.may_fail, f"{case.kind}: accepted, expected an error naming {case.words}"
    summary = value.summary
    assert summary["num_images"] == len(case.dataset)
    assert summary["classes"] == [str(c) for c in case.dataset.classes]
    if write:
        assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
        assert (out / "index.html").stat().st_size > 0
        if case.kind == "html_names":
            assert "<script>alert(1)</script>" not in (out / "index.html").read_text()
    eight_bit = [w for w in caught if "divided by 255" in str(w.message)]
    assert len(eight_bit) == (1 if case.kind in ("uint8", "float255") else 0)


# --- the table, through analyze() ------------------------------------------------------

def _table_data(n: int = 24, s: int = 12, seed: int = 0) -> TensorImageDataset:
    rng = np.random.default_rng(seed)
    x = torch.from_numpy((rng.integers(0, 256, (n, 1, s, s)) / 255).astype(np.float32))
    return TensorImageDataset(x, [i % 3 for i in range(n)], ["airplane", "cat", "dog"])


@pytest.mark.parametrize("form", ["uint8", "float255"])
def test_8bit_images_give_the_same_run_as_unit_floats_with_one_warning(form):
    data = _table_data()
    raw = (data.images * 255).round()
    as_given = TensorImageDataset(raw.to(torch.uint8) if form == "uint8" else raw, data.labels, data.classes)
    model = _model(0)
    reference = analyze(model, data, LAYER, seed=0, **FAST).summary
    with pytest.warns(UserWarning, match="divided by 255") as caught:
        converted = analyze(model, as_given, LAYER, seed=0, **FAST).summary
    assert sum("divided by 255" in str(w.message) for w in caught) == 1
    assert converted["accuracy"] == reference["accuracy"]
    assert converted["confusion_matrix"] == reference["confusion_matrix"]
    assert converted["pairs"] == reference["pairs"]          # the same pixels, so the same findings


def test_unknown_pair_is_reported_before_capture():
    model, data = _model(1), _table_data(n=40)
    seen = []
    handle = model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        with pytest.raises(DebugAtlasError, match="unknown class 'grid'.*did you mean|unknown class 'grid'"):
            analyze(model, data, LAYER, pairs=[("grid", "cat")], **FAST)
    finally:
        handle.remove()
    assert sum(seen) < len(data), f"the model saw {sum(seen)} images before the pair was checked"


def test_small_set_shrinks_the_grid_and_says_why():
    """120 images at one sample each cannot fill a 20 x 20 grid."""
    data = _table_data(n=120, s=12)
    options = {**FAST, "grid_size": 20, "grid_sizes": (20,), "samples_per_image": 1}
    result = analyze(_model(2), data, LAYER, seed=0, **options)
    text = json.dumps(result.summary)
    assert result.config.grid_size < 20
    assert "per cell" in text and "120 activation vectors" in text


def test_auto_samples_fill_the_grid():
    data = _table_data(n=60, s=16)                      # layer2 of 16 px: 4 x 4, 2 x 2 interior positions
    result = analyze(_model(3), data, LAYER, seed=0, **{**FAST, "grid_size": 4, "grid_sizes": (4,)})
    assert result.summary["num_samples"] > len(data)    # "auto" took several positions per image


# --- the CLI -----------------------------------------------------------------------------------

FACTORIES = textwrap.dedent("""
    import torch
    from debugatlas.models import SmallCNN

    SEEN = []

    class Counting(SmallCNN):
        def forward(self, x):
            SEEN.append(x.shape[0])
            return super().forward(x)

    def gray3():
        torch.manual_seed(0)
        return Counting(in_channels=1, num_classes=3, width=4)

    def rgb3():
        torch.manual_seed(0)
        return SmallCNN(in_channels=3, num_classes=3, width=4)

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = gray3()

        def forward(self, x):
            return self.net(x), x.mean()

    def tuple3():
        return Pair()
""")


CLI_CLASSES = ("<dog & co>", "airplane", "cat")   # ImageFolder sorts them; one name carries HTML


@pytest.fixture()
def cli_env(tmp_path, monkeypatch):
    """A factory module on sys.path and an ImageFolder of 3 classes x 10 grayscale 12 px PNGs."""
    from PIL import Image

    (tmp_path / "fuzz_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fuzz_factories", raising=False)
    rng = np.random.default_rng(0)
    for name in CLI_CLASSES:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    from debugatlas.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


def _analyze_argv(env: Path, model: str = "gray3", *extra: str) -> list[str]:
    return ["analyze", "--model", f"fuzz_factories:{model}", "--data", str(env / "data"), "--layer", LAYER,
            "--out", str(env / "run"), "--no-render", "--option", "layout=pca", "--option", "n_examples=0",
            "--option", "grid_size=4", "--option", "grid_sizes=4", *extra]


def test_cli_corrupt_image_exits_2_naming_the_file(cli_env, capsys):
    bad = cli_env / "data" / "cat" / "5.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(60)))
    code, err = _cli(_analyze_argv(cli_env, "gray3", "--grayscale"), capsys)
    assert code == 2 and str(bad) in err and "HINT" in err
    assert not (cli_env / "run").exists()


def test_cli_unknown_pair_exits_2_before_capture(cli_env, capsys):
    code, err = _cli(_analyze_argv(cli_env, "gray3", "--grayscale", "--pair", "grid", "cat"), capsys)
    assert code == 2 and "unknown class 'grid'" in err
    assert sum(sys.modules["fuzz_factories"].SEEN) < 30, "the pair was checked after capture"
    assert not (cli_env / "run").exists()


@pytest.mark.parametrize("model, extra, words", [
    ("rgb3", ["--grayscale"], "Grayscale(num_output_channels=3)"),       # the row
    ("tuple3", ["--grayscale", "--layer", "net.layer2"], "LogitsOf"),
    ("gray3", [], "Grayscale(1)"),                                          # RGB PNGs into a 1-channel model
    ("gray3", ["--grayscale", "--normalize", "0.5", "0.5", "0.5"], "--normalize"),
    ("gray3", ["--grayscale", "--layer", "layr2"], "layr2"),
    ("gray3", ["--grayscale", "--image-size", "3"], "shape"),
])
def test_cli_bad_input_exits_2(cli_env, capsys, model, extra, words):
    code, err = _cli(_analyze_argv(cli_env, model, *extra), capsys)
    assert code == 2 and words in err, err
    assert not (cli_env / "run").exists()


def test_cli_missing_data_folder_exits_2(cli_env, capsys):
    argv = _analyze_argv(cli_env, "gray3", "--grayscale")
    argv[argv.index("--data") + 1] = str(cli_env / "nowhere")
    code, err = _cli(argv, capsys)
    assert code == 2 and "nowhere" in err


def test_cli_check_with_a_run_directory_names_its_suite_folder(cli_env, capsys):
    run = cli_env / "runs" / "x"
    (run / "suite" / "pair0").mkdir(parents=True)
    (run / "suite" / "pair0" / "suite.json").write_text(json.dumps({"schema_version": 1}))
    (run / "summary.json").write_text("{}")
    code, err = _cli(["check", "--suite", str(run), "--model", "fuzz_factories:gray3",
                      "--data", str(cli_env / "data")], capsys)
    assert code == 2 and f"--suite {run / 'suite'}" in err


@pytest.mark.slow
def test_cli_analyze_completes_with_defaults(cli_env, capsys):
    """The CLI as a user runs it first (UMAP layout, default grid, examples): exit 0 and a whole report."""
    argv = ["analyze", "--model", "fuzz_factories:gray3", "--data", str(cli_env / "data"), "--layer", LAYER,
            "--out", str(cli_env / "run"), "--no-render", "--grayscale", "--image-size", "24"]
    code, err = _cli(argv, capsys)
    assert code == 0, err
    summary = json.loads((cli_env / "run" / "summary.json").read_text())
    assert summary["classes"] == list(CLI_CLASSES) and summary["num_images"] == 30
    assert "<dog & co>" not in (cli_env / "run" / "index.html").read_text()     # escaped in the page
