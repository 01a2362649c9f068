"""The patch size cap: every candidate stays a patch; a large crop is cut to its best window."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from debugatlas.core import DebugAtlasError
from debugatlas.patches import paste_variants
from debugatlas.patches.candidates import cap_side, candidate_patches, cut_to_side, exemplar_saliency


def test_cap_side_hand_computed():
    assert cap_side((1, 24, 24), (0.25, 0.35)) == 8          # round(0.35 * 24 = 8.4)
    assert cap_side((3, 32, 32), (0.25, 0.35)) == 11         # 11^2 / 32^2 = 11.8 % of the image
    assert cap_side((3, 32, 32)) == 11                       # the defaults are 0.25 and 0.35
    assert cap_side((3, 20, 40), (0.5,)) == 10               # the shorter side counts
    with pytest.raises(DebugAtlasError, match="sizes"):
        cap_side((1, 8, 8), (0.0,))


def test_cut_to_side_centre_and_best_window():
    crop = torch.arange(144.0).reshape(1, 12, 12)
    assert torch.equal(cut_to_side(crop, 8), crop[:, 2:10, 2:10])
    assert cut_to_side(crop, 20) is crop
    score = torch.zeros(12, 12)
    score[9:12, 10:12] = 1.0                                  # the activating part is bottom-right
    assert torch.equal(cut_to_side(crop, 8, score), crop[:, 4:12, 4:12])
    score = torch.zeros(12, 12)
    score[5, 6] = 1.0                                         # one pixel: many windows tie, the centred one wins
    assert torch.equal(cut_to_side(crop, 8, score), crop[:, 2:10, 2:10])
    score[0, 0] = 3.0
    assert torch.equal(cut_to_side(crop, 4, score), crop[:, 0:4, 0:4])
    rect = torch.rand(3, 6, 14)
    assert torch.equal(cut_to_side(rect, 5), rect[:, 0:5, 4:9])
    with pytest.raises(DebugAtlasError, match="score map"):
        cut_to_side(crop, 8, torch.zeros(5, 5))


def test_every_candidate_stays_within_the_sizes():
    shape, sizes = (1, 24, 24), (0.25, 0.35)
    icon = torch.rand(1, 16, 16)
    exemplars = [torch.rand(1, 18, 18), torch.rand(1, 6, 6)]  # a receptive field of 0.75 of the image
    patches = candidate_patches([((1, 2), icon, exemplars)], crop_sizes=(4, 8, 12), resize_exemplars=None,
                                image_shape=shape, sizes=sizes)
    ids = [p.id for p in patches]
    assert ids == ["c1-2-icon", "c1-2-crop4", "c1-2-crop4r", "c1-2-crop8", "c1-2-crop8r",
                   "c1-2-ex0", "c1-2-ex0r", "c1-2-ex1", "c1-2-ex1r"]
    by_id = {p.id: p for p in patches}
    assert torch.equal(by_id["c1-2-ex0"].image, exemplars[0][:, 5:13, 5:13])  # centre 8 x 8 of 18 x 18
    assert torch.equal(by_id["c1-2-ex1"].image, exemplars[1])                  # small crops stay whole
    for p in patches:
        for frac, pixels in paste_variants(p, sizes, shape):
            assert max(pixels.shape[-2:]) <= 8 and pixels.shape[-2] * pixels.shape[-1] <= 0.125 * 24 * 24, p.id
    # without image_shape nothing is cut
    uncut = candidate_patches([((1, 2), None, exemplars)])
    assert uncut[0].image.shape == (1, 18, 18)


def test_score_maps_choose_the_exemplar_window():
    crop = torch.zeros(1, 18, 18)
    crop[:, 1:5, 12:17] = 1.0                                 # the feature sits top-right
    score = crop[0].clone()
    patches = candidate_patches([(None, None, [crop], [score])], image_shape=(1, 24, 24), sizes=(0.35,))
    assert patches[0].image.shape == (1, 8, 8) and float(patches[0].image.sum()) == 20.0
    with pytest.raises(DebugAtlasError, match="score maps"):
        candidate_patches([(None, None, [crop, crop], [score])], image_shape=(1, 24, 24))
    with pytest.raises(DebugAtlasError, match="3-tuples"):
        candidate_patches([(None, None)])


class Tiny(nn.Module):
    """layer: a 1x1 conv copying the pixel (activation = pixel), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.layer.weight)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.layer(x).flatten(1))


def test_exemplar_saliency_marks_the_activating_pixels_and_leaves_the_model():
    model = Tiny().train()
    model.head.weight.requires_grad_(False)
    crops = torch.zeros(2, 1, 6, 6)
    crops[0, 0, 0, 5] = 0.8                                   # d(sum relu(pixel)) / d pixel = 1
    crops[1, 0, 3, 3] = 0.5
    sal = exemplar_saliency(model, "layer", crops, torch.tensor([2.0]), (1, 8, 8))
    assert sal.shape == (2, 6, 6)
    assert sal[0, 0, 5] == pytest.approx(0.8) and sal[1, 3, 3] == pytest.approx(0.5)
    assert float(sal.sum()) == pytest.approx(1.3)
    assert torch.equal(cut_to_side(crops[0], 2, sal[0]), crops[0][:, 0:2, 4:6])
    assert model.training and not model.head.weight.requires_grad and model.layer.weight.requires_grad
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(DebugAtlasError, match="channels"):
        exemplar_saliency(model, "layer", crops, torch.ones(3), (1, 8, 8))
    assert all(not m._forward_hooks for m in model.modules())
