"""Findings: the confirmed features of a pair, each over the atlas cells that show it
(`features`), each said in one plain sentence (`artifacts.record.sentence`)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from ..artifacts.paths import icon_path
from ..artifacts.record import FeatureCell, Finding, sentence
from ..atlas import Atlas
from ..capture import ActivationSet
from ..patches import REAL_SOURCES
from ..shortcut import feature_evidence
from . import features
from .records import PairPlan, PairTest

_PLACEMENT_ORDER = ("random", "static", "dynamic")


def pair_findings(*, plan: PairPlan, test: PairTest, atlas: Atlas, acts: ActivationSet,
                  whitening: torch.Tensor | None = None, limit: int = 5) -> tuple[Finding, ...]:
    """Confirmed patches grouped by cell, the cells grouped into features (`features.FEATURE_RULE`).

    Cells are ranked first by how many of the kept patches they hold, then by their samples, then
    in the order the selection half ranked them. A feature that flips in several forms (crops of
    its real exemplars, its icon, a patch optimised from its direction) is better established
    than one that flips only as an optimised patch: a patch optimised in context from a cell next
    to a strong feature can flip as well as the feature's own, while the cell's few exemplars show
    something else. How many of a cell's patches the selection half kept measures that support
    without using the held-out half; among equally supported cells, the one the model's
    activations fall in more often speaks for more images. Per cell the representative result is
    the confirmed one under the first placement of random, static, dynamic.

    A feature is led by its best-ranked cell, whose patch and held-out rate it reports (chosen
    without looking at the held-out rates, so the rate stays unbiased); it lists every cell with
    its own rate, the exemplars of all of them, the sources of all their confirmed patches, how
    many crops of real images from its cells the held-out half measured, and whether its confirmed
    patches are all synthesized (then the finding says the model can be pushed toward B along
    this direction, not yet that real images carry it). Whether it is a suspected shortcut is
    judged on the feature as a whole, all its cells together (`shortcut.feature_evidence`), or on
    one of its cells alone where that meets the flag and the union does not (`_judged`); each
    cell carries its judgement of itself alone. `whitening`: the run's whitening of cell
    directions (`icons.run_whitening`; None compares plain mean activations).
    """
    if test.suite is None:
        return ()
    confirmed = [r for r in test.suite.baseline.results if not r.is_control and r.verdict == "confirmed"
                 and r.cell is not None]
    best: dict = {}
    for r in sorted(confirmed, key=lambda r: (_PLACEMENT_ORDER.index(r.placement), -r.lift)):
        best.setdefault(r.cell, r)
    rank = {p.id: k for k, p in enumerate(test.suite.patches)}  # the selection half's order, not the held-out one
    support = Counter(p.cell for p in test.suite.patches)
    order = sorted(best.items(),
                   key=lambda kv: (-support[kv[0]], -int(atlas.counts[kv[0]]), rank[kv[1].patch_id]))
    if not order:
        return ()
    labels = acts.labels.numpy()
    cells = [tuple(cell) for cell, _ in order]
    ids = [tuple(int(i) for i in acts.image_ids[atlas.exemplars.get(c, [])].tolist()) if atlas.exemplars.get(c)
           else () for c in cells]
    links = features.linked(cells, means=np.stack([np.asarray(atlas.mean_activation[c]) for c in cells]),
                            whitening=whitening, exemplars=[set(i) for i in ids],
                            mixes=np.stack([np.bincount(labels[atlas.exemplars.get(c, [])],
                                                        minlength=atlas.class_histogram.shape[-1]) for c in cells]),
                            grid_mixes=atlas.class_histogram, valid=atlas.valid)
    judge = _Judge(plan, test, atlas, acts, rank)
    evidence = [judge([c]) for c in cells]
    out = []
    for group in features.groups(links)[:limit]:
        members = [(cells[k], order[k][1], ids[k], evidence[k]) for k in group]
        out.append(_feature(plan, test, confirmed, members, _judged(judge([cells[k] for k in group]), members)))
    return tuple(out)


def _judged(together, members):
    """The evidence a feature is judged on: of all its cells together, unless that misses the flag
    and one of its cells alone meets it (then the first such cell's, in rank order). Cells where the
    feature meets the rest of the atlas hold samples of other classes and dilute the union's
    enrichment; a cell that alone is a shortcut's is evidence about the one feature all the same."""
    if together.suspected:
        return together
    return next((m[3] for m in members if m[3].suspected), together)


class _Judge:
    """The shortcut evidence of a set of cells of one pair (`shortcut.feature_evidence`)."""

    def __init__(self, plan: PairPlan, test: PairTest, atlas: Atlas, acts: ActivationSet, rank: dict) -> None:
        self.plan, self.atlas, self.acts = plan, atlas, acts
        self.labels, self.ids = acts.labels.numpy(), acts.image_ids.numpy()
        results: dict = {}
        for r in test.suite.baseline.results:
            if not r.is_control and r.source in REAL_SOURCES and r.cell is not None:
                results.setdefault(r.patch_id, []).append(r)
        # one result per real crop, under the first placement of random, static, dynamic; in the selection order
        self.real = sorted(((min(rs, key=lambda r: _PLACEMENT_ORDER.index(r.placement)), rank.get(pid, len(rank)))
                            for pid, rs in results.items()), key=lambda rr: rr[1])

    def __call__(self, cells):
        own = {tuple(c) for c in cells}
        samples = list(dict.fromkeys(s for c in cells for s in self.atlas.exemplars.get(tuple(c), [])))
        by_image = {int(self.ids[s]): int(self.labels[s]) for s in samples}
        return feature_evidence(self.atlas, labels=self.labels, image_ids=self.ids, cells=cells, b=self.plan.b,
                                exemplar_labels=list(by_image.values()),
                                real=[r for r, _ in self.real if tuple(r.cell) in own],
                                positions=self.acts.positions, spatial_shape=self.acts.spatial_shape)


def _feature(plan: PairPlan, test: PairTest, confirmed, members, evidence) -> Finding:
    """One finding from its cells (cell, representative result, exemplar ids, evidence of the cell
    alone), leader first, and the evidence of all of them together."""
    cell, r, _, _ = members[0]
    own = {m[0] for m in members}
    patch = next(p for p in test.suite.patches if p.id == r.patch_id)
    sources = sorted({c.source for c in confirmed if c.cell in own})
    real_tested = sum(1 for p in test.suite.patches if p.cell in own and p.source in REAL_SOURCES)
    exemplars = tuple(dict.fromkeys(i for m in members for i in m[2]))
    return Finding(
        cell=cell, statement=sentence(plan.a_name, plan.b_name, r.flip_rate, r.flip_rate_ci,
                                      r.noise_flip_rate, r.natural_flip_rate, r.n_images, r.placement),
        patch=r.patch_id, source=patch.source, placement=r.placement, n_images=int(r.n_images),
        flip_rate=r.flip_rate, flip_rate_ci=_ci(r), p_value=r.p_value, noise_flip_rate=r.noise_flip_rate,
        natural_flip_rate=r.natural_flip_rate, exemplar_ids=exemplars, icon=icon_path(cell),
        confirmed_sources=tuple(sources), real_crops_tested=real_tested,
        synthesized_only=not any(source in REAL_SOURCES for source in sources),
        suspected_shortcut=bool(evidence.suspected), shortcut_evidence=evidence.to_dict(),
        cells=tuple(FeatureCell(cell=c, patch=m.patch_id, placement=m.placement, n_images=int(m.n_images),
                                flip_rate=m.flip_rate, flip_rate_ci=_ci(m), noise_flip_rate=m.noise_flip_rate,
                                natural_flip_rate=m.natural_flip_rate, exemplar_ids=i,
                                suspected_shortcut=bool(e.suspected)) for c, m, i, e in members),
    )


def _ci(r) -> tuple[float, float] | None:
    return tuple(r.flip_rate_ci) if r.flip_rate_ci else None
