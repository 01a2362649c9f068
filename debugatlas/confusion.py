"""Confusion: which class pairs the model mixes up, and which atlas cells may explain it.

A *confusing cell* for the pair (A, B) holds features that occur in images of A yet carry
attribution toward B. Attribution only nominates candidates; patch tests confirm them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .core.errors import DebugAtlasError
from .atlas import Atlas, _as_numpy, _attribution_matrix, _check_class, _cosine_to_rows
from .capture import ActivationSet

SCORE_DESCRIPTION = (
    "score(cell) = mean over the cell's samples whose true label is A of "
    "(attribution to B - attribution to A), where attribution to class c is h · ∂logit_c/∂h of the "
    "sampled activation vector h. Only valid cells holding at least `min_count_a` samples of A are "
    "ranked; higher is more confusing (a positive score means the feature, seen in images of A, "
    "pushes the logits toward B more than toward A). Ties are broken by the number of A samples, "
    "then by the cell's total count, then by (i, j)."
)


def _int_array(values: Any, name: str) -> np.ndarray:
    arr = _as_numpy(values, name, np.float64).reshape(-1)
    if arr.size and not np.array_equal(arr, np.round(arr)):
        raise DebugAtlasError(f"`{name}` must hold integer class indices; got e.g. {arr[arr != np.round(arr)][0]!r}.")
    return arr.astype(np.int64)


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Counts [K, K] int64: entry [t, p] is the number of samples of true class t predicted as p."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DebugAtlasError(f"`num_classes={num_classes!r}` must be an int >= 1.")
    k = int(num_classes)
    y, p = _int_array(labels, "labels"), _int_array(preds, "preds")
    if y.size != p.size:
        raise DebugAtlasError(
            f"`labels` has {y.size} entries and `preds` has {p.size}. HINT: pass one prediction per label."
        )
    for name, arr in (("labels", y), ("preds", p)):
        bad = arr[(arr < 0) | (arr >= k)]
        if bad.size:
            hint = (" HINT: -1 marks an unknown prediction; capture with the model's predictions."
                    if name == "preds" and bad[0] == -1 else
                    f" HINT: pass `num_classes` >= {int(arr.max()) + 1} or fix the {name}.")
            raise DebugAtlasError(f"`{name}` holds {int(bad[0])}, outside range(0, {k}).{hint}")
    return np.bincount(y * k + p, minlength=k * k).reshape(k, k).astype(np.int64)


def most_confused_pairs(cm: Any, n: int = 3) -> list[tuple[int, int]]:
    """The `n` off-diagonal pairs (a true, b predicted) with the most confusions (count > 0).

    Sorted by count (descending), then by rate count / (samples of a) (descending), then by (a, b).
    """
    m = _as_numpy(cm, "cm", np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise DebugAtlasError(f"`cm` has shape {m.shape}; expected a square [K, K] confusion matrix.")
    if (m < 0).any() or not np.isfinite(m).all():
        raise DebugAtlasError("`cm` holds negative or non-finite counts. HINT: pass `confusion_matrix(...)`.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DebugAtlasError(f"`n={n!r}` must be an int >= 0.")
    rows = m.sum(axis=1)
    pairs = [
        (-m[a, b], -(m[a, b] / rows[a]), a, b)
        for a in range(m.shape[0]) for b in range(m.shape[1])
        if a != b and m[a, b] > 0
    ]
    return [(int(a), int(b)) for _, _, a, b in sorted(pairs)[: int(n)]]


PAIR_KINDS = ("confused", "near_miss")
NEAR_MISS_DESCRIPTION = (
    "A near miss (A, B) is a pair without confusions whose margin is smallest: the highest mean "
    "softmax probability of B over the images of A that the model classifies correctly."
)


@dataclass(frozen=True)
class PickedPair:
    """A pair (a true, b predicted) chosen for study.

    kind: "confused" (count > 0 images of a predicted b) or "near_miss" (see NEAR_MISS_DESCRIPTION);
    count: confusions a -> b; mean_p_b: mean P(b) over correctly classified images of a (None
    when no probabilities were given or a has no correctly classified image).
    """

    a: int
    b: int
    kind: str
    count: int
    mean_p_b: float | None = None


def near_miss_pairs(probs: Any, labels: Any, preds: Any, exclude=(), n: int = 3) -> list[tuple[int, int, float]]:
    """The `n` pairs (a, b, mean P(b)) with the highest mean softmax P(b) over the images of a
    that the model classifies correctly (a != b, pairs in `exclude` skipped).

    probs: [N, K] softmax probabilities; labels, preds: [N]. Classes without a correctly
    classified image give no pair. Sorted by mean P(b) (descending), then (a, b).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DebugAtlasError(f"`n={n!r}` must be an int >= 0.")
    p = _as_numpy(probs, "probs", np.float64)
    if p.ndim != 2 or not np.isfinite(p).all():
        raise DebugAtlasError(f"`probs` has shape {p.shape} or holds NaN/Inf; expected finite [N, K] probabilities.")
    k = p.shape[1]
    y, pred = _int_array(labels, "labels"), _int_array(preds, "preds")
    if not y.size == pred.size == p.shape[0]:
        raise DebugAtlasError(
            f"`probs` has {p.shape[0]} rows, `labels` {y.size} and `preds` {pred.size}. HINT: one row per image."
        )
    confusion_matrix(y, pred, k)  # checks the class ranges
    correct = y == pred
    skip = {(int(a), int(b)) for a, b in exclude}
    rows = []
    for a in range(k):
        mine = correct & (y == a)
        if not mine.any():
            continue
        mean = p[mine].mean(axis=0)
        rows += [(-float(mean[b]), a, b) for b in range(k) if b != a and (a, b) not in skip]
    return [(a, b, -m) for m, a, b in sorted(rows)[: int(n)]]


def pick_pairs(cm: Any, n: int = 3, probs: Any = None, labels: Any = None, preds: Any = None) -> list[PickedPair]:
    """The pairs to study for `pairs="auto"`: the most confused (`most_confused_pairs`), then, when
    fewer than `n` have confusions and probabilities are given, the near misses (`near_miss_pairs`).
    """
    m = _as_numpy(cm, "cm", np.float64)
    confused = most_confused_pairs(cm, n)
    means: dict = {}
    if probs is not None:
        if labels is None or preds is None:
            raise DebugAtlasError("`probs` needs `labels` and `preds` too. HINT: pass all three or none.")
        k = m.shape[0]
        if _as_numpy(probs, "probs", np.float64).shape[-1] != k:
            raise DebugAtlasError(
                f"`probs` has {np.shape(probs)[-1]} classes and `cm` {k}. HINT: one column per class."
            )
        means = {(a, b): p for a, b, p in near_miss_pairs(probs, labels, preds, (), k * (k - 1))}
    out = [PickedPair(a, b, "confused", int(m[a, b]), means.get((a, b))) for a, b in confused]
    if probs is not None and len(out) < n:
        extra = near_miss_pairs(probs, labels, preds, exclude=confused, n=n - len(out))
        out += [PickedPair(a, b, "near_miss", int(m[a, b]), p) for a, b, p in extra]
    return out


def softmax_probs(model, dataset, ids: Any, batch_size: int = 256, device=None) -> np.ndarray:
    """Softmax probabilities [N, K] float32 of `model` on the images `dataset[i]` for i in `ids`.

    For `near_miss_pairs`; the model is left as found (mode, requires_grad).
    """
    from .core.datasets import load_images
    from .core.model import as_logits, model_device, preserved_model_state

    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    device = torch.device(device) if device is not None else model_device(model)
    out = []
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        for start in range(0, len(ids), int(batch_size)):
            images = load_images(dataset, ids[start:start + int(batch_size)]).to(device)
            out.append(as_logits(model(images)).float().softmax(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@dataclass
class ConfusingCell:
    """A candidate cell for the pair (A, B), see `SCORE_DESCRIPTION`.

    cell:    (i, j) in the atlas grid.
    score:   mean over the cell's A samples of attribution_B - attribution_A.
    count:   all samples in the cell.
    count_a: samples in the cell whose true label is A.
    attribution_a: mean attribution to A over the cell's A samples.
    attribution_b: mean attribution to B over the cell's A samples.
    exemplars: parent-sample indices of the cell's A samples, most cosine-similar to the cell's
               mean activation first.
    """

    cell: tuple[int, int]
    score: float
    count: int
    count_a: int
    attribution_a: float
    attribution_b: float
    exemplars: list[int] = field(default_factory=list)


def rank_confusing_cells(
    atlas: Atlas,
    acts: ActivationSet,
    attributions: Any,
    a: int,
    b: int,
    top: int = 32,
    min_count_a: int = 3,
    n_exemplars: int = 8,
) -> list[ConfusingCell]:
    """Rank the atlas cells that may make the model read class `a` as class `b`, best first.

    score(cell) = mean over the cell's samples with true label `a` of
    (attributions[s, b] - attributions[s, a]). A cell is ranked when it is valid in the atlas and
    holds at least `min_count_a` samples of `a`; ties go to more samples of `a`, then more samples,
    then the smaller (i, j). At most `top` cells are returned (fewer when fewer qualify; scores may
    be <= 0 when nothing in the atlas pulls `a` toward `b`). `acts` and `attributions` [N, K] are
    the parent set that `atlas.sample_index` points into. See `SCORE_DESCRIPTION`.
    """
    if not isinstance(atlas, Atlas):
        raise DebugAtlasError(f"`atlas` is a {type(atlas).__name__}, not an Atlas. HINT: use `build_atlas(...)`.")
    attr = _attribution_matrix(attributions, len(acts))
    a = _check_class(a, attr.shape[1], "a")
    b = _check_class(b, attr.shape[1], "b")
    if a == b:
        raise DebugAtlasError(f"`a={a}` and `b={b}` are the same class. HINT: rank cells for two different classes.")
    for name, value, low in (("top", top, 0), ("min_count_a", min_count_a, 1), ("n_exemplars", n_exemplars, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DebugAtlasError(f"`{name}={value!r}` must be an int >= {low}.")
    if atlas.sample_index.size and atlas.sample_index.max() >= len(acts):
        raise DebugAtlasError(
            f"The atlas points at sample {int(atlas.sample_index.max())} but `acts` has {len(acts)} samples. "
            "HINT: pass the ActivationSet and attributions the atlas was built from."
        )
    g = atlas.grid_size
    labels = acts.labels.detach().cpu().numpy().astype(np.int64)[atlas.sample_index]
    is_a = labels == a
    if not is_a.any():
        raise DebugAtlasError(
            f"Class a={a} has no samples in the atlas ({atlas.sample_index.size} samples). "
            "HINT: capture more images of that class, or build the atlas without a filter that drops it."
        )
    flat = atlas.cells[is_a, 0] * g + atlas.cells[is_a, 1]
    parent = atlas.sample_index[is_a]
    attr_a, attr_b = attr[parent, a].astype(np.float64), attr[parent, b].astype(np.float64)
    count_a = np.bincount(flat, minlength=g * g)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_a = np.bincount(flat, weights=attr_a, minlength=g * g) / count_a
        mean_b = np.bincount(flat, weights=attr_b, minlength=g * g) / count_a
    score = mean_b - mean_a
    counts = atlas.counts.reshape(-1)
    eligible = np.flatnonzero(atlas.valid.reshape(-1) & (count_a >= min_count_a))
    order = sorted(eligible.tolist(), key=lambda c: (-score[c], -count_a[c], -counts[c], c))[: int(top)]

    means = atlas.mean_activation.reshape(g * g, -1)
    keep = np.isin(flat, order)
    vectors = acts.vectors[torch.as_tensor(parent[keep])].detach().cpu().float().numpy()
    cos = _cosine_to_rows(vectors, means, flat[keep]) if keep.any() else np.zeros(0)
    kept_flat, kept_ids = flat[keep], parent[keep]
    result = []
    for c in order:
        inside = np.flatnonzero(kept_flat == c)
        best = inside[np.lexsort((kept_ids[inside], -cos[inside]))][: int(n_exemplars)]
        result.append(ConfusingCell(
            cell=(c // g, c % g), score=float(score[c]), count=int(counts[c]), count_a=int(count_a[c]),
            attribution_a=float(mean_a[c]), attribution_b=float(mean_b[c]),
            exemplars=[int(k) for k in kept_ids[best]],
        ))
    return result
