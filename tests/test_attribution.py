"""attribution.py: oracles (Captum, a per-class autograd loop, hand-computed numbers), the relaxed
max-pool gradient, inference mode, the model left as found, pixel heatmaps, and input errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from debugatlas import DebugAtlasError
from debugatlas.attribution import attribute, pixel_attribution
from debugatlas.core.gradients import relaxed_pooling as _relaxed
from debugatlas.capture import ActivationSet, capture
from debugatlas.core import load_images
from debugatlas.data import TensorImageDataset
from debugatlas.models import SmallCNN


# -- tiny models and data --------------------------------------------------------------------------
class Tokens(nn.Module):
    """[B, C, H, W] -> [B, H*W, C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class TokenNet(nn.Module):
    """Patchify, a token MLP (layer "tokens" gives [B, T, C]), mean over tokens, a linear head."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 6, 4, stride=4)
        self.tokens = nn.Sequential(Tokens(), nn.Linear(6, 6), nn.GELU())
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(self.patch(x))
        t = t + torch.tanh(self.mix(t)) * t.mean(1, keepdim=True)
        return self.head(t.mean(1))


class PooledNet(nn.Module):
    """A CNN whose layer "embed" gives pooled [B, C] features, followed by a non-linear head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.embed = nn.Flatten()
        self.head = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(self.features(x)))


def _images(n: int = 10, size: int = 16, seed: int = 0) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=gen)
    return TensorImageDataset(images, [i % 3 for i in range(n)], ["a", "b", "c"])


def _cnn(seed: int = 0, num_classes: int = 10) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(1, num_classes, width=4).eval()


def _loop_reference(model: nn.Module, layer: str, dataset, acts: ActivationSet) -> torch.Tensor:
    """attr[i, c] by one forward and one autograd.grad call per sample and class."""
    module = dict(model.named_modules())[layer]
    rows = []
    for i in range(len(acts)):
        seen = {}

        def hook(_m, _i, out):
            out = out.detach().requires_grad_(True)
            seen["h"] = out
            return out

        handle = module.register_forward_hook(hook)
        try:
            logits = model(load_images(dataset, [int(acts.image_ids[i])]))
        finally:
            handle.remove()
        h, (r, c) = seen["h"], acts.positions[i].tolist()
        row = []
        for k in range(logits.shape[1]):
            (g,) = torch.autograd.grad(logits[0, k], h, retain_graph=True)
            if h.dim() == 4:
                row.append((g[0, :, r, c] * h[0, :, r, c]).sum())
            elif h.dim() == 3:
                row.append((g[0, c] * h[0, c]).sum())
            else:
                row.append((g[0] * h[0]).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows).detach()


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


# -- oracles ---------------------------------------------------------------------------------------
def test_matches_captum_layer_gradient_x_activation(trained_cnn, digits_data):
    from captum.attr import LayerGradientXActivation

    val = digits_data[1]
    subset = TensorImageDataset(val.images[:8], val.labels[:8], val.classes)
    for layer in ("layer3", "layer2"):
        acts = capture(trained_cnn, subset, layer, samples_per_image=2, seed=3)
        attr = attribute(trained_cnn, layer, subset, acts, batch_size=5)
        assert attr.shape == (16, 10) and attr.dtype == torch.float32
        images = load_images(subset, acts.image_ids)
        b, pos = torch.arange(len(acts)), acts.positions
        lga = LayerGradientXActivation(trained_cnn, dict(trained_cnn.named_modules())[layer])
        for c in range(10):
            ref = lga.attribute(images, target=c)[b, :, pos[:, 0], pos[:, 1]].sum(1)
            torch.testing.assert_close(attr[:, c], ref, rtol=1e-4, atol=1e-6)
        assert attr.abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["spatial", "tokens", "pooled"])
def test_matches_a_per_class_autograd_loop(kind):
    model, layer = {"spatial": (_cnn(1), "layer2"), "tokens": (TokenNet(), "tokens"),
                    "pooled": (PooledNet(), "embed")}[kind]
    torch.manual_seed(2)
    model = model.eval()
    ds = _images(6)
    acts = capture(model, ds, layer, samples_per_image=2, seed=5)
    if kind == "tokens":
        assert (acts.positions[:, 0] == 0).all() and acts.spatial_shape == (1, 16)
    if kind == "pooled":
        assert (acts.positions == -1).all() and acts.spatial_shape is None
    got = attribute(model, layer, ds, acts, batch_size=4)
    torch.testing.assert_close(got, _loop_reference(model, layer, ds, acts), rtol=1e-4, atol=1e-6)


def test_hand_computed_linear_conv_model():
    # h = conv1x1(x) with weights (2, -1); logits = W mean_{HW}(h), so dlogit_c/dh[k, p] = W[c, k] / 4.
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        model[0].bias.zero_()
        model[3].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        model[3].bias.copy_(torch.tensor([5.0, 5.0, 5.0]))
    ds = TensorImageDataset(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), [0], ["a"])
    acts = ActivationSet(vectors=torch.tensor([[6.0, -3.0], [2.0, -1.0]]).half(),
                         image_ids=torch.tensor([0, 0]), labels=torch.tensor([0, 0]),
                         preds=torch.tensor([0, 0]), positions=torch.tensor([[1, 0], [0, 0]]),
                         layer="0", spatial_shape=(2, 2))
    attr = attribute(model, "0", ds, acts)
    # (1, 0): x = 3, h = (6, -3): (6/4, -3/4, 3/4); (0, 0): x = 1, h = (2, -1): (2/4, -1/4, 1/4)
    expected = torch.tensor([[1.5, -0.75, 0.75], [0.5, -0.25, 0.25]])
    torch.testing.assert_close(attr, expected)
    torch.testing.assert_close(attribute(model, model[0], ds, acts, classes=[2, 0]), expected[:, [2, 0]])


def test_attributions_over_all_positions_sum_to_logit_minus_bias():
    # SmallCNN ends in global average pooling and a linear layer, so the attributions of every
    # position of layer3 add up to the logit without its bias.
    model, ds = _cnn(3), _images(3)
    h, w = 4, 4
    grid = torch.tensor([(r, c) for r in range(h) for c in range(w)])
    seen = {}
    handle = model.layer3.register_forward_hook(lambda m, i, o: seen.update(h=o.detach()))
    with torch.no_grad():
        logits = model(load_images(ds, range(3)))
    handle.remove()
    vectors = seen["h"].permute(0, 2, 3, 1).reshape(-1, seen["h"].shape[1])
    ids = torch.arange(3).repeat_interleave(h * w)
    acts = ActivationSet(vectors.half(), ids, ids, ids, grid.repeat(3, 1), "layer3", (h, w))
    attr = attribute(model, "layer3", ds, acts, batch_size=2)
    sums = attr.view(3, h * w, -1).sum(1)
    torch.testing.assert_close(sums, logits - model.fc.bias, rtol=1e-4, atol=1e-5)


def test_inplace_ops_after_the_layer_are_allowed():
    torch.manual_seed(0)
    inplace = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(3, 2)).eval()
    plain = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in inplace]).eval()
    ds = _images(3, size=6)
    acts = capture(plain, ds, "0", samples_per_image=4)
    torch.testing.assert_close(attribute(inplace, "0", ds, acts), attribute(plain, "0", ds, acts))


def test_batching_and_repeated_images_do_not_change_results():
    model, ds = _cnn(4), _images(7)
    acts = capture(model, ds, "layer2", samples_per_image=3, seed=1)
    perm = torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))
    shuffled = acts.subset(perm)
    calls = []
    a1 = attribute(model, "layer2", ds, acts, batch_size=3, progress=lambda *a: calls.append(a))
    a2 = attribute(model, "layer2", ds, shuffled, batch_size=64)
    assert calls == [(3, 7), (6, 7), (7, 7)]
    torch.testing.assert_close(a1[perm], a2, rtol=1e-5, atol=1e-7)


def _unbatchable(monkeypatch) -> None:
    """Make every batched backward pass fail as an operation without vmap support does."""
    real_grad = torch.autograd.grad

    def unbatchable(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", unbatchable)


def test_batched_grad_is_one_backward_per_row_and_falls_back_to_them(monkeypatch):
    from debugatlas.core.gradients import batched_grad

    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = torch.stack([x[0] * x[1], x[2] ** 2])  # by hand: rows of the Jacobian [[2, 1, 0], [0, 0, 6]]
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 6.0], [2.0, 1.0, 6.0]])
    assert torch.equal(batched_grad(y, x, rows, retain_graph=True), expected)
    _unbatchable(monkeypatch)
    assert torch.equal(batched_grad(y, x, rows), expected)


def test_attribution_and_position_maps_fall_back_to_one_backward_per_class(monkeypatch):
    from debugatlas.attribution import position_attribution

    model, ds = _cnn(12), _images(4)
    acts = capture(model, ds, "layer2", samples_per_image=2)
    expected = attribute(model, "layer2", ds, acts)
    maps = position_attribution(model, "layer2", ds.images, classes=[3])[0]
    _unbatchable(monkeypatch)
    torch.testing.assert_close(attribute(model, "layer2", ds, acts), expected)
    torch.testing.assert_close(position_attribution(model, "layer2", ds.images, classes=[3])[0], maps)


# -- relaxed max-pool ------------------------------------------------------------------------------
def _pool_model(pool: nn.Module, head: torch.Tensor) -> nn.Sequential:
    """h = conv1x1(x) = x (layer "0"), then `pool`, flatten and a linear head with weights `head`."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), pool, nn.Flatten(),
                          nn.Linear(head.shape[1], head.shape[0], bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[3].weight.copy_(head)
    return model.eval()


def test_relaxed_maxpool_uses_the_average_pool_gradient_by_hand():
    # h = x = [[1, 2], [3, 4]]; max-pool 2x2 -> 4; logits = (4, 8).
    model = _pool_model(nn.MaxPool2d(2), torch.tensor([[1.0], [2.0]]))
    ds = TensorImageDataset(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), [0], ["a"])
    pos = torch.tensor([[0, 0], [1, 1]])
    acts = ActivationSet(torch.tensor([[1.0], [4.0]]).half(), torch.tensor([0, 0]), torch.tensor([0, 0]),
                         torch.tensor([0, 0]), pos, "0", (2, 2))
    plain = attribute(model, "0", ds, acts)
    torch.testing.assert_close(plain, torch.tensor([[0.0, 0.0], [4.0, 8.0]]))
    relaxed = attribute(model, "0", ds, acts, relaxed_maxpool=True)
    # avg-pool gradient: dlogit_c/dh = W_c / 4 everywhere in the window
    torch.testing.assert_close(relaxed, torch.tensor([[0.25, 0.5], [1.0, 2.0]]))
    assert _hooks(model) == 0


def test_relaxed_maxpool_keeps_forward_values_and_matches_avgpool_gradient():
    gen = torch.Generator().manual_seed(0)
    head = torch.randn(2, 16, generator=gen)  # 7x7 pooled with kernel 3, stride 2, padding 1: 4x4
    maxed = _pool_model(nn.MaxPool2d(3, stride=2, padding=1), head)
    avged = _pool_model(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), head)
    x = torch.rand(3, 1, 7, 7, generator=gen)
    before = maxed(x)
    with _relaxed(maxed, True):
        during = maxed(x)
    assert torch.equal(before, during) and _hooks(maxed) == 0
    ds = TensorImageDataset(x, [0, 1, 0], ["a", "b"])
    acts = capture(maxed, ds, "0", sampling="all")
    relaxed = attribute(maxed, "0", ds, acts, relaxed_maxpool=True)
    # the head is linear, so the avg-pool model's gradients at the same h are the relaxed ones
    torch.testing.assert_close(relaxed, attribute(avged, "0", ds, acts), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(relaxed, attribute(maxed, "0", ds, acts))


def test_relaxed_maxpool_on_the_reference_model(trained_cnn, digits_data):
    val = digits_data[1]
    subset = TensorImageDataset(val.images[:12], val.labels[:12], val.classes)
    acts = capture(trained_cnn, subset, "layer1.0", seed=0)
    plain = attribute(trained_cnn, "layer1.0", subset, acts)
    relaxed = attribute(trained_cnn, "layer1.0", subset, acts, relaxed_maxpool=True)
    assert torch.isfinite(relaxed).all() and not torch.allclose(plain, relaxed)
    # the sparse max-pool gradient is zero wherever the position is not a window maximum
    assert (plain == 0).float().mean() > (relaxed == 0).float().mean()


# -- contexts and model state ----------------------------------------------------------------------
def test_works_inside_inference_mode():
    model, ds = _cnn(5), _images(5)
    acts = capture(model, ds, "layer2", samples_per_image=2)
    expected = attribute(model, "layer2", ds, acts, relaxed_maxpool=True)
    with torch.inference_mode():
        inf_ds = TensorImageDataset(ds.images * 1, ds.labels, ds.classes)  # inference tensors
        got = attribute(model, "layer2", inf_ds, acts, relaxed_maxpool=True)
        heat = pixel_attribution(model, inf_ds.images[:2], [0, 1], method="saliency")
    torch.testing.assert_close(got, expected)
    assert not got.is_inference() and heat.shape == (2, 16, 16)


def test_model_left_as_found_also_when_it_raises():
    model, ds = _cnn(6), _images(4)
    acts = capture(model, ds, "layer2")
    model.train()
    model.layer1[0].weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    attribute(model, "layer2", ds, acts, relaxed_maxpool=True)
    pixel_attribution(model, ds.images[:2], [1, 2])
    assert model.training and all(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and _hooks(model) == 0

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model.fc = nn.Sequential(Boom())
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        attribute(model, "layer2", ds, acts, relaxed_maxpool=True)
    with pytest.raises(RuntimeError, match="boom"):
        pixel_attribution(model, ds.images[:2], [1, 2])
    assert model.training and _hooks(model) == 0
    kept = {n: f for n, f in flags.items() if not n.startswith("fc.")}
    assert {n: p.requires_grad for n, p in model.named_parameters()} == kept


# -- pixel heatmaps --------------------------------------------------------------------------------
def test_pixel_attribution_shapes_finiteness_and_completeness():
    model, ds = _cnn(7), _images(3)
    images = ds.images[:3]
    ig = pixel_attribution(model, images, torch.tensor([0, 4, 9]), n_steps=64)
    sal = pixel_attribution(model, images, 2, method="saliency")
    for heat in (ig, sal):
        assert heat.shape == (3, 16, 16) and heat.dtype == torch.float32 and torch.isfinite(heat).all()
    assert (sal >= 0).all() and sal.abs().max() > 0
    rows, target = torch.arange(3), torch.tensor([0, 4, 9])
    with torch.no_grad():  # integrated gradients: the map sums to logit(x) - logit(black)
        gain = model(images)[rows, target] - model(torch.zeros_like(images))[rows, target]
    torch.testing.assert_close(ig.sum((1, 2)), gain, rtol=0.05, atol=2e-3)


# -- errors ----------------------------------------------------------------------------------------
def test_bad_classes_and_too_many_classes():
    model, ds = _cnn(8), _images(3)
    acts = capture(model, ds, "layer2")
    for bad in ([10], [-1], [], [1.5], ["cat"], 3.5):
        with pytest.raises(DebugAtlasError, match="class indices"):
            attribute(model, "layer2", ds, acts, classes=bad)
    big = _cnn(8, num_classes=101)
    acts = capture(big, ds, "layer2")
    with pytest.raises(DebugAtlasError, match="101 classes.*HINT: pass `classes="):
        attribute(big, "layer2", ds, acts)
    assert attribute(big, "layer2", ds, acts, classes=[100, 3]).shape == (3, 2)


def test_nan_and_inf_logits_are_reported():
    model, ds = _cnn(9), _images(4)
    acts = capture(model, ds, "layer2")
    images = ds.images.clone()
    images[2, 0, 0, 0] = float("nan")
    with pytest.raises(DebugAtlasError, match=r"NaN for images \[2\]"):
        attribute(model, "layer2", TensorImageDataset(images, ds.labels, ds.classes), acts)
    with torch.no_grad():
        model.fc.bias[3] = float("inf")
    with pytest.raises(DebugAtlasError, match=r"Inf for images \[0, 1, 2, 3\] \(classes \[3\]\)"):
        attribute(model, "layer2", ds, acts)


def test_mismatched_dataset_layer_and_acts():
    model, ds = _cnn(10), _images(6)
    acts = capture(model, ds, "layer2")
    with pytest.raises(DebugAtlasError, match=r"images \[4, 5\], outside the dataset of 4"):
        attribute(model, "layer2", _images(4), acts)
    with pytest.raises(DebugAtlasError, match="captured at layer 'layer2', not at `layer='layer3'`"):
        attribute(model, "layer3", ds, acts)
    with pytest.raises(DebugAtlasError, match="differs from the captured one"):
        attribute(model, "layer2", _images(6, seed=1), acts)
    relabelled = ActivationSet(acts.vectors, acts.image_ids, acts.labels, acts.preds, acts.positions,
                               "layer1", acts.spatial_shape)
    with pytest.raises(DebugAtlasError, match="does not fit layer 'layer1'"):
        attribute(model, "layer1", ds, relabelled)
    with pytest.raises(DebugAtlasError, match="closest names"):
        attribute(model, "layr2", ds, acts)
    with pytest.raises(DebugAtlasError, match="is not inside"):
        attribute(model, nn.Conv2d(1, 1, 1), ds, acts)
    with pytest.raises(DebugAtlasError, match="batch_size"):
        attribute(model, "layer2", ds, acts, batch_size=0)
    assert _hooks(model) == 0


def test_pixel_attribution_bad_inputs():
    model, ds = _cnn(11), _images(2)
    with pytest.raises(DebugAtlasError, match="method='gradcam'"):
        pixel_attribution(model, ds.images, [0, 1], method="gradcam")
    with pytest.raises(DebugAtlasError, match=r"shape \(1, 16, 16\)"):
        pixel_attribution(model, ds.images[0], [0])
    with pytest.raises(DebugAtlasError, match="3 targets for 2 images"):
        pixel_attribution(model, ds.images, [0, 1, 2])
    with pytest.raises(DebugAtlasError, match=r"class indices \[12\]"):
        pixel_attribution(model, ds.images, [0, 12])


# -- dense position maps (attribution-guided sampling) -----------------------------------------------
def test_position_maps_match_attribute_at_every_position():
    from debugatlas.attribution import position_attribution

    model, ds = _cnn(seed=1).train(), _images(6)
    acts = capture(model, ds, "layer2", sampling="all", dtype=torch.float32)
    attr = attribute(model, "layer2", ds, acts)  # [N, 10]
    hooks = _hooks(model)
    with torch.inference_mode():
        maps, h, logits = position_attribution(model, "layer2", ds.images, classes=[3, 7])
    assert model.training and _hooks(model) == hooks  # left as found
    assert maps.shape == (6, 3, 4, 4) and h.shape[2:] == (4, 4) and logits.shape == (6, 10)
    pred = logits.argmax(1)
    ids, (r, c) = acts.image_ids, acts.positions.T
    for t, cls in enumerate([pred[ids], torch.full_like(ids, 3), torch.full_like(ids, 7)]):
        expect = attr[torch.arange(len(acts)), cls]
        assert torch.allclose(maps[ids, t, r, c], expect, rtol=1e-4, atol=1e-5)
    # the maps sum the same per-position quantity the loop reference computes
    first = acts.subset(acts.image_ids == 0)
    ref = _loop_reference(model.eval(), "layer2", ds, first)
    r0, c0 = first.positions.T
    assert torch.allclose(maps[0, 1, r0, c0], ref[:, 3], rtol=1e-4, atol=1e-5)


def test_position_maps_need_a_spatial_layer():
    from debugatlas.attribution import position_attribution

    with pytest.raises(DebugAtlasError, match="spatial"):
        position_attribution(PooledNet(), "embed", torch.rand(2, 1, 8, 8))
    with pytest.raises(DebugAtlasError, match="targets"):
        position_attribution(_cnn(), "layer2", torch.rand(2, 1, 16, 16), targets=[0, 12])


def test_probabilities_come_from_the_same_forwards(trained_cnn, digits_data):
    from debugatlas.confusion import softmax_probs

    val = digits_data[1]
    subset = TensorImageDataset(val.images[:9], val.labels[:9], val.classes)
    acts = capture(trained_cnn, subset, "layer2", samples_per_image=3, seed=1)
    order = torch.randperm(len(acts), generator=torch.Generator().manual_seed(0))
    shuffled = acts.subset(order)  # probabilities follow image ids, not sample order
    attr, probs = attribute(trained_cnn, "layer2", subset, shuffled, batch_size=4, return_probs=True)
    torch.testing.assert_close(attr, attribute(trained_cnn, "layer2", subset, shuffled, batch_size=4))
    uid = shuffled.per_image()[0]
    assert probs.shape == (len(uid), 10)
    torch.testing.assert_close(probs.numpy(), softmax_probs(trained_cnn, subset, uid), rtol=1e-5, atol=1e-6)
