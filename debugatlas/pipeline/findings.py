"""Findings: the confirmed features of a pair, one per atlas cell, each said in one plain sentence
(`artifacts.record.sentence`)."""
from __future__ import annotations

from collections import Counter

from ..artifacts.paths import icon_path
from ..artifacts.record import Finding, sentence
from ..atlas import Atlas
from ..capture import ActivationSet
from ..patches import REAL_SOURCES
from ..shortcut import shortcut_evidence
from .records import PairPlan, PairTest

_PLACEMENT_ORDER = ("random", "static", "dynamic")


def pair_findings(*, plan: PairPlan, test: PairTest, atlas: Atlas, acts: ActivationSet, field_fraction: float,
                  limit: int = 5) -> tuple[Finding, ...]:
    """Confirmed patches grouped by cell: first the cells that hold most of the kept patches, then
    the cells with more samples, then in the order the selection half ranked them.

    A feature that flips in several forms (crops of its real exemplars, its icon, a patch
    optimised from its direction) is better established than one that flips only as an
    optimised patch: a patch optimised in context from a cell next to a strong feature can
    flip as well as the feature's own, while the cell's few exemplars show something else. How
    many of a cell's patches the selection half kept measures that support without using the
    held-out half; among equally supported cells, the one the model's activations fall in more
    often speaks for more images. Per cell the representative result is the confirmed one under
    the first placement of random, static, dynamic. Each finding carries the suspected-shortcut
    evidence of its cell, the sources of all its confirmed patches, how many crops of real images
    from the cell the held-out half measured, and whether the confirmed patches are all
    synthesized (no crop of a real image from the cell confirmed, or none measured): then the
    finding says the model can be pushed toward B along the cell's direction, not yet that real
    images carry it.
    """
    if test.suite is None:
        return ()
    confirmed = [r for r in test.suite.baseline.results if not r.is_control and r.verdict == "confirmed"
                 and r.cell is not None]
    best: dict = {}
    for r in sorted(confirmed, key=lambda r: (_PLACEMENT_ORDER.index(r.placement), -r.lift)):
        best.setdefault(r.cell, r)
    labels = acts.labels.numpy()
    rank = {p.id: k for k, p in enumerate(test.suite.patches)}  # the selection half's order, not the held-out one
    support = Counter(p.cell for p in test.suite.patches)
    out = []
    order = sorted(best.items(),
                   key=lambda kv: (-support[kv[0]], -int(atlas.counts[kv[0]]), rank[kv[1].patch_id]))
    for cell, r in order[:limit]:
        samples = atlas.exemplars.get(cell, [])
        evidence = shortcut_evidence(atlas, labels, cell, plan.b, field_fraction, confirmed=True)
        patch = next(p for p in test.suite.patches if p.id == r.patch_id)
        sources = sorted({c.source for c in confirmed if c.cell == cell})
        real_tested = sum(1 for p in test.suite.patches if p.cell == cell and p.source in REAL_SOURCES)
        out.append(Finding(
            cell=tuple(cell), statement=sentence(plan.a_name, plan.b_name, r.flip_rate, r.flip_rate_ci,
                                                 r.noise_flip_rate, r.natural_flip_rate, r.n_images, r.placement),
            patch=r.patch_id, source=patch.source, placement=r.placement, n_images=int(r.n_images),
            flip_rate=r.flip_rate, flip_rate_ci=tuple(r.flip_rate_ci) if r.flip_rate_ci else None,
            p_value=r.p_value, noise_flip_rate=r.noise_flip_rate, natural_flip_rate=r.natural_flip_rate,
            exemplar_ids=tuple(int(i) for i in acts.image_ids[samples].tolist()) if samples else (),
            icon=icon_path(cell), confirmed_sources=tuple(sources), real_crops_tested=real_tested,
            synthesized_only=not any(source in REAL_SOURCES for source in sources),
            suspected_shortcut=bool(evidence.suspected), shortcut_evidence=evidence.to_dict(),
        ))
    return tuple(out)
