"""Name the suspect: flag a confirmed finding as a *suspected shortcut*.

A planted trigger (or a watermark, a scanner tag, a border the data collector left) has a tell-tale
shape in an atlas: the samples near its cell come from images of the class B it pushes toward
(the trigger lives in B's training images), the feature is small (a layer position whose effective
receptive field covers a small part of the image), and its cell is far purer in B than the atlas
around it (a natural B feature blends into a wide region of B features; a trigger is a small island
of a few cells, so the cell and its immediate neighbours are B while the ring beyond is not).

A confirmed finding is flagged when all three hold (numbers chosen on the planted-shortcut runs, see
`experiments/planted_shortcut.py`; each is recorded with the finding so a reader can judge):

- exemplar_b_share >= MIN_B_SHARE (0.6): share of the cell's exemplars taken from images of B;
- field_fraction <= MAX_FIELD_FRACTION (0.25): the layer's *effective* receptive field, the
  smallest set of pixels holding `FIELD_MASS` (90 %) of the input-gradient mass of the centre
  position (mean over random inputs), as a share of the image's pixels (`effective_field_fraction`);
  the theoretical field of a deep layer covers the whole image and says little;
- min(purity, island_purity) - neighbour_purity >= MIN_PURITY_GAP (0.5): purity = share of the
  cell's samples from images of B; island purity = the same over the cell and its valid neighbours
  within Chebyshev distance `radius` (1); neighbour purity = the same over the valid cells of the
  ring beyond, at distance radius + 1 .. radius + 2, widened outward (up to radius + 5) while it
  holds fewer than MIN_NEIGHBOUR_SAMPLES, and the atlas-wide share of B when even that is empty.
  On the planted digits run (cross trigger in every 7, layer2, guided sampling) the three cells of
  the trigger's island scored 1.0, 1.0 and 0.76, every other cell at most 0.10.

`shortcut_candidates` ranks every valid cell by that gap: a nominator for the patch tests that
does not depend on attribution or on a rendered icon.

`shortcut_evidence` and `is_suspected_shortcut` are pure (numbers in, numbers out);
`effective_field_fraction` runs the model once per layer.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .atlas import Atlas
from .core.errors import DebugAtlasError
from .core.gradients import position_input_gradients

MIN_B_SHARE = 0.6
MAX_FIELD_FRACTION = 0.25
MIN_PURITY_GAP = 0.5
MIN_NEIGHBOUR_SAMPLES = 5
FIELD_MASS = 0.9
CRITERIA = (f"suspected shortcut: a confirmed finding whose cell's exemplars come from images of B "
            f"(share >= {MIN_B_SHARE}), whose layer sees a small part of the image (effective receptive "
            f"field <= {MAX_FIELD_FRACTION:.0%} of the pixels, {FIELD_MASS:.0%} of the gradient mass) and "
            f"whose cell and its immediate neighbours are much purer in B than the cells around them "
            f"(gap >= {MIN_PURITY_GAP})")


@dataclass(frozen=True)
class ShortcutEvidence:
    """The numbers behind the suspected-shortcut flag of one finding (cell of an atlas, class B).

    exemplar_b_share: share of the cell's exemplars whose image is of class B (nan without exemplars).
    field_fraction: effective receptive field of the layer as a share of the image's pixels.
    purity / island_purity / neighbour_purity: share of samples from images of B in the cell / in the
        cell and its immediate neighbours / in the ring of cells around those.
    neighbour_samples: samples the neighbour purity was computed from (0: atlas-wide share used).
    confirmed: the finding's patch test verdict was "confirmed".
    suspected: all criteria hold (see the module docstring).
    """

    cell: tuple[int, int]
    b: int
    exemplar_b_share: float
    field_fraction: float
    purity: float
    neighbour_purity: float
    neighbour_samples: int
    confirmed: bool
    suspected: bool
    island_purity: float = float("nan")

    @property
    def purity_gap(self) -> float:
        return _gap(self.purity, self.island_purity, self.neighbour_purity)

    def to_dict(self) -> dict:
        """Plain values for summary.json (NaN becomes None)."""
        out = asdict(self)
        out["cell"] = list(self.cell)
        out["purity_gap"] = self.purity_gap
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in out.items()}


def _gap(purity: float, island_purity: float, neighbour_purity: float) -> float:
    inner = purity if island_purity != island_purity else min(purity, island_purity)
    return inner - neighbour_purity


def is_suspected_shortcut(exemplar_b_share: float, field_fraction: float, purity: float,
                          neighbour_purity: float, confirmed: bool = True,
                          island_purity: float = float("nan")) -> bool:
    """The flag from its numbers (thresholds in the module docstring)."""
    if not confirmed or exemplar_b_share != exemplar_b_share or purity != purity:
        return False
    return (exemplar_b_share >= MIN_B_SHARE and field_fraction <= MAX_FIELD_FRACTION
            and _gap(purity, island_purity, neighbour_purity) >= MIN_PURITY_GAP)


def shortcut_evidence(atlas: Atlas, labels: np.ndarray | torch.Tensor, cell: Sequence[int], b: int,
                      field_fraction: float, *, confirmed: bool = True, radius: int = 1) -> ShortcutEvidence:
    """Evidence that `cell` of `atlas` is a shortcut toward class `b`.

    labels: [N_parent] true labels of the parent sample set the atlas indexes (`acts.labels`).
    field_fraction: from `effective_field_fraction` for the atlas's layer.
    """
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    g = atlas.grid_size
    i, j = (int(v) for v in cell)
    if not (0 <= i < g and 0 <= j < g):
        raise DebugAtlasError(f"`cell={tuple(cell)!r}` is outside the {g}x{g} atlas. HINT: pass (i, j) of a cell.")
    if not 0.0 <= float(field_fraction) <= 1.0:
        raise DebugAtlasError(f"`field_fraction={field_fraction!r}` must be a share in [0, 1].")
    if int(radius) < 1:
        raise DebugAtlasError(f"`radius={radius!r}` must be >= 1.")
    if labels.size and atlas.sample_index.size and int(atlas.sample_index.max()) >= labels.size:
        raise DebugAtlasError(
            f"The atlas points at sample {int(atlas.sample_index.max())} but `labels` has {labels.size} entries. "
            "HINT: pass the labels of the ActivationSet the atlas was built from."
        )
    count, b_count, b_share = _b_counts(atlas, labels, b)
    purity = float(b_count[i, j] / count[i, j]) if count[i, j] else float("nan")
    island, _ = _share(atlas, count, b_count, (i, j), 0, int(radius))
    neighbour_purity, neighbour_samples = _ring(atlas, count, b_count, (i, j), int(radius))
    if neighbour_samples == 0:
        neighbour_purity = b_share
    exemplars = atlas.exemplars.get((i, j), [])
    share = float((labels[np.asarray(exemplars, dtype=np.int64)] == b).mean()) if exemplars else float("nan")
    suspected = is_suspected_shortcut(share, float(field_fraction), purity, neighbour_purity, bool(confirmed), island)
    return ShortcutEvidence((i, j), int(b), share, float(field_fraction), purity, neighbour_purity,
                            neighbour_samples, bool(confirmed), bool(suspected), island)


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


def effective_field_fraction(model: nn.Module, layer: str | nn.Module, input_shape: Sequence[int],
                             mass: float = FIELD_MASS, trials: int = 8, seed: int = 0) -> float:
    """Share of the image's pixels in the effective receptive field of the layer's centre position.

    Mean |∂(random channel mix at the centre)/∂pixel| over `trials` random inputs, summed over
    colour channels; the field is the smallest set of pixels holding `mass` of that total. A pooled
    layer ([B, C]) sees the whole image (1.0). The model is left as found.
    """
    if not 0.0 < float(mass) <= 1.0:
        raise DebugAtlasError(f"`mass={mass!r}` must be in (0, 1]. HINT: 0.9 keeps 90 % of the gradient.")
    weights = position_input_gradients(model, layer, input_shape, None,
                                       lambda grad: grad.abs().sum(1).mean(0).flatten().double().cpu(),
                                       trials=trials, seed=seed)
    if weights is None:
        return 1.0
    (weight,) = weights
    total = float(weight.sum())
    if total <= 0:
        return 1.0
    ordered = torch.sort(weight, descending=True).values.cumsum(0)
    needed = int(torch.searchsorted(ordered, torch.tensor(float(mass) * total, dtype=torch.float64))) + 1
    return min(needed, weight.numel()) / weight.numel()
