"""Patch synthesis, flip-rate evaluation with controls, refinement, and the PatchSuite files."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _planted import pasted_flip_rate, train_until_learned
from torch import nn

from debugatlas.core import DebugAtlasError
from debugatlas.core import load_images
from debugatlas.data import PlantedShortcut, TensorImageDataset, digits
from debugatlas.models import SmallCNN, train_classifier
from debugatlas.artifacts.summary import patch_rows
from debugatlas.patches import (
    Experiment, KeepRule, Patch, candidate_patches, control_patches, evaluate_patches, placement_positions,
    refine_patch,
)
from debugatlas.patches.suite import PatchSuite, build_suite

# -- a hand-made model: class 1 (B) scores the mean of the bottom-right 4x4 region of an 8x8 image --
A, B = 0, 1
VALUES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.0, 0.0, 0.0]  # region value of each image of A
COUNTED = [v for v in VALUES if v < 0.5]  # the 0.6 and 0.7 images are already predicted B


class RegionModel(nn.Module):
    """logits = [0.5, mean(x[..., 4:, 4:]), -1]: a white patch over the region flips A to B."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        region = x[:, :, 4:, 4:].mean((1, 2, 3)) * self.scale
        return torch.stack([torch.full_like(region, 0.5), region, torch.full_like(region, -1.0)], 1)


def region_images() -> torch.Tensor:
    images = torch.zeros(len(VALUES), 1, 8, 8)
    for k, v in enumerate(VALUES):
        images[k, :, 4:, 4:] = v
    return images


def p_b(v: float) -> float:
    return math.exp(v) / (math.exp(0.5) + math.exp(v) + math.exp(-1.0))


def region_after(v: float, overlap: int) -> float:
    return (overlap + (16 - overlap) * v) / 16


def overlap(r: int, c: int, size: int) -> int:
    rows = max(0, min(r + size, 8) - max(r, 4))
    cols = max(0, min(c + size, 8) - max(c, 4))
    return rows * cols


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


WHITE2 = Patch("white2", None, "icon", torch.ones(1, 2, 2), resize=False)
WHITE_R = Patch("white-r", (3, 4), "icon", torch.ones(1, 1, 1), resize=True)


def test_flip_rates_match_hand_computation():
    model = RegionModel()
    experiment = Experiment(A, B, sizes=(0.25, 0.5), n_random=8, seed=3)
    ev = evaluate_patches(model, region_images(), [WHITE2, WHITE_R], experiment, images_b=torch.ones(3, 1, 8, 8))
    assert ev.n_images == len(COUNTED) == 8 and ev.n_offered == 10
    before = sum(p_b(v) for v in COUNTED) / 8

    # native 2x2: the top-left corner never touches the region; at the bottom-right corner only
    # the image with v = 0.4 crosses 0.5 ((4 + 12 * 0.4) / 16 = 0.55; v = 0.3 gives 0.475).
    static, dynamic = ev.get("white2", "static"), ev.get("white2", "dynamic")
    assert static.flip_rate == 0.0 and static.n_images == 8
    assert static.p_b_before == pytest.approx(before, abs=1e-6)
    assert static.p_b_after == pytest.approx(before, abs=1e-6)
    assert dynamic.flip_rate == 1 / 8 and dynamic.best_config == (0.25, 6, 6)
    # dynamic P(B): per image the best corner, which is the bottom-right one
    assert dynamic.p_b_after == pytest.approx(sum(p_b(region_after(v, 4)) for v in COUNTED) / 8, abs=1e-6)

    # random: the same seeded positions for every image; flip iff the region mean exceeds 0.5
    positions = placement_positions(8, 8, 2, 2, 8, seed=3)
    flips = [[region_after(v, overlap(r, c, 2)) > 0.5 for v in COUNTED] for r, c in positions]
    rand = ev.get("white2", "random")
    assert rand.flip_rate == sum(map(sum, flips)) / 64
    assert rand.best_flip_rate == max(sum(f) for f in flips) / 8
    expected_after = np.mean([[p_b(region_after(v, overlap(r, c, 2))) for v in COUNTED] for r, c in positions])
    assert rand.p_b_after == pytest.approx(expected_after, abs=1e-6)

    # resized 1x1 white: 2 px (0.25) or 4 px (0.5); 4 px at the bottom-right whitens the region
    assert ev.get("white-r", "static").flip_rate == 0.0
    dyn = ev.get("white-r", "dynamic")
    assert dyn.flip_rate == 1.0 and dyn.best_config == (0.5, 4, 4) and dyn.cell == (3, 4)
    assert dyn.p_b_after == pytest.approx(p_b(1.0), abs=1e-6)


def test_only_correct_images_counted_and_dynamic_at_least_static():
    model = RegionModel()
    images = region_images()
    ev = evaluate_patches(model, images, [WHITE2, WHITE_R], Experiment(A, B, sizes=(0.25, 0.5)), images_b=images)
    assert ev.n_images == 8
    for r in ev.results:
        assert r.n_images == 8
        if r.placement == "dynamic":
            assert r.flip_rate >= ev.get(r.patch_id, "static").flip_rate
    # no image is counted when the model gets none right
    none = evaluate_patches(model, images[5:7], [WHITE2], Experiment(A, B), images_b=images)
    assert none.n_images == 0 and all(math.isnan(r.flip_rate) for r in none.results)


def test_controls_share_sizes_and_placements():
    images_b = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ev = evaluate_patches(RegionModel(), region_images(), [WHITE2, WHITE_R],
                          Experiment(A, B, sizes=(0.25, 0.5), n_random=4), images_b=images_b)
    controls = {(r.source, r.geometry) for r in ev.controls()}
    assert controls == {("noise", "resized"), ("natural", "resized"),
                        ("noise", "native-2x2"), ("natural", "native-2x2")}
    for placement in ("static", "dynamic", "random"):
        assert {r.source for r in ev.controls(placement)} == {"noise", "natural"}
        for r in ev.candidates(placement):
            noise = [c for c in ev.controls(placement) if c.source == "noise" and c.geometry == r.geometry][0]
            assert r.noise_flip_rate == noise.flip_rate and r.natural_flip_rate is not None
    # resized controls are pasted at the same fractions as the resized candidates
    assert ev.get("noise-resized", "static").size_frac == ev.get("white-r", "static").size_frac == 0.25
    frame = ev.to_frame()
    assert len(frame) == 6 * 3 and {"flip_rate", "noise_flip_rate", "placement"} <= set(frame.columns)
    ranked = ev.ranked("dynamic")
    assert [r.lift for r in ranked] == sorted((r.lift for r in ranked), reverse=True)
    # against dark images of B (natural crops that flip nothing) the resized white patch wins
    dark = evaluate_patches(RegionModel(), region_images(), [WHITE2, WHITE_R],
                            Experiment(A, B, sizes=(0.25, 0.5), n_random=4), images_b=torch.zeros(4, 1, 8, 8))
    assert [r.patch_id for r in dark.ranked("dynamic")] == ["white-r", "white2"]


def test_control_patches_one_pair_per_geometry_and_seeded():
    images_b = torch.rand(5, 1, 8, 8)
    patches = [WHITE2, WHITE_R, Patch("big", None, "exemplar", torch.ones(1, 12, 3), resize=False)]
    controls = control_patches(patches, images_b, (1, 8, 8), sizes=(0.25, 0.5), seed=1)
    assert [(c.id, tuple(c.image.shape), c.resize) for c in controls] == [
        ("noise-native-2x2", (1, 2, 2), False), ("natural-native-2x2", (1, 2, 2), False),
        ("noise-native-8x3", (1, 8, 3), False), ("natural-native-8x3", (1, 8, 3), False),
        ("noise-resized", (1, 4, 4), True), ("natural-resized", (1, 4, 4), True)]
    again = control_patches(patches, images_b, (1, 8, 8), sizes=(0.25, 0.5), seed=1)
    assert all(torch.equal(x.image, y.image) for x, y in zip(controls, again))
    assert [c.source for c in control_patches(patches, None, (1, 8, 8))] == ["noise"] * 3
    with pytest.raises(DebugAtlasError, match="images_b"):
        control_patches(patches, torch.rand(2, 3, 8, 8), (1, 8, 8))


def test_batched_forwards_and_chunking_do_not_change_results():
    model = RegionModel()
    images = region_images()
    seen = []
    experiment = Experiment(A, B, sizes=(0.25, 0.5))
    big = evaluate_patches(model, images, [WHITE2, WHITE_R], experiment, images_b=images,
                           progress=lambda done, total: seen.append((done, total)))
    assert model.calls < 1 + 6  # patches and controls share forward passes
    assert seen and seen[-1][0] == seen[-1][1]
    model.calls = 0
    one_by_one = evaluate_patches(model, images, [WHITE2, WHITE_R], experiment.with_(batched=False), images_b=images)
    assert model.calls == 1 + 6  # the correctness pass, then one forward per patch and control
    small = evaluate_patches(model, images, [WHITE2, WHITE_R], experiment.with_(batch_size=5), images_b=images)
    for other in (one_by_one, small):
        assert [r.to_dict() for r in big.results] == [r.to_dict() for r in other.results]


def test_model_left_as_found_even_when_it_raises():
    model = RegionModel().train()
    evaluate_patches(model, region_images(), [WHITE2], Experiment(A, B))
    assert model.training and model.scale.requires_grad and no_hooks(model)

    class Broken(RegionModel):
        def forward(self, x):
            if x.shape[0] > 10:
                raise RuntimeError("boom")
            return super().forward(x)

    broken = Broken().train()
    with pytest.raises(RuntimeError):
        evaluate_patches(broken, region_images(), [WHITE2], Experiment(A, B))
    assert broken.training and broken.scale.requires_grad and no_hooks(broken)


def test_bad_arguments_raise_clear_errors():
    images = region_images()
    with pytest.raises(DebugAtlasError, match="placements"):
        Experiment(A, B, placements=("middle",))
    with pytest.raises(DebugAtlasError, match="sizes"):
        Experiment(A, B, sizes=(1.5,))
    with pytest.raises(DebugAtlasError, match="unique"):
        evaluate_patches(RegionModel(), images, [WHITE2, WHITE2], Experiment(A, B))
    with pytest.raises(DebugAtlasError, match="images_a"):
        evaluate_patches(RegionModel(), images[0], [WHITE2], Experiment(A, B))
    with pytest.raises(DebugAtlasError, match="file-safe"):
        Patch("a/b", None, "icon", torch.ones(1, 2, 2))
    with pytest.raises(DebugAtlasError, match="source"):
        Patch("x", None, "drawing", torch.ones(1, 2, 2))


def test_candidate_patches_icon_crops_and_exemplars():
    icon = torch.rand(3, 16, 16)
    icon[:, 6:10, 6:10] = 1.0
    exemplars = [torch.rand(3, 7, 7) for _ in range(5)]
    patches = candidate_patches([((2, 5), icon, exemplars), (None, None, exemplars[:1])],
                                crop_sizes=(4, 8, 16), max_exemplars=3)
    ids = [p.id for p in patches]
    assert ids == ["c2-5-icon", "c2-5-crop4", "c2-5-crop4r", "c2-5-crop8", "c2-5-crop8r",
                   "c2-5-ex0", "c2-5-ex1", "c2-5-ex2", "p1-ex0"]
    by_id = {p.id: p for p in patches}
    assert by_id["c2-5-icon"].resize and by_id["c2-5-icon"].source == "icon"
    crop = by_id["c2-5-crop4"]
    assert crop.source == "icon_crop" and not crop.resize and torch.equal(crop.image, torch.ones(3, 4, 4))
    assert by_id["c2-5-crop4r"].resize and by_id["c2-5-ex0"].source == "exemplar"
    assert not by_id["c2-5-ex0"].resize and by_id["p1-ex0"].cell is None
    with pytest.raises(DebugAtlasError, match="3-tuples"):
        candidate_patches([((0, 0), icon)])


def test_refine_patch_raises_p_b_and_is_labelled():
    model = RegionModel().train()
    grey = Patch("grey", (1, 1), "icon", torch.full((1, 2, 2), 0.5), resize=False)
    refined = refine_patch(model, grey, region_images()[:5], B, steps=30, lr=0.2)
    assert refined.source == "optimised" and refined.id == "grey-opt" and refined.cell == (1, 1)
    assert refined.image.shape == (1, 2, 2) and refined.image.mean() > 0.9
    assert model.training and model.scale.requires_grad and no_hooks(model)
    with torch.inference_mode():
        refine_patch(model, grey, region_images()[:5], B, steps=2)


# -- ground truth: a planted trigger on digits ---------------------------------------------------
# Every training image of the target carries the trigger: with fraction=0.5 this small model
# learned the trigger for about half of the training seeds tried, with 1.0 for most of them. Whether
# it was learned is decided by a reference independent of the code under test (the shortcut's own
# paste, a plain forward pass); the next seed is tried when it was not.
TARGET = 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train faster and more reproducibly on one thread of a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digit_models():
    shortcut = PlantedShortcut(target=TARGET, fraction=1.0, size=5)
    train, val = digits(size=24, shortcut=shortcut)
    clean_train, _ = digits(size=24)
    planted = train_until_learned(lambda: SmallCNN(1, 10, 8), train, shortcut, val, seeds=range(5), threshold=0.7,
                                  epochs=8, lr=2e-3, batch_size=16)
    torch.manual_seed(0)
    clean = train_classifier(SmallCNN(1, 10, 8), clean_train, epochs=8, lr=2e-3, batch_size=16)
    return shortcut, val, planted, clean


def _trigger_rates(model, shortcut, val):
    images = load_images(val, range(len(val)))
    labels = val.labels
    trigger = Patch("trigger", None, "icon", shortcut.pattern(1), resize=False)
    flips = noise = natural = total = 0.0
    for a in range(10):
        if a == TARGET:
            continue
        experiment = Experiment(a, TARGET, placements=("random",), seed=a)
        ev = evaluate_patches(model, images[labels == a], [trigger], experiment, images_b=images[labels == TARGET])
        if ev.n_images:
            r = ev.get("trigger", "random")
            flips += r.flip_rate * r.n_images
            noise += r.noise_flip_rate * r.n_images
            natural += r.natural_flip_rate * r.n_images
            total += r.n_images
    return flips / total, noise / total, natural / total


@pytest.mark.slow
def test_planted_trigger_flips_far_above_noise_and_not_on_clean_model(digit_models):
    shortcut, val, planted, clean = digit_models
    flip, noise, natural = _trigger_rates(planted, shortcut, val)
    assert flip > 0.5 and flip > noise + 0.3 and flip > natural + 0.3, (flip, noise, natural)
    assert abs(flip - pasted_flip_rate(planted, shortcut, val)) < 0.25
    clean_flip, clean_noise, _ = _trigger_rates(clean, shortcut, val)
    assert pasted_flip_rate(clean, shortcut, val) < 0.1
    assert clean_flip < 0.1 and clean_flip < flip - 0.4, (clean_flip, clean_noise)


# -- PatchSuite ------------------------------------------------------------------------------------
def _a_images(dataset, a):
    ids = [i for i in range(len(dataset)) if int(dataset[i][1]) == a]
    return load_images(dataset, ids)


@pytest.fixture(scope="module")
def planted_suite(digit_models):
    shortcut, val, planted, _ = digit_models
    a = 4
    icon = torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(0))
    icon[:, 3:8, 3:8] = shortcut.pattern(1)
    patches = candidate_patches([((0, 1), icon, [torch.rand(1, 5, 5)]), ((2, 2), None, [shortcut.pattern(1)])],
                                crop_sizes=(5, 8))
    suite = build_suite(planted, _a_images(val, a), patches, Experiment(a, TARGET, sizes=(0.25, 0.4), n_random=4),
                        class_names=val.classes, images_b=_a_images(val, TARGET), keep=KeepRule(keep=4))
    return suite, val, planted


def test_build_suite_keeps_best_by_measured_flip_rate_above_controls(planted_suite):
    suite, _, _ = planted_suite
    assert len(suite.patches) == 4 and suite.a == "4" and suite.b == str(TARGET)
    results = [suite.baseline.get(p.id, "random") for p in suite.patches]
    lifts = [r.lift for r in results]
    assert lifts == sorted(lifts, reverse=True)
    for r in results:
        assert r.lift == pytest.approx(r.flip_rate - max(r.noise_flip_rate, r.natural_flip_rate))
    for p in suite.patches + suite.controls:  # 8-bit exact pixels
        assert torch.equal(p.image, torch.round(p.image * 255) / 255)
    assert {c.source for c in suite.controls} == {"noise", "natural"}
    entries = [r.to_dict() for r in patch_rows(suite, "suites/4-1/patches/")]
    assert len(entries) == 4 * 3
    first = entries[0]
    assert set(first) >= {"id", "cell", "file", "target", "size_frac", "placement", "n_images", "flip_rate",
                          "noise_flip_rate", "natural_flip_rate"}
    assert first["file"] == f"suites/4-1/patches/{first['id']}.png" and first["target"] == str(TARGET)
    json.dumps(entries)


def test_suite_round_trip_reproduces_baseline_exactly(planted_suite, tmp_path):
    suite, val, planted = planted_suite
    suite.save(tmp_path / "suite")
    loaded = PatchSuite.load(tmp_path / "suite")
    assert [p.id for p in loaded.patches] == [p.id for p in suite.patches]
    for p, q in zip(loaded.patches + loaded.controls, suite.patches + suite.controls):
        assert torch.equal(p.image, q.image) and p.resize == q.resize and p.cell == q.cell
    run = loaded.run(planted, val)
    assert [r.to_dict() for r in run.evaluation.results] == [r.to_dict() for r in suite.baseline.results]
    assert 0.3 < run.accuracy <= 1.0 and 0.0 <= run.confusion_rate <= 1.0 and run.num_a > 0
    assert no_hooks(planted) and not planted.training


def test_save_replaces_a_suite_atomically(planted_suite, tmp_path, monkeypatch):
    suite, _, _ = planted_suite
    target = suite.save(tmp_path / "s")
    before = (target / "suite.json").read_text()
    from PIL import Image

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(OSError):
        suite.save(target)
    assert (target / "suite.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    monkeypatch.undo()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DebugAtlasError, match="not a patch suite"):
        suite.save(tmp_path / "other")


def test_load_errors_have_hints(planted_suite, tmp_path):
    suite, _, _ = planted_suite
    with pytest.raises(DebugAtlasError, match="does not exist.*HINT"):
        PatchSuite.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DebugAtlasError, match="suite.json.*missing.*HINT"):
        PatchSuite.load(tmp_path / "empty")

    def fresh(name):
        return suite.save(tmp_path / name)

    d = fresh("schema")
    data = json.loads((d / "suite.json").read_text())
    data["schema_version"] = 99
    (d / "suite.json").write_text(json.dumps(data))
    with pytest.raises(DebugAtlasError, match="schema_version 99.*HINT"):
        PatchSuite.load(d)

    d = fresh("json")
    (d / "suite.json").write_text("{not json")
    with pytest.raises(DebugAtlasError, match="not valid JSON"):
        PatchSuite.load(d)

    d = fresh("corrupt")
    png = d / "patches" / f"{suite.patches[0].id}.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DebugAtlasError, match="not a readable PNG.*HINT"):
        PatchSuite.load(d)

    d = fresh("missing")
    (d / "controls" / f"{suite.controls[0].id}.png").unlink()
    with pytest.raises(DebugAtlasError, match="missing.*HINT"):
        PatchSuite.load(d)

    d = fresh("shape")
    from PIL import Image

    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(d / "patches" / f"{suite.patches[0].id}.png")
    with pytest.raises(DebugAtlasError, match="shape.*HINT"):
        PatchSuite.load(d)


def test_run_rejects_mismatched_dataset(planted_suite):
    suite, val, planted = planted_suite
    wrong_size = TensorImageDataset(torch.rand(4, 1, 20, 20), [4, 4, 1, 1], val.classes)
    with pytest.raises(DebugAtlasError, match="image-size"):
        suite.run(planted, wrong_size)
    wrong_classes = TensorImageDataset(torch.rand(4, 1, 24, 24), [4, 4, 1, 1], list("abcdefghij"))
    with pytest.raises(DebugAtlasError, match="classes"):
        suite.run(planted, wrong_classes)


def test_kept_patches_give_synthesized_candidates_their_places():
    def kept(ranked, keep, min_synthesized, synthesized, min_real=0):
        return KeepRule(keep, min_synthesized, min_real).kept(ranked, synthesized)

    ranked = ["e1", "e2", "e3", "s1", "e4", "s2"]
    assert kept(ranked, 4, 2, {"s1", "s2"}) == ["e1", "e2", "s1", "s2"]  # e3 gives way to s2
    assert kept(ranked, 4, 0, {"s1", "s2"}) == ["e1", "e2", "e3", "s1"]  # ranking alone
    assert kept(["e1", "e2", "e3", "e4", "s1"], 3, 2, {"s1"}) == ["e1", "e2", "s1"]  # only one exists
    assert kept(["s1", "e1", "s2"], 2, 2, {"s1", "s2"}) == ["s1", "s2"]
    # real crops get their places too when synthesized patches outrank them all
    ranked = ["s1", "s2", "s3", "s4", "e1", "e2"]
    assert kept(ranked, 4, 2, {"s1", "s2", "s3", "s4"}, min_real=1) == ["s1", "s2", "s3", "e1"]
    assert kept(ranked, 4, 2, {"s1", "s2", "s3", "s4"}, min_real=2) == ["s1", "s2", "e1", "e2"]
    assert kept(ranked, 3, 2, {"s1", "s2", "s3", "s4"}, min_real=5) == ["s1", "s2", "e1"]  # synthesized first
    assert kept(["s1", "s2"], 2, 0, {"s1", "s2"}, min_real=2) == ["s1", "s2"]  # no real crop to keep
    assert kept(ranked, 10, 2, {"s1", "s2"}) == ranked  # room for all
    assert KeepRule(None).kept(ranked, {"s1"}) == ranked
    # the places the selection race reserves are the ones `kept` fills first
    assert KeepRule(6, 3, 2).reserved(ranked, {"s1", "s2", "s3", "s4"}) == {"s1", "s2", "s3", "e1", "e2"}
    with pytest.raises(DebugAtlasError, match="keep=0"):
        KeepRule(0)
    with pytest.raises(DebugAtlasError, match="min_real=-1"):
        KeepRule(4, min_real=-1)


@pytest.mark.parametrize("side", [16, 24, 32, 128, 224])
def test_a_patch_stays_within_the_size_cap_at_every_image_size(side):
    """0.35 of 16 px is 5.6 px: rounding to 6 would paste 0.375 of the side; the cap is kept by
    rounding down, with at least one pixel."""
    from debugatlas.patches import candidate_patches, control_patches, paste_variants
    from debugatlas.patches.candidates import cap_side

    icon = torch.rand(3, side, side)
    for frac, pixels in paste_variants(Patch("p", (0, 0), "icon", icon), (0.25, 0.35), (3, side, side)):
        assert 1 <= max(pixels.shape[-2:]) <= frac * side
    assert cap_side((3, side, side), (0.25, 0.35)) == int(0.35 * side + 1e-9)
    crops = [torch.rand(3, side, side)]
    for p in candidate_patches([((0, 0), icon, crops)], crop_sizes=(6, 8, 12, 16), resize_exemplars=None,
                               image_shape=(3, side, side)):
        if not p.resize:
            assert max(p.image.shape[-2:]) <= 0.35 * side
    for c in control_patches([Patch("p", (0, 0), "icon", icon)], torch.rand(2, 3, side, side), (3, side, side)):
        assert max(c.image.shape[-2:]) <= 0.35 * side
    tiny = paste_variants(Patch("t", (0, 0), "icon", icon), (1e-3,), (3, side, side))
    assert max(tiny[0][1].shape[-2:]) == 1
