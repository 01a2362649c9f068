import numpy as np
import pytest
import sklearn.metrics
import torch

from debugatlas.core import DebugAtlasError
from debugatlas.atlas import build_atlas
from debugatlas.capture import ActivationSet
from debugatlas.confusion import (
    SCORE_DESCRIPTION, ConfusingCell, confusion_matrix, most_confused_pairs, rank_confusing_cells,
)


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 5, 500))
    cm = confusion_matrix(torch.tensor(labels), torch.tensor(preds), 6)
    expected = sklearn.metrics.confusion_matrix(labels, preds, labels=list(range(6)))
    assert cm.dtype == np.int64 and cm.shape == (6, 6)
    assert (cm == expected).all()


def test_confusion_matrix_bad_inputs():
    with pytest.raises(DebugAtlasError, match="outside range"):
        confusion_matrix([0, 1, 3], [0, 1, 1], 3)
    with pytest.raises(DebugAtlasError, match="unknown prediction"):
        confusion_matrix([0, 1], [0, -1], 3)
    with pytest.raises(DebugAtlasError, match="entries"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(DebugAtlasError, match="num_classes"):
        confusion_matrix([0], [0], 0)
    with pytest.raises(DebugAtlasError, match="integer"):
        confusion_matrix([0.5], [0], 2)


def test_most_confused_pairs_hand_made():
    cm = np.array([
        [50, 5, 0, 0],
        [2, 40, 5, 1],   # 1->2 count 5, rate 5/48 > 0->1 rate 5/55
        [0, 0, 30, 0],
        [0, 0, 2, 10],   # 3->2 count 2, rate 2/12 > 1->0 rate 2/48
    ])
    assert most_confused_pairs(cm, n=3) == [(1, 2), (0, 1), (3, 2)]
    assert most_confused_pairs(cm, n=10) == [(1, 2), (0, 1), (3, 2), (1, 0), (1, 3)]
    assert most_confused_pairs(np.eye(3, dtype=int) * 9) == []
    assert most_confused_pairs(cm, n=0) == []
    with pytest.raises(DebugAtlasError, match="square"):
        most_confused_pairs(np.zeros((2, 3)))
    with pytest.raises(DebugAtlasError, match="negative"):
        most_confused_pairs(-np.ones((2, 2)))


def planted(a=1, b=2, k=4, g=4, seed=0):
    """Samples on a g x g grid (one point per cell per sample); cell (2, 1) is planted: its samples
    of class `a` carry strong attribution toward `b` and a distinctive activation direction."""
    rng = np.random.default_rng(seed)
    n_per, c = 12, 5
    cells = [(i, j) for i in range(g) for j in range(g)]
    xy, labels, attr, vectors = [], [], [], []
    for i, j in cells:
        for s in range(n_per):
            label = a if s % 3 else int(rng.integers(0, k))
            xy.append(((i + rng.random()) / g, (j + rng.random()) / g))
            labels.append(label)
            row = rng.normal(0, 0.3, k)
            row[label] += 1.0
            v = rng.normal(size=c)
            if (i, j) == (2, 1) and label == a:
                row[b] += 4.0
                v = np.array([5.0, 0, 0, 0, 0]) + rng.normal(0, 0.1 + s * 0.05, c)
            attr.append(row)
            vectors.append(v)
    n = len(labels)
    acts = ActivationSet(
        torch.tensor(np.array(vectors), dtype=torch.float16), torch.arange(n), torch.tensor(labels),
        torch.tensor(labels), torch.zeros(n, 2, dtype=torch.long), "layer3", (6, 6), n,
    )
    return np.array(xy), acts, torch.tensor(np.array(attr), dtype=torch.float32)


def test_planted_cell_ranks_first():
    xy, acts, attr = planted()
    atlas = build_atlas(xy, acts, attr, grid_size=4)
    ranked = rank_confusing_cells(atlas, acts, attr, a=1, b=2)
    assert isinstance(ranked[0], ConfusingCell)
    assert ranked[0].cell == (2, 1)
    assert ranked[0].score > 2.0 and ranked[0].score > ranked[1].score + 1.5
    assert len(ranked) == 16  # all cells qualify, fewer than `top`
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    # fields follow the stated definition
    labels, attr_np = acts.labels.numpy(), attr.numpy()
    for r in ranked:
        members = atlas.members(r.cell)
        in_a = members[labels[members] == 1]
        assert r.count == len(members) and r.count_a == len(in_a)
        assert r.attribution_a == pytest.approx(attr_np[in_a, 1].mean(), rel=1e-5)
        assert r.attribution_b == pytest.approx(attr_np[in_a, 2].mean(), rel=1e-5)
        assert r.score == pytest.approx(r.attribution_b - r.attribution_a, abs=1e-6)
        assert set(r.exemplars) <= set(in_a.tolist()) and len(r.exemplars) == min(8, len(in_a))
    # exemplars of the planted cell: A samples ordered by cosine to the cell mean
    vec = acts.vectors.float().numpy()
    mean = atlas.mean_activation[2, 1]
    cos = [vec[m] @ mean / np.linalg.norm(vec[m]) / np.linalg.norm(mean) for m in ranked[0].exemplars]
    assert all(x >= y - 1e-9 for x, y in zip(cos, cos[1:]))
    assert "A" in SCORE_DESCRIPTION and "B" in SCORE_DESCRIPTION


def test_rank_respects_top_min_count_and_validity():
    xy, acts, attr = planted()
    atlas = build_atlas(xy, acts, attr, grid_size=4, min_count=13)
    assert rank_confusing_cells(atlas, acts, attr, 1, 2) == []  # no cell reaches min_count 13
    atlas = build_atlas(xy, acts, attr, grid_size=4)
    assert len(rank_confusing_cells(atlas, acts, attr, 1, 2, top=3)) == 3
    assert rank_confusing_cells(atlas, acts, attr, 1, 2, min_count_a=100) == []
    ranked = rank_confusing_cells(atlas, acts, attr, 1, 2, n_exemplars=2)
    assert all(len(r.exemplars) == 2 for r in ranked)


def test_rank_bad_inputs():
    xy, acts, attr = planted()
    atlas = build_atlas(xy, acts, attr, grid_size=4)
    with pytest.raises(DebugAtlasError, match="b=9"):
        rank_confusing_cells(atlas, acts, attr, 1, 9)
    with pytest.raises(DebugAtlasError, match="same class"):
        rank_confusing_cells(atlas, acts, attr, 2, 2)
    # class 3 only appears at every third sample: drop it from the atlas with sample_index
    keep = np.flatnonzero(acts.labels.numpy() != 3)
    sub = build_atlas(xy[keep], acts, attr, grid_size=4, sample_index=keep)
    with pytest.raises(DebugAtlasError, match=r"a=3 has no samples.*HINT"):
        rank_confusing_cells(sub, acts, attr, 3, 1)
    with pytest.raises(DebugAtlasError, match="attributions"):
        rank_confusing_cells(atlas, acts, attr[:5], 1, 2)
    with pytest.raises(DebugAtlasError, match="top"):
        rank_confusing_cells(atlas, acts, attr, 1, 2, top=-1)


def test_ties_broken_by_count_a():
    n = 9
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1])
    xy = np.array([[0.1, 0.1]] * 2 + [[0.9, 0.9]] * 3 + [[0.1, 0.9]] * 4)
    acts = ActivationSet(
        torch.ones(n, 3, dtype=torch.float16), torch.arange(n), torch.tensor(labels), torch.tensor(labels),
        torch.zeros(n, 2, dtype=torch.long), "layer3", (6, 6), n,
    )
    attr = torch.tensor([[0.0, 1.0]] * n)  # every sample has the same score
    atlas = build_atlas(xy, acts, attr, grid_size=2)
    ranked = rank_confusing_cells(atlas, acts, attr, 0, 1, min_count_a=1)
    # count_a 3 first; then count_a 2 with 4 samples before count_a 2 with 2 samples
    assert [r.cell for r in ranked] == [(1, 1), (0, 1), (0, 0)]
    assert all(r.score == 1.0 for r in ranked)


# -- near misses: the closest calls when the model makes too few mistakes -----------------------
from debugatlas.confusion import PickedPair, near_miss_pairs, pick_pairs, softmax_probs  # noqa: E402
from debugatlas.data import TensorImageDataset  # noqa: E402

PROBS = np.array([[0.7, 0.2, 0.1], [0.6, 0.1, 0.3],      # class 0: mean P(1) 0.15, P(2) 0.2
                  [0.1, 0.8, 0.1], [0.3, 0.6, 0.1],      # class 1: mean P(0) 0.2,  P(2) 0.1
                  [0.05, 0.45, 0.5], [0.15, 0.05, 0.8],  # class 2: mean P(0) 0.1,  P(1) 0.25
                  [0.1, 0.9, 0.0]])                      # a 0 read as 1: not counted in the means
LABELS, PREDS = [0, 0, 1, 1, 2, 2, 0], [0, 0, 1, 1, 2, 2, 1]


def test_near_miss_pairs_hand_computed():
    got = near_miss_pairs(PROBS, LABELS, PREDS, n=3)
    assert [(a, b) for a, b, _ in got] == [(2, 1), (0, 2), (1, 0)]  # the 0.2 tie goes to the smaller (a, b)
    assert [p for _, _, p in got] == pytest.approx([0.25, 0.2, 0.2])
    rest = near_miss_pairs(PROBS, LABELS, PREDS, exclude=[(2, 1)], n=10)
    assert [(a, b) for a, b, _ in rest] == [(0, 2), (1, 0), (0, 1), (1, 2), (2, 0)]
    assert rest[2][2] == pytest.approx(0.15)
    assert near_miss_pairs(PROBS, LABELS, PREDS, n=0) == []
    with pytest.raises(DebugAtlasError, match="one row per image"):
        near_miss_pairs(PROBS[:3], LABELS, PREDS)
    with pytest.raises(DebugAtlasError, match="probs"):
        near_miss_pairs(PROBS[0], LABELS[:1], PREDS[:1])


def test_pick_pairs_fills_up_with_near_misses():
    cm = confusion_matrix(LABELS, PREDS, 3)
    picked = pick_pairs(cm, 3, PROBS, LABELS, PREDS)
    assert picked[0] == PickedPair(0, 1, "confused", 1, pytest.approx(0.15))
    assert [(p.a, p.b, p.kind, p.count) for p in picked[1:]] == [(2, 1, "near_miss", 0), (0, 2, "near_miss", 0)]
    assert pick_pairs(cm, 3) == [PickedPair(0, 1, "confused", 1, None)]  # no probabilities: as before
    assert [p.kind for p in pick_pairs(cm, 1, PROBS, LABELS, PREDS)] == ["confused"]
    with pytest.raises(DebugAtlasError, match="labels"):
        pick_pairs(cm, 3, PROBS)


class NearestCentre(torch.nn.Module):
    """logits = -|x - centre_k|^2 over three 2-d centres; 0 and 1 are close, 2 is far."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor([[0.2, 0.2], [0.6, 0.2], [0.9, 0.9]]))
        self.scale = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        return -self.scale * ((x.flatten(1)[:, None, :] - self.centres) ** 2).sum(-1)


def test_near_misses_on_a_model_with_full_accuracy():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(20)
    model = NearestCentre().train()
    points = model.centres[labels] + 0.05 * (torch.rand(60, 2, generator=gen) - 0.5)
    data = TensorImageDataset(points.view(60, 1, 1, 2), labels.tolist(), ["a", "b", "c"])
    probs = softmax_probs(model, data, range(60), batch_size=16)
    preds = probs.argmax(1)
    assert (preds == labels.numpy()).all() and model.training  # 100 % accuracy; the model left as found
    cm = confusion_matrix(labels, preds, 3)
    assert most_confused_pairs(cm, 3) == []  # `pairs="auto"` used to study nothing here
    picked = pick_pairs(cm, 3, probs, labels, preds)
    assert [p.kind for p in picked] == ["near_miss"] * 3
    assert {(p.a, p.b) for p in picked[:2]} == {(0, 1), (1, 0)}  # the close centres are the closest calls
    for p in picked:
        assert p.mean_p_b == pytest.approx(float(probs[labels.numpy() == p.a, p.b].mean()), rel=1e-6)
    assert picked[0].mean_p_b >= picked[1].mean_p_b >= picked[2].mean_p_b > 0
