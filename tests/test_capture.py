"""capture.py: sampling positions, reservoir cap, records pointing back to the dataset, hooks removed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from debugatlas import DebugAtlasError
from debugatlas.capture import ActivationRecorder, CaptureSpec, capture
from debugatlas.data import TensorImageDataset


class PosNet(nn.Module):
    """Layer output encodes (row, col, image value) so each sampled vector says where it came from."""

    def __init__(self, h: int = 6, w: int = 7) -> None:
        super().__init__()
        self.h, self.w = h, w
        self.feat = nn.Identity()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        rows = torch.arange(self.h).view(1, 1, self.h, 1).expand(b, 1, self.h, self.w).float()
        cols = torch.arange(self.w).view(1, 1, 1, self.w).expand(b, 1, self.h, self.w).float()
        val = x.mean(dim=(1, 2, 3)).view(b, 1, 1, 1).expand(b, 1, self.h, self.w)
        f = self.feat(torch.cat([rows, cols, val], 1))
        return self.fc(f.mean(dim=(2, 3)))


def _dataset(n: int = 20) -> TensorImageDataset:
    images = torch.arange(n).float().view(n, 1, 1, 1).expand(n, 1, 4, 4) / n
    return TensorImageDataset(images.clone(), [i % 2 for i in range(n)], ["even", "odd"])


def test_random_positions_are_interior_and_point_back_to_the_image():
    ds = _dataset()
    acts = capture(PosNet(), ds, "feat", sampling="random", samples_per_image=3, batch_size=7, seed=1)
    assert len(acts) == 3 * len(ds)
    rows, cols = acts.positions[:, 0], acts.positions[:, 1]
    assert rows.min() >= 1 and rows.max() <= 4 and cols.min() >= 1 and cols.max() <= 5
    vec = acts.vectors.float()
    assert torch.equal(vec[:, 0].long(), rows) and torch.equal(vec[:, 1].long(), cols)
    expected_val = acts.image_ids.float() / len(ds)
    assert torch.allclose(vec[:, 2], expected_val, atol=1e-3)
    assert torch.equal(acts.labels, acts.image_ids % 2)
    assert acts.vectors.dtype == torch.float16 and acts.spatial_shape == (6, 7)


def test_all_and_center_sampling():
    ds = _dataset(4)
    every = capture(PosNet(), ds, "feat", sampling="all")
    assert len(every) == 4 * (4 * 5)
    assert set(map(tuple, every.positions[every.image_ids == 0].tolist())) == {
        (r, c) for r in range(1, 5) for c in range(1, 6)
    }
    center = capture(PosNet(), ds, "feat", sampling="center")
    assert center.positions.tolist() == [[3, 3]] * 4


def test_same_seed_same_sample_and_cap_bounds_memory():
    ds = _dataset(50)
    a = capture(PosNet(), ds, "feat", samples_per_image=2, cap=30, seed=3, batch_size=8)
    b = capture(PosNet(), ds, "feat", samples_per_image=2, cap=30, seed=3, batch_size=8)
    assert len(a) == 30 and a.num_offered == 100
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.image_ids, b.image_ids)
    # The reservoir keeps items from the whole stream, not only the first 30.
    assert a.image_ids.max() >= 25


def test_reservoir_is_uniform_over_the_stream():
    counts = torch.zeros(200)
    for seed in range(200):
        rec = ActivationRecorder("x", cap=20, seed=seed)
        for start in range(0, 200, 25):
            rec._pending = (torch.zeros(25, 1, 1, dtype=torch.float16), torch.zeros(25, 1, 2, dtype=torch.long))
            rec.commit(torch.arange(start, start + 25), torch.zeros(25))
        counts[rec.result().image_ids] += 1
    # Each item kept with probability 20/200 = 0.1: 20 expected per item over 200 runs.
    first_half, second_half = counts[:100].mean(), counts[100:].mean()
    assert abs(first_half - 20) < 3 and abs(second_half - 20) < 3


def test_token_and_pooled_outputs():
    class TokenNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Identity()
            self.pooled = nn.Identity()

        def forward(self, x):
            t = self.tokens(x.flatten(2).transpose(1, 2))  # [B, T, C]
            return self.pooled(t.mean(1))

    ds = TensorImageDataset(torch.rand(5, 3, 2, 4), [0, 1, 0, 1, 0], ["a", "b"])
    tok = capture(TokenNet(), ds, "tokens", sampling="all")
    assert len(tok) == 5 * 8 and tok.spatial_shape == (1, 8)
    assert (tok.positions[:, 0] == 0).all() and tok.positions[:, 1].max() == 7
    pooled = capture(TokenNet(), ds, "pooled")
    assert len(pooled) == 5 and pooled.spatial_shape is None and (pooled.positions == -1).all()


def test_a_spec_and_keywords_say_the_same_and_keywords_replace_its_fields():
    ds = _dataset()
    spec = CaptureSpec(samples_per_image=2, cap=30, seed=3)
    by_keywords = capture(PosNet(), ds, "feat", samples_per_image=2, cap=30, seed=3, batch_size=8)
    by_spec = capture(PosNet(), ds, "feat", spec, batch_size=8)
    assert torch.equal(by_spec.positions, by_keywords.positions) and torch.equal(by_spec.image_ids, by_keywords.image_ids)
    changed = capture(PosNet(), ds, "feat", spec, seed=4, batch_size=8)
    assert torch.equal(changed.positions, capture(PosNet(), ds, "feat", samples_per_image=2, cap=30, seed=4).positions)
    assert spec.seed == 3  # frozen: the keywords made a new record


def test_hooks_removed_and_mode_kept_even_when_model_raises():
    class Boom(PosNet):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        capture(model, _dataset(), "feat")
    assert model.training and all(not m._forward_hooks for m in model.modules())


def test_bad_inputs_have_clear_errors():
    ds = _dataset()
    with pytest.raises(DebugAtlasError, match="closest names"):
        capture(PosNet(), ds, "fet")
    with pytest.raises(DebugAtlasError, match="sampling"):
        capture(PosNet(), ds, "feat", sampling="corners")
    with pytest.raises(DebugAtlasError, match=r"Unknown capture setting\(s\) \['samples'\] in `capture\(\.\.\.\)`.*samples_per_image"):
        capture(PosNet(), ds, "feat", samples=2)
    with pytest.raises(DebugAtlasError, match="not a CaptureSpec.*HINT"):
        capture(PosNet(), ds, "feat", "random")
    with pytest.raises(DebugAtlasError, match="empty"):
        capture(PosNet(), TensorImageDataset(torch.zeros(0, 1, 4, 4), [], ["a"]), "feat")
    with pytest.raises(DebugAtlasError, match=r"\(image, label\)"):
        capture(PosNet(), [torch.zeros(1, 4, 4)], "feat")

    class NaNNet(PosNet):
        def forward(self, x):
            return super().forward(x * float("nan"))

    with pytest.raises(DebugAtlasError, match="NaN or Inf"):
        capture(NaNNet(), ds, "feat")

    class DictLayer(nn.Module):
        def forward(self, x):
            return {"x": x}

    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.d = DictLayer()

        def forward(self, x):
            return self.d(x)["x"].flatten(1)[:, :2]

    with pytest.raises(DebugAtlasError, match="not a tensor"):
        capture(DictNet(), ds, "d")


def test_queued_batches_give_the_same_samples_whatever_the_flush_interval():
    from debugatlas.capture import ActivationRecorder

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1))
    images = torch.rand(10, 1, 6, 6)
    sets = []
    for every in (1, 3, 32):
        rec = ActivationRecorder("0", samples_per_image=2, cap=12, seed=1, flush_batches=every)
        with rec.attach(model), torch.no_grad():
            for start in range(0, 10, 2):
                ids = torch.arange(start, start + 2)
                rec.expect(ids)
                model(images[ids])
                rec.commit(ids, torch.zeros(2, dtype=torch.long))
        if every == 32:
            assert len(rec._queue) == 5  # nothing stored before result()
        sets.append(rec.result())
    for other in sets[1:]:
        assert torch.equal(other.vectors, sets[0].vectors) and torch.equal(other.image_ids, sets[0].image_ids)
    assert sets[0].num_offered == 20 and len(sets[0]) == 12
    with pytest.raises(DebugAtlasError, match="flush_batches"):
        ActivationRecorder("0", flush_batches=0)


# -- attribution-guided sampling and the rule column -------------------------------------------------
class SquareNet(nn.Module):
    """Layer "feat" is the image itself; logit 0 = sum(x^2), logit 1 = -sum(x^2): the attribution of
    position (r, c) toward class 0 is h * dlogit0/dh = 2 x[r, c]^2, largest at the brightest pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = (self.feat(x) ** 2).sum(dim=(1, 2, 3)) * self.scale
        return torch.stack([energy, -energy], 1)


def _bright_dataset(n: int = 12, side: int = 8):
    images = torch.full((n, 1, side, side), 0.1)
    spots = [(1 + i % (side - 2), 1 + (3 * i) % (side - 2)) for i in range(n)]
    for i, (r, c) in enumerate(spots):
        images[i, 0, r, c] = 1.0
    return TensorImageDataset(images, [0] * n, ["a", "b"]), spots


def test_guided_capture_takes_the_highest_attribution_position_and_records_the_rule():
    from debugatlas.capture.activations import RULE_ATTRIBUTION, RULE_RANDOM
    from debugatlas.capture.guided import capture_guided

    ds, spots = _bright_dataset()
    model = SquareNet().train()
    with torch.inference_mode():  # as inside Lightning validation
        acts = capture_guided(model, ds, "feat", CaptureSpec(samples_per_image=3, guided_fraction=1 / 3, seed=2),
                              batch_size=5)
    assert model.training and model.scale.requires_grad  # left as found
    assert len(acts) == 3 * len(ds) and acts.rule.dtype == torch.int8 and acts.spatial_shape == (8, 8)
    for i, (r, c) in enumerate(spots):
        mine = acts.image_ids == i
        rules, pos = acts.rule[mine], acts.positions[mine]
        assert (rules == RULE_RANDOM).sum() == 2 and (rules == RULE_ATTRIBUTION).sum() == 1
        guided = tuple(pos[rules == RULE_ATTRIBUTION][0].tolist())
        randoms = {tuple(p) for p in pos[rules == RULE_RANDOM].tolist()}
        # the bright pixel is chosen by attribution unless a random pick already took it
        assert guided == (r, c) or (r, c) in randoms
    # the stored vector is the layer output at the recorded position
    images = ds.images[acts.image_ids, 0]
    expect = images[torch.arange(len(acts)), acts.positions[:, 0], acts.positions[:, 1]]
    assert torch.allclose(acts.vectors[:, 0].float(), expect, atol=1e-3)
    assert torch.equal(acts.preds, torch.zeros(len(acts), dtype=torch.long))
    assert acts.random_mask().sum() == 2 * len(ds)
    sub = acts.subset(acts.image_ids < 3)
    assert torch.equal(sub.rule, acts.rule[acts.image_ids < 3])


def test_guided_fraction_zero_is_keyed_random_sampling():
    from debugatlas.capture import image_picks
    from debugatlas.capture.guided import capture_guided, guided_positions

    ds, _ = _bright_dataset()
    acts = capture_guided(SquareNet(), ds, "feat", CaptureSpec(samples_per_image=2, guided_fraction=0.0, seed=5))
    assert acts.rule is None and torch.equal(acts.rules(), torch.zeros(len(acts), dtype=torch.int8))
    grid = torch.stack(torch.meshgrid(torch.arange(1, 7), torch.arange(1, 7), indexing="ij"), -1).reshape(-1, 2)
    ids = torch.arange(len(ds))
    expect = grid[image_picks(5, ids, 2, grid.shape[0])]
    assert torch.equal(acts.positions, expect.reshape(-1, 2))
    pos, rule = guided_positions(SquareNet(), "feat", ds, ids, samples_per_image=2, guided_fraction=0.0, seed=5)
    assert torch.equal(pos, expect) and rule.eq(0).all()


def test_guided_picks_are_distinct_and_bad_settings_are_explained():
    from debugatlas.capture.guided import choose_guided, split_samples

    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 1, 2, 2] = 5.0  # second target class
    maps[0, 0, 1, 2] = 3.0
    pos, rule = choose_guided(maps, torch.tensor([0]), 0, 3, seed=0)
    assert pos[0, :2].tolist() == [[2, 2], [1, 2]] and rule.eq(1).all()
    assert len({tuple(p) for p in pos[0].tolist()}) == 3  # interior is 2x2: three distinct positions
    assert split_samples(4, 0.5) == (2, 2) and split_samples(3, 1.0) == (0, 3) and split_samples(1, 0.5) == (0, 1)
    with pytest.raises(DebugAtlasError, match="guided_fraction"):
        split_samples(2, 1.5)
    with pytest.raises(DebugAtlasError, match="samples_per_image"):
        split_samples(0, 0.5)
    with pytest.raises(DebugAtlasError, match="spatial"):
        from debugatlas.capture.guided import capture_guided

        capture_guided(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), _bright_dataset()[0], "1",
                       CaptureSpec(samples_per_image=2))


def test_record_rejects_unknown_rules():
    recorder = ActivationRecorder("feat")
    with pytest.raises(DebugAtlasError, match="rule"):
        recorder.record(torch.zeros(1, 2, 3), torch.zeros(1, 2, 2, dtype=torch.long),
                        torch.tensor([[0, 7]]), [0], [0])


def test_capture_with_guided_sampling_dispatches_to_the_gradient_pass():
    from debugatlas.capture.guided import capture_guided

    ds, _ = _bright_dataset()
    spec = CaptureSpec(sampling="guided", samples_per_image=2, guided_fraction=0.5, seed=4, guided_classes=[1])
    via = capture(SquareNet(), ds, "feat", sampling="guided", samples_per_image=2, guided_fraction=0.5, seed=4,
                  guided_classes=[1])
    direct = capture_guided(SquareNet(), ds, "feat", spec)
    assert torch.equal(via.positions, direct.positions) and torch.equal(via.rule, direct.rule)
    again = capture(SquareNet(), ds, "feat", spec)
    assert torch.equal(again.positions, via.positions) and spec.guided_classes == (1,)
    with pytest.raises(DebugAtlasError, match="guided"):
        capture(SquareNet(), ds, "feat", sampling="attribution")
