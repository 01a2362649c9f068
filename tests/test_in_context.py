"""render/in_context.py: patch-sized feature inversion pasted on real images of A."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from debugatlas.core import DebugAtlasError
from debugatlas.models import SmallCNN
from debugatlas.render import cell_directions, whitening_matrix
from debugatlas.render.in_context import InContextInversion, covered_positions, in_context_patches


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_covered_positions_hand_computed():
    # 24 px image, 6x6 layer: centre pixels of rows are 1.5, 5.5, 9.5, 13.5, 17.5, 21.5
    mask = covered_positions((6, 6), (24, 24), torch.tensor([4, 0]), torch.tensor([16, 0]), 8)
    assert torch.nonzero(mask[0]).tolist() == [[1, 4], [1, 5], [2, 4], [2, 5]]
    # a 1 px patch at (0, 0) holds no centre: the nearest position (0, 0) is used
    small = covered_positions((6, 6), (24, 24), torch.tensor([0]), torch.tensor([0]), 1)
    assert torch.nonzero(small[0]).tolist() == [[0, 0]]


def test_objective_rises_and_the_model_is_left_as_found():
    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=8).train()
    images = torch.rand(12, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats = model.eval().layer2(model.layer1(images)).permute(0, 2, 3, 1).reshape(-1, 16)
    model.train()
    dirs = cell_directions(feats[[3, 40, 77]], whitening_matrix(feats))
    hooks = _hooks(model)
    inv = InContextInversion(model, "layer2", images, patch_size=8, steps=25, contexts=4, seed=3)
    with torch.inference_mode():  # as during Lightning validation
        result = inv.invert(dirs)
    assert model.training and all(p.requires_grad for p in model.parameters()) and _hooks(model) == hooks
    assert result.patches.shape == (3, 1, 8, 8) and 0 <= result.patches.min() and result.patches.max() <= 1
    assert (result.objective > result.initial_objective).all(), (result.initial_objective, result.objective)
    assert torch.allclose(inv.score(result.patches, dirs), result.objective, rtol=1e-4, atol=1e-6)
    again = InContextInversion(model, "layer2", images, patch_size=8, steps=25, contexts=4, seed=3).invert(dirs)
    assert torch.equal(again.patches, result.patches)  # seeded
    patches, _ = in_context_patches(model, "layer2", images, [(1, 2), (3, 4), (5, 6)], dirs, 8, steps=2)
    assert [p.id for p in patches] == ["c1-2-ctx8", "c3-4-ctx8", "c5-6-ctx8"]
    assert {p.source for p in patches} == {"in_context"} and not patches[0].resize
    # optimised under bfloat16, measured as the model is: the reported objective is the float32 score
    reduced = InContextInversion(model, "layer2", images, patch_size=8, steps=25, contexts=4, seed=3,
                                 precision="bfloat16").invert(dirs)
    assert not torch.equal(reduced.patches, result.patches)
    torch.testing.assert_close(inv.score(reduced.patches, dirs), reduced.objective, rtol=1e-4, atol=1e-6)


def test_bad_settings_are_explained():
    model = SmallCNN(1, 10, width=4)
    images = torch.rand(2, 1, 24, 24)
    with pytest.raises(DebugAtlasError, match="patch_size"):
        InContextInversion(model, "layer2", images, patch_size=30)
    with pytest.raises(DebugAtlasError, match="images"):
        InContextInversion(model, "layer2", images[0], patch_size=4)
    with pytest.raises(DebugAtlasError, match="channels"):
        InContextInversion(model, "layer2", images, patch_size=4, steps=1).invert(torch.ones(1, 5))
    with pytest.raises(DebugAtlasError, match="spatial"):
        InContextInversion(model, "fc", images, patch_size=4, steps=1).invert(torch.ones(1, 10))


@pytest.mark.slow
def test_in_context_patch_flips_more_than_noise_on_a_planted_trigger():
    """Direction: the mean layer2 vector under the planted cross in poisoned 7s (ground truth).
    The patch optimised on images of 1 must flip them to 7 far more often than the noise control."""
    from debugatlas.data import PlantedShortcut, digits
    from debugatlas.models import train_classifier
    from debugatlas.patches import Experiment, evaluate_patches

    trigger = PlantedShortcut(target=7, fraction=1.0, size=5, trigger="cross", seed=0)
    train, val = digits(size=24, shortcut=trigger, poison_val=True)
    torch.manual_seed(0)
    model = train_classifier(SmallCNN(1, 10, width=8), train, epochs=6, lr=3e-3, batch_size=32, seed=0)
    model.eval()
    sevens = [i for i in range(len(val)) if val.poisoned[i]]
    with torch.no_grad():
        out = model.layer2(model.layer1(torch.stack([val[i][0] for i in sevens])))  # [n, C, 6, 6], stride 4
        vecs = []
        for k, i in enumerate(sevens):
            rng_box = _box(trigger, i, 24)
            r, c = min(5, (rng_box[0] + 2) // 4), min(5, (rng_box[1] + 2) // 4)
            vecs.append(out[k, :, r, c])
        all_vecs = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])
    direction = cell_directions(torch.stack(vecs).mean(0, keepdim=True), whitening_matrix(all_vecs))
    ones = torch.stack([val.images[i] for i in range(len(val)) if val.labels[i] == 1])
    half = len(ones) // 2
    patches, result = in_context_patches(model, "layer2", ones[:half], [(0, 0)], direction, 6, steps=64, seed=0)
    assert result.objective[0] > result.initial_objective[0]
    ev = evaluate_patches(model, ones[half:], patches, Experiment(1, 7, placements=("random",), n_random=8, seed=1))
    r = ev.get(patches[0].id, "random")
    assert r.n_images >= 20
    assert r.flip_rate >= r.noise_flip_rate + 0.3, (r.flip_rate, r.noise_flip_rate)


def _box(trigger, index: int, side: int) -> tuple[int, int]:
    """Top-left (row, col) of the trigger `trigger.apply(image, index)` pasted (same seeded draw)."""
    import numpy as np

    rng = np.random.default_rng([trigger.seed, index])
    s = trigger.size
    return int(rng.integers(0, side - s + 1)), int(rng.integers(0, side - s + 1))
