"""capture.py: sampling positions, reservoir cap, records pointing back to the dataset, hooks removed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from debugatlas import DebugAtlasError
from debugatlas.capture import ActivationRecorder, capture
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
