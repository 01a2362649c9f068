"""Batched patch tests: the same PatchEvaluation as the patch-by-patch loop, in fewer, bounded forwards."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from debugatlas.core import DebugAtlasError
from debugatlas.patches import Experiment, Patch, candidate_patches, evaluate_patches
from debugatlas.patches.evaluate import auto_max_batch


class TinyNet(nn.Module):
    """A seeded conv net whose forwards are counted and whose batch sizes are recorded."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 4)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        h = nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 4)
        return self.fc(h.flatten(1))


def _setting():
    g = torch.Generator().manual_seed(1)
    model = TinyNet()
    images = torch.rand(24, 3, 16, 16, generator=g)
    with torch.no_grad():
        logits = model.eval()(images)
    a = int(logits.argmax(-1).mode().values)
    b = int(logits.mean(0).index_fill(0, torch.tensor([a]), -1e9).argmax())  # the runner-up class
    icons = [((i, i + 1), torch.rand(3, 8, 8, generator=g), [torch.rand(3, 5, 5, generator=g)]) for i in range(3)]
    patches = candidate_patches(icons, crop_sizes=(3, 6), resize_exemplars=None)[:10]
    images_b = torch.rand(6, 3, 16, 16, generator=g)
    model.sizes.clear()
    return model, images, a, b, patches, images_b


def _dicts(evaluation):
    return [r.to_dict() for r in evaluation.results]


@pytest.mark.parametrize("max_batch", [None, 37, 100_000])
def test_batched_equals_the_patch_by_patch_loop(max_batch):
    model, images, a, b, patches, images_b = _setting()
    experiment = Experiment(a, b, sizes=(0.25, 0.5), n_random=3, seed=3)
    loop = evaluate_patches(model, images, patches, experiment.with_(batched=False), images_b=images_b)
    batched = evaluate_patches(model, images, patches, experiment.with_(max_batch=max_batch), images_b=images_b)
    assert _dicts(batched) == _dicts(loop)
    assert (batched.n_images, batched.n_offered) == (loop.n_images, loop.n_offered) and loop.n_images > 10
    rates = [r.flip_rate for r in loop.results]
    assert any(0 < r < 1 for r in rates)  # the comparison is not between all-zero tables
    assert {r.source for r in loop.controls()} == {"noise", "natural"}


def test_forwards_respect_max_batch_and_share_patches():
    model, images, a, b, patches, images_b = _setting()
    ev = evaluate_patches(model, images, patches, Experiment(a, b, sizes=(0.25, 0.5), n_random=3, max_batch=300),
                          images_b=images_b)
    sizes = model.sizes
    assert max(sizes) <= 300
    # resized patches and controls: 2 sizes x (4 corners + 3 random positions); native ones: 1 x 9
    natives = {r.geometry for r in ev.results if r.geometry != "resized"}
    per_image = sum(14 if p.resize else 7 for p in patches) + 2 * 14 + 2 * 7 * len(natives)
    assert sum(sizes) == len(images) + ev.n_images * per_image  # unpatched once, then every trial once
    trials = per_image  # all 24 images are counted: 300 // 24 = 12 trials per forward, packed across patches
    assert ev.n_images == len(images) and len(sizes) == 1 + math.ceil(trials / 12)
    assert sizes[1:-1] == [12 * 24] * (len(sizes) - 2)


def test_progress_counts_patches_and_no_images_gives_nan():
    model, images, a, b, patches, images_b = _setting()
    seen = []
    evaluate_patches(model, images, patches[:4], Experiment(a, b, max_batch=50), images_b=images_b,
                     progress=lambda done, total: seen.append((done, total)))
    total = seen[-1][1]
    # icon and crop3r resized, crop3 and crop6 native: 3 geometries x (noise, natural) controls
    assert total == 4 + 6 and seen == [(k, total) for k in range(1, total + 1)]
    none = evaluate_patches(model, images[:0], patches[:2], Experiment(a, b), images_b=images_b)
    assert none.n_images == 0 and len(none.results) == (2 + 4) * 3  # 2 patches, 4 controls
    assert all(math.isnan(r.flip_rate) for r in none.results)


def test_auto_max_batch_follows_image_size_and_bad_values_are_refused():
    assert auto_max_batch((3, 32, 32), batch_size=64) == 4 * 2**20 // (4 * 3 * 32 * 32) == 341
    assert auto_max_batch((3, 32, 32), 64, "cuda") == 4096 == auto_max_batch((1, 8, 8), 64, "cuda")  # the cap
    assert auto_max_batch((3, 64, 64), 64, "cuda") == 64 * 2**20 // (4 * 3 * 64 * 64) == 1365
    assert auto_max_batch((1, 8, 8)) == 512  # the CPU cap
    assert auto_max_batch((3, 224, 224), batch_size=256) == 256  # never below batch_size
    with pytest.raises(DebugAtlasError, match="max_batch=0"):
        Experiment(0, 1, max_batch=0)


def test_model_left_as_found_when_a_batched_forward_raises():
    class Broken(TinyNet):
        def forward(self, x):
            if x.shape[0] > 40:
                raise RuntimeError("boom")
            return super().forward(x)

    model = Broken().train()
    model.conv.weight.requires_grad_(False)
    _, images, a, b, patches, _ = _setting()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_patches(model, images, patches[:3], Experiment(a, b, max_batch=500))
    assert model.training and model.bn.training and not model.conv.weight.requires_grad
    assert model.fc.weight.requires_grad


def test_patch_pixels_land_where_the_loop_puts_them():
    """A model that reports the patched images themselves: batched pasting is pixel-exact."""
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.stack([torch.ones(len(x)), x.mean((1, 2, 3))], 1)

    images = torch.zeros(3, 1, 8, 8)
    patch = Patch("p", None, "icon", torch.arange(4.0).view(1, 2, 2) / 4, resize=False)
    for batched in (False, True):
        seen.clear()
        evaluate_patches(Spy(), images, [patch], Experiment(0, 1, placements=("dynamic",), batched=batched),
                         controls=[])
        patched = torch.cat(seen[1:])
        corners = {(0, 0), (0, 6), (6, 0), (6, 6)}
        found = set()
        for img in patched:
            nz = img[0].nonzero()
            r, c = int(nz[:, 0].min()), int(nz[:, 1].min())
            found.add((r, c))
            assert torch.equal(img[0, r:r + 2, c:c + 2], patch.image[0])
            assert float(img.sum()) == pytest.approx(float(patch.image.sum()))
        assert found == corners


def test_reduced_precision_counts_nearly_the_same_flips_and_bad_names_are_refused():
    """bfloat16 autocast (what the choosing stages use where the device has it) rounds logits, so a
    few images near a decision boundary may flip differently; the rates stay close."""
    model, images, a, b, patches, images_b = _setting()
    experiment = Experiment(a, b, sizes=(0.25, 0.5), n_random=3, seed=3)
    full = evaluate_patches(model, images, patches, experiment, images_b=images_b)
    reduced = evaluate_patches(model, images, patches, experiment.with_(precision="bfloat16"), images_b=images_b)
    assert [r.patch_id for r in reduced.results] == [r.patch_id for r in full.results]
    gaps = [abs(x.flip_rate - y.flip_rate) for x, y in zip(full.results, reduced.results)]
    assert max(gaps) <= 0.1 and any(0 < r.flip_rate < 1 for r in full.results)
    with pytest.raises(DebugAtlasError, match="precision"):
        evaluate_patches(model, images, patches, experiment.with_(precision="half"), images_b=images_b)
