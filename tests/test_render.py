"""Tests for debugatlas.render: feature inversion, receptive fields, exemplar crops, icon atlas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from debugatlas.core import DebugAtlasError
from debugatlas.capture import capture
from debugatlas.core import load_images
from debugatlas.render import (
    COLOR_MATRIX, FeatureInversion, FourierImage, RandomTransforms, cell_directions,
    decorrelate_colors, direction_objective, draw_icon_atlas, exemplar_crops, receptive_field, receptive_fields,
    whitening_matrix,
)


@pytest.fixture(scope="module")
def setup(trained_cnn, digits_data):
    """The session's trained SmallCNN (conftest.py), its layer3 centre vectors, four class directions."""
    model, val = trained_cnn, digits_data[1]
    acts = capture(model, val, "layer3", sampling="center")
    whitening = whitening_matrix(acts.vectors)
    means = torch.stack([acts.vectors[acts.labels == k].float().mean(0) for k in range(4)])
    return model, val, acts, cell_directions(means, whitening)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_objective_rises_with_steps(setup):
    model, _, _, dirs = setup
    short = FeatureInversion(model, "layer3", (1, 24, 24), steps=1).invert(dirs).objective
    long = FeatureInversion(model, "layer3", (1, 24, 24), steps=32).invert(dirs).objective
    assert (long > short).sum() >= 3
    assert long.mean() > 3 * short.abs().mean()


def test_same_seed_same_icons(setup):
    model, _, _, dirs = setup
    make = lambda seed: FeatureInversion(model, model.layer3, (1, 24, 24), steps=4, seed=seed,  # noqa: E731
                                         attempts=2, batch_size=3).invert(dirs)
    a, b, c = make(3), make(3), make(4)
    assert torch.equal(a.icons, b.icons) and torch.equal(a.objective, b.objective)
    assert not torch.equal(a.icons, c.icons)
    assert a.icons.dtype == torch.float32 and a.icons.shape == (4, 1, 24, 24)
    assert 0 <= a.icons.min() and a.icons.max() <= 1
    assert a.params["layer"] == "layer3" and a.params["objective_at"].startswith("centre position (3, 3)")


def test_icon_beats_noise_and_natural_images(setup):
    model, val, _, dirs = setup
    inv = FeatureInversion(model, "layer3", (1, 24, 24), steps=128, attempts=2)
    result = inv.invert(dirs)
    natural = load_images(val, range(300))
    noise = torch.rand(300, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    for k in range(len(dirs)):
        icon_score = inv.score(result.icons[k:k + 1], dirs[k:k + 1])
        assert torch.allclose(icon_score, result.objective[k:k + 1], rtol=1e-4, atol=1e-9)
        row = dirs[k:k + 1].expand(300, -1)
        assert icon_score > inv.score(noise, row).max()
        assert icon_score > inv.score(natural, row).max()


def test_whitening_well_conditioned_on_rank_deficient_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(10, 32, generator=gen))      # rank <= 10 of 32 channels
    x[:, :5] = 0                                           # dead channels
    ridge = 1e-2
    w = whitening_matrix(x, ridge=ridge)
    assert w.shape == (32, 32) and torch.isfinite(w).all()
    assert torch.allclose(w, w.T)
    eig = torch.linalg.eigvalsh(w.double())
    assert eig.min() > 0 and eig.max() / eig.min() <= 1 + 32 / ridge
    moment = x.double().T @ x.double() / 10
    expected = np.linalg.inv(moment.numpy() + ridge * moment.diagonal().mean().item() * np.eye(32))
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(whitening_matrix(torch.zeros(3, 4), ridge=0.5), 2 * torch.eye(4))


def test_objective_formula():
    h = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    expected = torch.tensor([3 * 0.6 ** 4, 1.0, 0.0])
    assert torch.allclose(direction_objective(h, v, power=4), expected)
    assert torch.allclose(direction_objective(-h[:1], v[:1]), torch.tensor([-3 * 0.1 ** 4]))


def test_model_state_and_hooks_restored(setup):
    model, _, _, dirs = setup
    flags = [p.requires_grad for p in model.parameters()]
    model.train()
    try:
        with torch.inference_mode():                       # as in Lightning validation
            result = FeatureInversion(model, "layer3", (1, 24, 24), steps=2).invert(dirs[:1])
            assert torch.is_inference_mode_enabled()
        assert torch.isfinite(result.objective).all()
        assert model.training and [p.requires_grad for p in model.parameters()] == flags
        assert _hooks(model) == 0 and torch.is_grad_enabled()
    finally:
        model.eval()                                       # the model is shared by the session


class _Flaky(nn.Module):
    """Two convs; forward raises between them from its `fail_at`-th call on."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x):
        x = self.a(x)
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("boom")
        return self.b(x)


@pytest.mark.parametrize("fail_at, error", [(1, DebugAtlasError), (3, RuntimeError)])
def test_state_restored_when_model_raises(fail_at, error):
    model = _Flaky(fail_at).train()
    with pytest.raises(error):
        FeatureInversion(model, "b", (1, 8, 8), steps=5).invert(torch.ones(2, 4))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert _hooks(model) == 0 and torch.is_grad_enabled()
    if fail_at == 1:
        with pytest.raises(RuntimeError, match="boom"):
            receptive_field(model, "b", (1, 8, 8), (2, 2))
        assert model.training and _hooks(model) == 0


def test_zero_direction_skipped_and_single_sample_cell(setup):
    model, _, acts, _ = setup
    single = cell_directions(acts.vectors[:1].float(), whitening_matrix(acts.vectors))
    dirs = torch.cat([torch.zeros(1, 32), single])
    result = FeatureInversion(model, "layer3", (1, 24, 24), steps=4).invert(dirs)
    assert result.skipped.tolist() == [True, False] and result.params["skipped"] == [0]
    assert torch.isnan(result.objective[0]) and torch.isfinite(result.objective[1])
    assert torch.all(result.icons[0] == 0.5)


def test_pooled_layer_and_colour_path():
    torch.manual_seed(0)
    rgb = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    result = FeatureInversion(rgb, "4", (3, 16, 16), steps=6).invert(torch.randn(3, 8))
    assert result.icons.shape == (3, 3, 16, 16) and result.params["pooled"]
    assert result.params["decorrelate"] and "pooled" in result.params["objective_at"]
    spatial = FeatureInversion(rgb, "2", (3, 16, 16), steps=6).invert(torch.randn(2, 8))
    assert spatial.params["objective_at"].startswith("centre position (3, 3) of 7x7")
    assert not FeatureInversion(rgb, "2", (3, 16, 16), steps=1, decorrelate=False).invert(
        torch.randn(1, 8)).params["decorrelate"]


def test_fourier_image_and_colour_decorrelation():
    image = FourierImage(2, (3, 8, 8), torch.Generator().manual_seed(0))
    with torch.no_grad():
        image.spectrum.zero_()
        image.spectrum[0, 1, 0, 0, 0] = 2.0                    # zero frequency of channel 1 only
    # DC amplitude = max(H, W) * sqrt(H W) = 64; irfft2 divides by H W = 64; then / 4.
    pre = torch.zeros(3)
    pre[1] = 0.5
    expected = torch.sigmoid(COLOR_MATRIX @ pre)
    out = image.image()
    assert out.shape == (2, 3, 8, 8) and torch.allclose(out[0], expected[:, None, None].expand(3, 8, 8), atol=1e-6)
    assert torch.allclose(out[1], torch.full((3, 8, 8), 0.5))
    assert torch.allclose(COLOR_MATRIX.norm(dim=0).max(), torch.tensor(1.0))
    assert torch.equal(decorrelate_colors(torch.ones(1, 1, 2, 2)), torch.ones(1, 1, 2, 2))  # 1 channel: no step


def test_identity_transform_and_seeded_transforms():
    images = torch.rand(3, 1, 10, 12, generator=torch.Generator().manual_seed(0))
    still = RandomTransforms(pad=0, jitter=0, scale=(1, 1), degrees=0)
    assert torch.allclose(still(images, torch.Generator()), images, atol=1e-5)
    moving = RandomTransforms()
    a = moving(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, moving(images, torch.Generator().manual_seed(1))) and a.shape == images.shape
    assert not torch.allclose(a, images)


def test_reduced_precision_icons_are_as_good_and_their_objective_is_measured_at_float32(setup):
    model, _, _, dirs = setup
    make = lambda precision: FeatureInversion(model, "layer3", (1, 24, 24), steps=64,  # noqa: E731
                                              precision=precision)
    full, reduced = make("float32"), make("bfloat16")
    a, b = full.invert(dirs), reduced.invert(dirs)
    assert b.params["precision"] == "bfloat16" and a.params["precision"] == "float32"
    assert not torch.equal(a.icons, b.icons)
    # the objective reported is the model's own (float32) score of the icon, not the autocast one
    torch.testing.assert_close(b.objective, full.score(b.icons, dirs), rtol=1e-4, atol=1e-6)
    # each icon is one optimisation run, so single icons vary either way; on the whole as good
    assert (b.objective > 0).all() and b.objective.mean() > 0.8 * a.objective.mean()


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(steps=-3), dict(attempts=0), dict(batch_size=0),
                                    dict(lr=0.0), dict(image_size=(24, 24)), dict(transforms="yes"),
                                    dict(precision="half")])
def test_bad_settings_raise(setup, kwargs):
    model = setup[0]
    options = dict(image_size=(1, 24, 24)) | kwargs
    with pytest.raises(DebugAtlasError):
        FeatureInversion(model, "layer3", **options)


def test_bad_inputs_raise(setup):
    model, _, _, dirs = setup
    inv = FeatureInversion(model, "layer3", (1, 24, 24), steps=2)
    with pytest.raises(DebugAtlasError, match="non-empty"):
        inv.invert(torch.zeros(0, 32))
    with pytest.raises(DebugAtlasError, match="32"):
        inv.invert(torch.ones(2, 7))
    with pytest.raises(DebugAtlasError, match="NaN"):
        inv.invert(torch.full((1, 32), float("nan")))
    with pytest.raises(DebugAtlasError, match="4x4"):
        FeatureInversion(model, "layer3", (1, 2, 2), steps=2).invert(dirs)
    with pytest.raises(DebugAtlasError, match="layer3"):
        FeatureInversion(model, "layer_3", (1, 24, 24))
    assert _hooks(model) == 0


def test_receptive_field_of_known_conv_stack(setup):
    stack = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
    # conv3 at the pooled grid sees 3 cells = 6 input rows of the pool, + 2 + 2 for the two convs: 10.
    assert receptive_field(stack, "5", (1, 32, 32), (4, 6)) == (4, 14, 8, 18)
    assert receptive_field(stack, "5", (1, 32, 32), (0, 0)) == (0, 6, 0, 6)      # clipped at the border
    model = setup[0]
    # SmallCNN layer3: 3 -> pool 6 -> conv 8 -> pool 16 -> conv 18 pixels.
    assert receptive_field(model, "layer3", (1, 24, 24), (3, 3)) == (5, 23, 5, 23)
    assert receptive_field(model, "layer2", (1, 24, 24), (3, 3)) == (9, 19, 9, 19)
    assert _hooks(model) == 0


def test_receptive_fields_of_many_positions_match_one_at_a_time():
    def stack():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 5, padding=2))

    positions = [(0, 0), (3, 5), (7, 7), (3, 5), (-1, -1), (2, 6)]
    together = receptive_fields(stack(), "3", (1, 16, 16), positions)  # a fresh model: nothing cached
    alone = [receptive_field(stack(), "3", (1, 16, 16), pos) for pos in positions]
    assert together == alone
    # conv5 over the pooled grid at p sees pooled p-2..p+2, i.e. input pixels 2p-5..2p+6 (clipped)
    assert together[0] == (0, 7, 0, 7) and together[1] == (1, 13, 5, 16) and together[4] == (0, 16, 0, 16)
    with pytest.raises(DebugAtlasError, match="outside"):
        receptive_fields(stack(), "3", (1, 16, 16), [(1, 1), (8, 0)])


def test_receptive_and_effective_fields_are_read_off_the_same_input_gradients():
    from debugatlas.core.gradients import position_input_gradients

    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    nn.init.ones_(conv.weight)
    model = nn.Sequential(conv).train()
    support = position_input_gradients(model, "0", (1, 8, 8), [(4, 4), (0, 0)], lambda g: (g != 0).any(0)[0],
                                       trials=2, seed=0)
    box = torch.zeros(8, 8, dtype=torch.bool)
    box[3:6, 3:6] = True  # a 3x3 box filter at (4, 4) sees rows and columns 3..5
    assert torch.equal(support[0], box) and int(support[1].sum()) == 4  # (0, 0): clipped to 2x2
    (centre,) = position_input_gradients(model, "0", (1, 8, 8), None, lambda g: g.abs().sum((0, 1)), trials=2, seed=0)
    assert torch.equal(centre != 0, box)  # None: the centre position (4, 4)
    # read as the non-zero box of the crop
    assert receptive_field(model, "0", (1, 8, 8), (4, 4)) == (3, 6, 3, 6)
    assert model.training and conv.weight.requires_grad and _hooks(model) == 0
    flat = nn.Sequential(nn.Flatten())
    assert position_input_gradients(flat, "0", (1, 4, 4), None, lambda g: g, trials=1, seed=0) is None
    with pytest.raises(DebugAtlasError, match="outside"):
        position_input_gradients(flat, "0", (1, 4, 4), [(0, 0)], lambda g: g, trials=1, seed=0)


def test_exemplar_crops_cut_the_receptive_field(setup):
    model, val, acts, _ = setup
    crops = exemplar_crops(model, "layer3", val, acts, [0, 5])
    assert crops.shape == (2, 1, 18, 18)
    image = val[int(acts.image_ids[5])][0]
    assert torch.allclose(crops[1], image[:, 5:23, 5:23])          # centre sampling: position (3, 3)
    assert exemplar_crops(model, "layer3", val, acts, [1], size=8).shape == (1, 1, 8, 8)
    with pytest.raises(DebugAtlasError):
        exemplar_crops(model, "layer3", val, acts, [len(acts)])


def test_draw_icon_atlas_places_and_fades_icons():
    black, grey = torch.zeros(1, 4, 4), torch.full((3, 8, 8), 0.5)
    image = draw_icon_atlas({(1, 0): black, (0, 2): grey}, {(1, 0): 100, (0, 2): 1}, grid_size=3, cell_px=4)
    assert image.shape == (12, 12, 3) and image.dtype == np.uint8
    assert (image[0:4, 4:8] == 0).all()                      # cell (1, 0): column 1, row 0, fully opaque
    assert (image[0:4, 0:4] == 255).all()                    # no icon: white
    faded = image[8:12, 0:4]                                 # cell (0, 2): one sample, faint
    assert (faded > 128).all() and (faded < 255).all()
    counts = np.zeros((3, 3)); counts[1, 0] = 100
    assert np.array_equal(draw_icon_atlas({(1, 0): black}, counts, 3, 4)[0:4, 4:8], image[0:4, 4:8])
    with pytest.raises(DebugAtlasError):
        draw_icon_atlas({(3, 0): black}, counts, 3, 4)


def test_inversion_relaxes_strict_determinism_only_on_cuda_and_restores_it():
    from debugatlas.render.invert import _nondeterministic_ok

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(True)
        with _nondeterministic_ok(torch.device("cuda")):
            # grid_sample's backward has no deterministic CUDA kernel: warn instead of raising
            assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        with _nondeterministic_ok(torch.device("cpu")):
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_run_whitening_comes_from_the_random_samples_when_guided_ones_crowd_one_direction():
    """Guided samples piled on one direction (a trigger) must not make that direction look common:
    the whitening is taken from the uniformly random vectors, so the direction keeps its weight."""
    from debugatlas.capture import ActivationSet
    from debugatlas.capture.activations import RULE_ATTRIBUTION, RULE_RANDOM
    from debugatlas.pipeline.icons import run_whitening

    g = torch.Generator().manual_seed(0)
    c, n_random, n_guided = 8, 400, 400
    trigger = torch.zeros(c)
    trigger[0] = 5.0
    vectors = torch.cat([torch.randn(n_random, c, generator=g),
                         trigger + 0.1 * torch.randn(n_guided, c, generator=g)])
    rule = torch.tensor([RULE_RANDOM] * n_random + [RULE_ATTRIBUTION] * n_guided, dtype=torch.int8)
    n = n_random + n_guided
    acts = ActivationSet(vectors.half(), torch.arange(n), torch.zeros(n, dtype=torch.long),
                         torch.zeros(n, dtype=torch.long), torch.zeros(n, 2, dtype=torch.long), "x", (4, 4), n, rule)
    from_random, from_all = run_whitening(acts), whitening_matrix(vectors)
    assert torch.allclose(from_random, whitening_matrix(vectors[:n_random].half().float()))
    weight = lambda w: float(trigger @ w @ trigger) / float(trigger @ trigger)  # noqa: E731
    assert weight(from_random) > 10 * weight(from_all)
    m = n_random + 10
    mostly_guided = torch.tensor([RULE_ATTRIBUTION] * (m - 15) + [RULE_RANDOM] * 15, dtype=torch.int8)
    few = ActivationSet(vectors[:m].half(), torch.arange(m), torch.zeros(m, dtype=torch.long),
                        torch.zeros(m, dtype=torch.long), torch.zeros(m, 2, dtype=torch.long), "x", (4, 4), m,
                        mostly_guided)
    assert torch.allclose(run_whitening(few), whitening_matrix(vectors[:m].half().float()))  # too few random
