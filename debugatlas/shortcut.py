"""Name the suspect: flag a confirmed feature as a *suspected shortcut*, whatever its shape.

A planted trigger, a watermark, a scanner tag or a border the data collector left can have any
shape, size, opacity or place; it may span several atlas cells or sit at one fixed spot. What any
of them leaves, whatever its shape, is this: it lives in the images of the class B it pushes
toward (the model learned it there), so the feature's exemplars are images of B; real pixels carry
it, so a crop of a real image from its cells, pasted on held-out images of A, flips them to B; and
it is rare everywhere else, in A and in every other class. A natural feature of B that moves the
model (a 7's bar, an airplane's wing) is shared with the classes that look like B: some class
other than B shows it too.

A confirmed feature (one finding, over all its cells) is flagged when all three hold (`CRITERIA`;
every number is recorded with the finding as its `shortcut_evidence`):

- exemplar_b_share >= MIN_B_SHARE (0.6): share of the feature's exemplars (all its cells) taken
  from images of B;
- real_beats_noise >= 1: a crop of a real image from its cells (source "exemplar"), pasted on the
  held-out images of A, flips more of them than the noise patch, corrected like every verdict
  (verdict "confirmed" or "natural"). Beating the crop of a real image of B as well is not asked:
  when the shortcut is in most images of B, that control carries it too;
- enrichment >= MIN_ENRICHMENT (10): the share of B's analysed images with a sample in the
  feature's cells, over the largest such share of any other class (each share smoothed as
  (k + 0.5) / (n + 1), so a class with none still counts half an image).

On the digits (`make shortcut`, a cross in every 7, 51 analysed 7s) the planted feature, over its
three cells, scores 1.0, 3 of 3 and 101 (all 51 images of 7 show it, no image of another class);
the strongest natural feature of the natural run toward 7 whose real crop flips 4s scores 1.0,
1 of 1 and 5.4: 5 of 51 images of 1 show it too.

Beside the flag the evidence says where in the image the feature sits (`positions`: how many of
its samples fall at each position of the layer's output, and `spot`, the share within the densest
window of side 2 * (side // 12) + 1 positions: one position on a 6 x 6 output, 3 x 3 on 16 x 16,
5 x 5 on 32 x 32, about a sixth of the side or less): a tag at a fixed place is one spot, a
trigger pasted anywhere is spread out.

`shortcut_candidates` ranks every valid cell by how much purer in B it and its immediate neighbours
are than the ring of cells beyond: a nominator for the patch tests that needs no model,
attribution or icon (a trigger is often a small island of B in the atlas).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from .atlas import Atlas
from .core.errors import DebugAtlasError

MIN_B_SHARE = 0.6
MIN_ENRICHMENT = 10.0
MIN_REAL_BEATS_NOISE = 1
BEATS_NOISE = ("confirmed", "natural")
MIN_PURITY_GAP = 0.5
MIN_NEIGHBOUR_SAMPLES = 5
CRITERIA = (f"suspected shortcut: a confirmed feature whose exemplars come from images of B (share >= "
            f"{MIN_B_SHARE}), whose real pixels flip A to B (a crop of a real image from its cells beats the noise "
            f"patch on held-out images) and that is rare outside B (B's images show it at least {MIN_ENRICHMENT:g} "
            f"times as often as those of any other class)")


@dataclass(frozen=True)
class RealCrop:
    """The crop of a real image that speaks for a feature: of its cells' real crops measured on the
    held-out half, the one the selection half ranked first, with its held-out numbers."""

    patch: str
    cell: tuple[int, int]
    placement: str
    n_images: int
    flip_rate: float
    flip_rate_ci: tuple[float, float] | None
    noise_flip_rate: float | None
    natural_flip_rate: float | None
    verdict: str | None


@dataclass(frozen=True)
class ShortcutEvidence:
    """The numbers behind the suspected-shortcut flag of one feature (its cells of an atlas, class B).

    exemplar_b_share: share of its exemplars whose image is of B (nan without exemplars).
    real_beats_noise / real_confirmed / real_tested: crops of real images from its cells that beat
        the noise control / beat both controls / were measured, on the held-out half; real_crop:
        the one that speaks for it (`RealCrop`), None when none was measured.
    images_b / n_images_b: analysed images of B with a sample in its cells / analysed images of B;
    other_class / other_images / n_images_other: the other class that shows it most, likewise;
    enrichment: B's smoothed share over that class's (see the module docstring).
    purity: share of its samples taken from images of B.
    positions: [H][W] samples of it at each position of the layer's output (None for pooled
        layers); spot: share of them in the densest window (see the module docstring).
    suspected: every criterion holds.
    """

    cells: tuple[tuple[int, int], ...]
    b: int
    exemplar_b_share: float
    real_beats_noise: int
    real_confirmed: int
    real_tested: int
    images_b: int
    n_images_b: int
    other_class: int | None
    other_images: int
    n_images_other: int
    enrichment: float
    purity: float
    suspected: bool
    real_crop: RealCrop | None = None
    positions: tuple[tuple[int, ...], ...] | None = None
    spot: float | None = None

    def to_dict(self) -> dict:
        """Plain values for summary.json (NaN becomes None)."""
        out = asdict(self)
        out["cells"] = [list(c) for c in self.cells]
        out["positions"] = None if self.positions is None else [list(r) for r in self.positions]
        if self.real_crop is not None:
            out["real_crop"]["cell"] = list(self.real_crop.cell)
            ci = self.real_crop.flip_rate_ci
            out["real_crop"]["flip_rate_ci"] = None if ci is None else list(ci)
        return _plain(out)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def is_suspected_shortcut(exemplar_b_share: float, real_beats_noise: int, enrichment: float) -> bool:
    """The flag from its numbers (thresholds in the module docstring)."""
    if exemplar_b_share != exemplar_b_share or enrichment != enrichment:
        return False
    return (exemplar_b_share >= MIN_B_SHARE and int(real_beats_noise) >= MIN_REAL_BEATS_NOISE
            and enrichment >= MIN_ENRICHMENT)


def _rate(k: int, n: int) -> float:
    return (k + 0.5) / (n + 1)


def feature_evidence(atlas: Atlas, *, labels: np.ndarray | torch.Tensor, image_ids: np.ndarray | torch.Tensor,
                     cells: Sequence[Sequence[int]], b: int, exemplar_labels: Sequence[int],
                     real: Sequence = (), positions: np.ndarray | torch.Tensor | None = None,
                     spatial_shape: tuple[int, int] | None = None) -> ShortcutEvidence:
    """Evidence that the feature over `cells` of `atlas` is a shortcut toward class `b`.

    labels / image_ids: [N_parent] of the parent sample set the atlas indexes (`acts.labels`,
    `acts.image_ids`); exemplar_labels: the true class of each of the feature's exemplar images;
    real: the held-out results (`PatchResult`, source "exemplar") of crops of real images from its
    cells, in the selection half's order; positions [N_parent, 2] and spatial_shape: where each
    sample sits in the layer's output (`acts.positions`, `acts.spatial_shape`), for the position map.
    """
    if int(b) < 0:
        raise DebugAtlasError(f"`b={b!r}` must be a class index >= 0.")
    labels = _numpy(labels)
    ids = _numpy(image_ids)
    if labels.shape != ids.shape:
        raise DebugAtlasError(f"`labels` has {labels.size} entries but `image_ids` {ids.size}. "
                              "HINT: pass both from the ActivationSet the atlas was built from.")
    if labels.size and atlas.sample_index.size and int(atlas.sample_index.max()) >= labels.size:
        raise DebugAtlasError(
            f"The atlas points at sample {int(atlas.sample_index.max())} but `labels` has {labels.size} entries. "
            "HINT: pass the labels of the ActivationSet the atlas was built from.")
    g = atlas.grid_size
    own = [tuple(int(v) for v in c) for c in cells]
    for c in own:
        if not (0 <= c[0] < g and 0 <= c[1] < g):
            raise DebugAtlasError(f"`cell={c!r}` is outside the {g}x{g} atlas. HINT: pass (i, j) of a cell.")
    members = np.unique(np.concatenate([atlas.members(c) for c in own] or [np.zeros(0, np.int64)]))
    n_classes = max(int(labels.max()) + 1 if labels.size else 0, int(b) + 1)
    all_images = _images_per_class(labels, ids, n_classes)
    hit_images = _images_per_class(labels[members], ids[members], n_classes)
    rates = [_rate(int(hit_images[c]), int(all_images[c])) for c in range(n_classes)]
    others = [c for c in range(n_classes) if c != b and all_images[c] > 0]
    other = max(others, key=lambda c: (rates[c], -c)) if others else None
    enrichment = rates[b] / rates[other] if other is not None else float("inf")
    share = float(np.mean([int(v) == b for v in exemplar_labels])) if len(exemplar_labels) else float("nan")
    purity = float((labels[members] == b).mean()) if members.size else float("nan")
    confirmed = sum(1 for r in real if r.verdict == "confirmed")
    beats_noise = sum(1 for r in real if r.verdict in BEATS_NOISE)
    grid, spot = _position_map(positions, spatial_shape, members)
    return ShortcutEvidence(
        cells=tuple(own), b=int(b), exemplar_b_share=share, real_beats_noise=beats_noise,
        real_confirmed=confirmed, real_tested=len(real),
        images_b=int(hit_images[b]), n_images_b=int(all_images[b]), other_class=other,
        other_images=int(hit_images[other]) if other is not None else 0,
        n_images_other=int(all_images[other]) if other is not None else 0,
        enrichment=float(enrichment), purity=purity,
        suspected=is_suspected_shortcut(share, beats_noise, float(enrichment)),
        real_crop=_real_crop(real[0]) if real else None, positions=grid, spot=spot)


def _numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _images_per_class(labels: np.ndarray, ids: np.ndarray, n_classes: int) -> np.ndarray:
    """Distinct image ids per true class."""
    out = np.zeros(n_classes, dtype=np.int64)
    if labels.size:
        pairs = np.unique(np.stack([labels.astype(np.int64), ids.astype(np.int64)], 1), axis=0)
        out += np.bincount(pairs[:, 0], minlength=n_classes)[:n_classes]
    return out


def _position_map(positions, spatial_shape, members: np.ndarray):
    """([H][W] sample counts, share in the densest window of side 2 * (min(H, W) // 12) + 1), or (None, None)."""
    if positions is None or not spatial_shape or members.size == 0:
        return None, None
    h, w = (int(v) for v in spatial_shape)
    pos = _numpy(positions)[members].astype(np.int64)
    pos = pos[(pos[:, 0] >= 0) & (pos[:, 0] < h) & (pos[:, 1] >= 0) & (pos[:, 1] < w)]
    if pos.size == 0:
        return None, None
    grid = np.bincount(pos[:, 0] * w + pos[:, 1], minlength=h * w).reshape(h, w)
    r = min(h, w) // 12
    padded = np.pad(grid, r)
    windows = sum(padded[di:di + h, dj:dj + w] for di in range(2 * r + 1) for dj in range(2 * r + 1))
    return tuple(tuple(int(v) for v in row) for row in grid), float(windows.max() / grid.sum())


def _real_crop(r) -> RealCrop:
    ci = tuple(float(v) for v in r.flip_rate_ci) if r.flip_rate_ci else None
    return RealCrop(patch=r.patch_id, cell=tuple(int(v) for v in r.cell), placement=r.placement,
                    n_images=int(r.n_images), flip_rate=float(r.flip_rate), flip_rate_ci=ci,
                    noise_flip_rate=r.noise_flip_rate, natural_flip_rate=r.natural_flip_rate, verdict=r.verdict)


def shortcut_candidates(atlas: Atlas, labels: np.ndarray | torch.Tensor, b: int, *, radius: int = 1,
                        min_gap: float = 0.0) -> list[tuple[tuple[int, int], float]]:
    """Valid cells ranked by the island purity gap toward `b` (largest first, ties by (i, j)),
    with their gap; only gaps >= `min_gap`. Pure: needs no model, attribution or icon."""
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    count, b_count, b_share = _b_counts(atlas, labels, b)
    out = []
    for cell in atlas.valid_cells():
        purity = float(b_count[cell] / count[cell])
        island, _ = _share(atlas, count, b_count, cell, 0, int(radius))
        ring, n = _ring(atlas, count, b_count, cell, int(radius))
        gap = _gap(purity, island, ring if n else b_share)
        if gap >= min_gap:
            out.append((cell, gap))
    return sorted(out, key=lambda cg: (-cg[1], cg[0]))


def _gap(purity: float, island_purity: float, neighbour_purity: float) -> float:
    inner = purity if island_purity != island_purity else min(purity, island_purity)
    return inner - neighbour_purity


def _b_counts(atlas: Atlas, labels: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Samples per cell [G, G], samples of B per cell, and the atlas-wide share of B."""
    g = atlas.grid_size
    is_b = (labels[atlas.sample_index] == b).astype(np.float64)
    flat = atlas.cells[:, 0] * g + atlas.cells[:, 1]
    count = np.bincount(flat, minlength=g * g).reshape(g, g)
    b_count = np.bincount(flat, weights=is_b, minlength=g * g).reshape(g, g)
    return count, b_count, float(is_b.mean()) if is_b.size else 0.0


def _share(atlas: Atlas, count: np.ndarray, b_count: np.ndarray, cell: tuple[int, int], inner: int,
           outer: int) -> tuple[float, int]:
    """(share of B, samples) over the valid cells at Chebyshev distance inner..outer from `cell`."""
    g = atlas.grid_size
    i, j = cell
    window = np.zeros((g, g), dtype=bool)
    window[max(0, i - outer):i + outer + 1, max(0, j - outer):j + outer + 1] = True
    if inner > 0:
        window[max(0, i - inner + 1):i + inner, max(0, j - inner + 1):j + inner] = False
    window &= atlas.valid
    total, hits = float(count[window].sum()), float(b_count[window].sum())
    return (hits / total if total else float("nan")), int(total)


def _ring(atlas: Atlas, count: np.ndarray, b_count: np.ndarray, cell: tuple[int, int],
          radius: int) -> tuple[float, int]:
    """Share of B in the ring at distance radius + 1 .. radius + 2, widened outward to radius + 5
    while it holds fewer than MIN_NEIGHBOUR_SAMPLES samples."""
    share, total = float("nan"), 0
    for outer in range(radius + 2, radius + 6):
        share, total = _share(atlas, count, b_count, cell, radius + 1, outer)
        if total >= MIN_NEIGHBOUR_SAMPLES:
            break
    return share, total
