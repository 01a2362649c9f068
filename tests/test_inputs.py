"""Tests for debugatlas.core.inputs: each up-front check on hand-made inputs, and the suite-folder hint."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from debugatlas.core.errors import DebugAtlasError
from debugatlas.core.inputs import (
    CheckedDataset, LogitsOf, auto_samples_per_image, check_channels, check_class_names, check_label,
    check_logits, check_model, check_normalize, checked_dataset, dataset_labels, fit_grid, inspect_dataset,
    pixel_scale, resolve_pairs, to_unit_range,
)
from debugatlas.models import SmallCNN


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items, classes=None, labels_attr=None):
        self.items = items
        if classes is not None:
            self.classes = classes
        if labels_attr is not None:
            self.labels = labels_attr

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _state(model):
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
            {k: v.clone() for k, v in model.state_dict().items()})


def _same_state(a, b):
    return a[:3] == b[:3] and all(torch.equal(a[3][k], b[3][k]) for k in a[3])


# --- pixels -------------------------------------------------------------------------------------

def test_pixel_scale_by_dtype_and_range():
    assert pixel_scale(torch.tensor([[[0.0, 1.0]]])) == 1.0
    assert pixel_scale(torch.tensor([[[0.0, 1.0005]]])) == 1.0          # resampling overshoot tolerated
    assert pixel_scale(torch.tensor([[[0, 3]]], dtype=torch.uint8)) == 1 / 255   # uint8 even when dark
    assert pixel_scale(torch.tensor([[[0.0, 200.0]]])) == 1 / 255
    assert pixel_scale(torch.tensor([[[0, 255]]], dtype=torch.int64)) == 1 / 255
    assert pixel_scale(np.zeros((4, 4), dtype=np.float32)) == 1.0           # [H, W] numpy accepted


@pytest.mark.parametrize("image, words", [
    (torch.tensor([[[0.5, float("nan")]]]), ["dataset[7]", "NaN"]),
    (torch.tensor([[[0.5, float("inf")]]]), ["dataset[7]", "infinite"]),
    (torch.tensor([[[-2.1, 2.6]]]), ["dataset[7]", "normalised", "normalize=(mean, std)"]),
    (torch.tensor([[[0.0, 300.0]]]), ["dataset[7]", "up to 300"]),
    (torch.tensor([[[0, 1000]]], dtype=torch.int32), ["dataset[7]", "int32", "1000"]),
    (torch.zeros(2, 3, 4, 5), ["dataset[7]", "(2, 3, 4, 5)", "[C, H, W]"]),
    (torch.zeros(16, 16, 3), ["channels look last", "permute"]),
    ("not an image", ["dataset[7][0] is a str", "ToTensor"]),
])
def test_pixel_errors_name_index_and_fix(image, words):
    with pytest.raises(DebugAtlasError) as info:
        pixel_scale(image, 7)
    for word in words:
        assert word in str(info.value)
    assert "HINT" in str(info.value)


def test_to_unit_range_converts_8bit_by_hand():
    out = to_unit_range(torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8), 0, 1.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[[0.0, 1.0], [0.2, 0.4]]]))
    floats = to_unit_range(torch.tensor([[[0.0, 127.5]]]), 0, 1 / 255)
    assert torch.allclose(floats, torch.tensor([[[0.0, 0.5]]]))
    assert to_unit_range(torch.tensor([[[-0.0004, 1.0004]]]), 0, 1.0).tolist() == [[[0.0, 1.0]]]
    with pytest.raises(DebugAtlasError, match=r"dataset\[3\].*same pixel range"):
        to_unit_range(torch.tensor([[[0.0, 90.0]]]), 3, 1.0)   # a [0, 255] image in a [0, 1] dataset


def test_checked_dataset_converts_uint8_with_one_warning():
    gen = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (6, 3, 5, 5), generator=gen, dtype=torch.uint8)
    data = ListDataset([(raw[i], i % 2) for i in range(6)], classes=["a", "b"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checked = checked_dataset(data, num_classes=2)
        items = [checked[i] for i in range(6)] + [checked[i] for i in range(6)]
    assert [str(w.message).count("divided by 255") for w in caught] == [1]
    assert checked.classes == ["a", "b"] and len(checked) == 6 and checked.scale == 1 / 255
    for i, (image, label) in enumerate(items[:6]):
        assert image.dtype == torch.float32 and label == i % 2
        assert torch.equal(image, raw[i].float().div(255))          # exactly what ToTensor gives
    assert checked_dataset(checked) is checked


def test_checked_dataset_leaves_unit_floats_alone_and_scales_255_floats():
    images = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # no warning for proper input
        plain = checked_dataset(ListDataset([(images[i], 0) for i in range(4)]))
        assert all(torch.equal(plain[i][0], images[i]) for i in range(4))
    scaled = checked_dataset(ListDataset([(images[i] * 255, 0) for i in range(4)]))
    with pytest.warns(UserWarning, match="divided by 255"):
        first = scaled[0][0]
    assert torch.allclose(first, images[0], atol=1e-6)
    # an image in [0, 1] within a dataset found to be 0..255 is divided too (one scale per dataset)
    mixed = CheckedDataset(ListDataset([(torch.full((1, 2, 2), 0.5), 0)]), scale=1 / 255)
    with pytest.warns(UserWarning):
        assert torch.allclose(mixed[0][0], torch.full((1, 2, 2), 0.5 / 255))


# --- labels and datasets ------------------------------------------------------------------------

def test_check_label_types_and_range():
    assert check_label(np.int64(2), 0, 3) == 2 and check_label(torch.tensor(1), 0, 3) == 1
    assert check_label(torch.tensor([2]), 0, 3) == 2
    for bad, words in [(1.0, "float"), (True, "bool"), (torch.tensor([0.0, 1.0]), "one-hot"),
                       ("cat", "str"), (torch.tensor(1.0), "float")]:
        with pytest.raises(DebugAtlasError, match=words):
            check_label(bad, 4, 3)
    with pytest.raises(DebugAtlasError, match=r"dataset\[4\] has label 3, outside the 3 classes \(0..2\)"):
        check_label(3, 4, 3)
    with pytest.raises(DebugAtlasError, match="label -1"):
        check_label(-1, 4)


def test_inspect_dataset_shapes_labels_and_counts():
    items = [(torch.rand(5, 5), k % 3) for k in range(40)]                        # [H, W] grayscale
    info = inspect_dataset(ListDataset(items, labels_attr=[k % 3 for k in range(40)]), sample=5, num_classes=3)
    assert info.n == 40 and info.shape == (1, 5, 5) and info.scale == 1.0
    assert info.checked[:2] == (0, 39) and len(info.checked) == 7 and len(set(info.checked)) == 7
    assert info.labels == tuple(i % 3 for i in info.checked)
    assert info.class_counts == (14, 13, 13)
    assert inspect_dataset(ListDataset(items), sample=5, num_classes=3).class_counts is None
    # classes 2..4 have no images
    two_of_five = ListDataset([(torch.rand(5, 5), y) for y in (0, 1, 0, 1)], labels_attr=[0, 1, 0, 1])
    assert inspect_dataset(two_of_five, num_classes=5).class_counts == (2, 2, 0, 0, 0)
    assert inspect_dataset(two_of_five).class_counts == (2, 2)               # K unknown: up to the largest label
    huge = ListDataset([(torch.rand(5, 5), y) for y in (0, 10 ** 9)], labels_attr=[0, 10 ** 9])
    assert inspect_dataset(huge).class_counts is None                        # no billion-entry count
    with pytest.raises(DebugAtlasError, match=f"label {10 ** 9}"):
        inspect_dataset(huge, num_classes=3)


def test_inspect_dataset_errors():
    with pytest.raises(DebugAtlasError, match="empty"):
        inspect_dataset(ListDataset([]))
    ragged = [(torch.rand(1, 5, 5), 0), (torch.rand(1, 6, 5), 0)]
    with pytest.raises(DebugAtlasError, match=r"dataset\[1\]\[0\] has shape \(1, 6, 5\) but dataset\[0\]\[0\] has"):
        inspect_dataset(ListDataset(ragged))
    with pytest.raises(DebugAtlasError, match=r"dataset\[0\] is a Tensor, not an \(image, label\) pair"):
        inspect_dataset(ListDataset([torch.rand(1, 2, 2)]))
    # a label far from the sampled items is still found through `.labels`
    labels = [0] * 500
    labels[321] = 9
    data = ListDataset([(torch.rand(1, 2, 2), y) for y in labels], labels_attr=labels)
    with pytest.raises(DebugAtlasError, match=r"dataset\[321\] has label 9"):
        inspect_dataset(data, sample=3, num_classes=3)
    with pytest.raises(DebugAtlasError, match="no length"):
        inspect_dataset(iter([]))


def test_dataset_labels_only_from_integer_arrays():
    assert dataset_labels(ListDataset([0, 1], labels_attr=torch.tensor([1, 0]))).tolist() == [1, 0]
    assert dataset_labels(ListDataset([0, 1], labels_attr=[0.5, 1.0])) is None
    assert dataset_labels(ListDataset([0, 1])) is None


def test_class_names_duplicates_and_html():
    assert check_class_names(["<b>cat</b>", "dog & co"], 2) == ["<b>cat</b>", "dog & co"]
    with pytest.raises(DebugAtlasError, match=r"'cat' is used twice \(classes 0 and 2\)"):
        check_class_names(["cat", "dog", "cat"])
    with pytest.raises(DebugAtlasError, match="empty name"):
        check_class_names(["cat", " "])
    with pytest.raises(DebugAtlasError, match="predicts 3 classes but there are 2 class names"):
        check_class_names(["a", "b"], 3)
    with pytest.raises(DebugAtlasError, match="list of strings"):
        check_class_names("ab")


# --- the model ----------------------------------------------------------------------------------

def test_channels_grayscale_into_rgb_model_says_how():
    model = SmallCNN(in_channels=3, num_classes=4, width=4).train()
    before = _state(model)
    with pytest.raises(DebugAtlasError) as info:
        check_channels(model, torch.rand(2, 1, 12, 12))
    assert "1 channel(s)" in str(info.value) and "'layer1.0'" in str(info.value)
    assert "Grayscale(num_output_channels=3)" in str(info.value) and "--grayscale" in str(info.value)
    assert _same_state(_state(model), before)
    with pytest.raises(DebugAtlasError, match=r"Grayscale\(1\)"):
        check_channels(SmallCNN(in_channels=1, width=4), torch.rand(2, 3, 12, 12))
    check_channels(model, torch.rand(2, 3, 12, 12))            # no error
    assert _same_state(_state(model), before)


def test_channels_of_a_flattening_linear_model():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
    with pytest.raises(DebugAtlasError, match=r"192 features = 3 channel\(s\) x 64 pixels"):
        check_channels(mlp, torch.rand(2, 1, 8, 8))
    with pytest.raises(DebugAtlasError, match="gets 243"):
        check_channels(mlp, torch.rand(2, 3, 9, 9))


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = SmallCNN(in_channels=1, num_classes=3, width=4)

    def forward(self, x):
        return self.net(x), x.mean()


class DictNet(TupleNet):
    def forward(self, x):
        return {"features": x.flatten(1)[:, :5], "logits": self.net(x)}


def test_tuple_and_dict_outputs_name_the_wrapper():
    images = torch.rand(3, 1, 12, 12)
    with pytest.raises(DebugAtlasError) as info:
        check_model(TupleNet(), images)
    assert "returned a tuple of 2" in str(info.value) and "LogitsOf(model, 0)" in str(info.value)
    with pytest.raises(DebugAtlasError) as info:
        check_model(DictNet(), images)
    assert "'logits': a tensor of shape (3, 3)" in str(info.value) and "LogitsOf(model, 'logits')" in str(info.value)
    tuple_net = TupleNet()
    wrapped = LogitsOf(tuple_net, 0)
    assert check_model(wrapped, images) == 3
    assert torch.equal(wrapped(images), tuple_net(images)[0])
    assert check_model(LogitsOf(DictNet(), "logits"), images) == 3


def test_logits_shape_checks():
    assert check_logits(torch.zeros(4, 7), 4) == 7
    with pytest.raises(DebugAtlasError, match="1 class"):
        check_logits(torch.zeros(4, 1), 4)
    with pytest.raises(DebugAtlasError, match=r"\[4, K\]"):
        check_logits(torch.zeros(4, 2, 3), 4)
    with pytest.raises(DebugAtlasError, match="NaN"):
        check_logits(torch.full((4, 2), float("nan")), 4)
    with pytest.raises(DebugAtlasError, match="LogitsOf\\(model, KEY\\)"):
        check_logits((torch.zeros(4, 2), torch.zeros(4, 3)), 4)       # ambiguous: no guess


def test_model_errors_become_debugatlas_errors_and_model_is_left_as_found():
    model = SmallCNN(in_channels=1, num_classes=3, width=4)
    model.fc = nn.Linear(5, 3)                                     # wrong head: fails inside forward
    model.train()
    before = _state(model)
    with pytest.raises(DebugAtlasError, match=r"raised RuntimeError on images of shape \(2, 1, 12, 12\)"):
        check_model(model, torch.rand(2, 1, 12, 12))
    assert _same_state(_state(model), before) and model.training


def test_check_normalize():
    assert check_normalize(([0.5], [0.25]), 3) == ((0.5,), (0.25,))
    assert check_normalize(None, 3) is None
    with pytest.raises(DebugAtlasError, match=r"2 mean\(s\) and 2 std\(s\) for images with 3 channel"):
        check_normalize(([0, 0], [1, 1]), 3)
    with pytest.raises(DebugAtlasError, match="positive"):
        check_normalize(([0], [0]), 1)
    with pytest.raises(DebugAtlasError, match=r"\(mean, std\)"):
        check_normalize("imagenet", 3)


# --- pairs --------------------------------------------------------------------------------------

NAMES = ["airplane", "cat", "dog", "ship"]


def test_resolve_pairs_by_name_and_index():
    assert resolve_pairs("auto", NAMES) is None and resolve_pairs(None, NAMES) is None
    assert resolve_pairs([("cat", "dog"), (3, 0), [np.int64(1), "ship"]], NAMES) == [(1, 2), (3, 0), (1, 3)]
    assert resolve_pairs([("cat", "dog"), ("cat", "dog")], NAMES) == [(1, 2)]
    assert resolve_pairs([("0", "1")], ["0", "1", "2"]) == [(0, 1)]


@pytest.mark.parametrize("pairs, words", [
    ([("grid", "cat")], ["unknown class 'grid'", "airplane"]),
    ([("Cat", "dog")], ["did you mean 'cat'"]),
    ([("cats", "dog")], ["did you mean 'cat'"]),
    ([(4, 0)], ["index 4, outside 0..3"]),
    ([(True, 0)], ["True"]),
    ([("cat", "cat")], ["same class twice"]),
    (("cat", "dog"), ["one pair, not a list", "[('cat', 'dog')]"]),
    ([], ["names no pair"]),
    ("cat", ["'auto' or a list"]),
    ([("cat",)], ["not an (A, B) pair"]),
])
def test_resolve_pairs_errors(pairs, words):
    with pytest.raises(DebugAtlasError) as info:
        resolve_pairs(pairs, NAMES)
    for word in words:
        assert word in str(info.value)


def test_resolve_pairs_class_without_images():
    with pytest.raises(DebugAtlasError, match="no images of class 'ship'"):
        resolve_pairs([("ship", "cat")], NAMES, class_counts=[5, 5, 5, 0])
    assert resolve_pairs([("cat", "ship")], NAMES, class_counts=[5, 5, 5, 0]) == [(1, 3)]
    with pytest.raises(DebugAtlasError, match="no images of class 'dog'"):   # counts only up to the largest label
        resolve_pairs([("dog", "cat")], NAMES, class_counts=[5, 5])


def test_pairs_list_long_class_lists_briefly():
    names = [f"class{k}" for k in range(1000)]
    with pytest.raises(DebugAtlasError) as info:
        resolve_pairs([("nope", "class1")], names)
    assert "(1000 classes)" in str(info.value) and "class999" not in str(info.value)


# --- density ------------------------------------------------------------------------------------

def test_auto_samples_per_image_by_hand():
    # 20 x 20 grid x 10 per cell = 4000 vectors
    assert auto_samples_per_image(120, 36, 20, 100_000) == 34          # ceil(4000 / 120)
    assert auto_samples_per_image(4000, 36, 20, 100_000) == 1
    assert auto_samples_per_image(50_000, 36, 20, 100_000) == 1
    assert auto_samples_per_image(120, 4, 20, 100_000) == 4            # an image has 4 positions
    assert auto_samples_per_image(1000, 36, 20, 3000) == 3             # the cap keeps 3000
    assert auto_samples_per_image(10, 36, 20, 5) == 1                  # never below one
    assert auto_samples_per_image(100, 400, 40, 10 ** 6, per_cell=5) == 80
    with pytest.raises(DebugAtlasError, match="n_images=0"):
        auto_samples_per_image(0, 36, 20, 100)


def test_auto_samples_reach_the_density_when_nothing_limits():
    for n in (1, 7, 99, 1234, 3999):
        k = auto_samples_per_image(n, 10 ** 6, 20, 10 ** 9)
        assert k * n >= 4000 and (k - 1) * n < 4000


def test_fit_grid_by_hand():
    assert fit_grid(4000, 20) == (20, None)
    grid, reason = fit_grid(3999, 20)
    assert grid == 19 and "3999 activation vectors" in reason and "19x19" in reason and "sparse" not in reason
    grid, reason = fit_grid(120, 20)                         # the 120 images, one sample each
    assert grid == 3 and "0.3 per cell on a 20x20 grid" in reason and "HINT" in reason
    grid, reason = fit_grid(5, 20)
    assert grid == 2 and "still sparse (1.2 per cell)" in reason
    assert fit_grid(0, 20)[0] == 2 and fit_grid(0, 1)[0] == 1
    assert fit_grid(50, 5, per_cell=2) == (5, None)
    with pytest.raises(DebugAtlasError):
        fit_grid(-1, 20)


# --- the suite folder ---------------------------------------------------------------------------

def test_suite_load_of_a_run_directory_names_its_suite_folder(tmp_path):
    from debugatlas.patches.suite import PatchSuite

    run = tmp_path / "runs" / "x"
    (run / "suite" / "pair0").mkdir(parents=True)
    (run / "suite" / "pair1").mkdir(parents=True)
    for pair in ("pair0", "pair1"):
        (run / "suite" / pair / "suite.json").write_text(json.dumps({"schema_version": 1}))
    (run / "summary.json").write_text("{}")
    with pytest.raises(DebugAtlasError) as info:
        PatchSuite.load(run)
    message = str(info.value)
    assert "looks like a run directory" in message and f"--suite {run / 'suite'}" in message
    assert "pair0, pair1" in message
    nested = tmp_path / "elsewhere"
    (nested / "a").mkdir(parents=True)
    (nested / "a" / "suite.json").write_text("{}")
    with pytest.raises(DebugAtlasError, match="found in sub-folders"):
        PatchSuite.load(nested)


def test_checked_dataset_learns_the_number_of_classes_later():
    items = [(torch.rand(1, 2, 2), y) for y in (0, 1, 2, 1)]
    first = checked_dataset(ListDataset(items))
    assert first[2][1] == 2                                   # no class count yet: any label >= 0
    second = checked_dataset(first, num_classes=2)
    assert second is not first and second.scale == first.scale and checked_dataset(second, num_classes=2) is second
    with pytest.raises(DebugAtlasError, match=r"dataset\[2\] has label 2, outside the 2 classes"):
        second[2]
    with pytest.raises(DebugAtlasError, match=r"dataset\[2\] has label 2"):
        checked_dataset(checked_dataset(ListDataset(items, labels_attr=[0, 1, 2, 1])), num_classes=2)


def test_layer_positions_interior_and_model_left_as_found():
    model = SmallCNN(in_channels=1, num_classes=3, width=4).train()
    before = _state(model)
    images = torch.rand(2, 1, 16, 16)
    # 16 px: layer1 8 x 8 -> 6 x 6 interior; layer2 4 x 4 -> 2 x 2; fc is [B, K]: one position
    from debugatlas.core.inputs import layer_positions

    assert layer_positions(model, model.layer1, "layer1", images) == 36
    assert layer_positions(model, model.layer2, "layer2", images) == 4
    assert layer_positions(model, model.fc, "fc", images) == 1
    assert layer_positions(model, model.layer2, "layer2", torch.rand(1, 1, 8, 8)) == 4   # 2 x 2: whole sides
    assert _same_state(_state(model), before) and model.training


def test_every_8bit_value_converts_exactly():
    values = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    expected = torch.tensor([k / 255 for k in range(256)], dtype=torch.float32).view(1, 16, 16)
    assert torch.equal(to_unit_range(values, 0, 1.0), expected)
    assert torch.equal(to_unit_range(values.float(), 0, 1 / 255), expected)


def test_conversion_never_writes_into_the_dataset_and_accepts_inference_tensors():
    image = torch.tensor([[[-0.0005, 0.5, 1.0005]]])
    kept = image.clone()
    assert to_unit_range(image, 0, 1.0).tolist() == [[[0.0, 0.5, 1.0]]]
    assert torch.equal(image, kept)                       # the user's tensor is not clamped in place
    with torch.inference_mode():
        made_in_inference = torch.tensor([[[0.2, 1.0004]]])
    out = to_unit_range(made_in_inference, 0, 1.0)       # used outside inference mode, as gradients are
    assert not out.is_inference() and out.tolist() == [[[pytest.approx(0.2), 1.0]]]
