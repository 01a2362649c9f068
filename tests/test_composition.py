"""Co-occurrence: the cells a finding's misclassified images use besides it (`pipeline.composition`)."""
from __future__ import annotations

import numpy as np
import torch

from _records import finding
from debugatlas.artifacts.record import Finding
from debugatlas.atlas import build_atlas
from debugatlas.capture import ActivationSet
from debugatlas.pipeline import composition
from debugatlas.pipeline.records import PairPlan

FEATURE, PARTNER, ELSEWHERE, B_ONLY = (0, 0), (3, 3), (0, 3), (3, 0)
AT = {FEATURE: (0.1, 0.1), PARTNER: (0.9, 0.9), ELSEWHERE: (0.1, 0.9), B_ONLY: (0.9, 0.1)}


def _run(images):
    """An ActivationSet and its 4 x 4 atlas from [(label, pred, [cells of its samples])]."""
    rows = [(k, label, pred, cell) for k, (label, pred, cells) in enumerate(images) for cell in cells]
    ids, labels, preds, cells = zip(*rows)
    n = len(rows)
    acts = ActivationSet(vectors=torch.rand(n, 4, generator=torch.Generator().manual_seed(0)).half(),
                         image_ids=torch.tensor(ids), labels=torch.tensor(labels), preds=torch.tensor(preds),
                         positions=torch.zeros(n, 2, dtype=torch.long), layer="layer2", spatial_shape=(4, 4),
                         num_offered=n)
    xy = np.array([AT[c] for c in cells])
    return acts, build_atlas(xy, acts, torch.zeros(n, 2), grid_size=4, min_count=1, n_exemplars=2)


def _finding(cell):
    return Finding.from_dict(finding("p", 0.9, [0.8, 0.95], cell=list(cell)))


def test_the_cell_the_misclassified_images_share_is_listed_with_its_share_among_the_correct_ones():
    images = ([(0, 1, [FEATURE, PARTNER])] * 6 + [(0, 1, [FEATURE, ELSEWHERE])] * 1
              + [(0, 0, [FEATURE, ELSEWHERE])] * 4 + [(0, 0, [FEATURE, PARTNER])] * 1
              + [(0, 1, [PARTNER, B_ONLY])] * 3 + [(1, 1, [B_ONLY, FEATURE])] * 5)
    acts, atlas = _run(images)
    top, other = _finding(FEATURE), _finding(PARTNER)
    (annotated,) = composition.annotate(acts=acts, atlas=atlas, plans=(PairPlan(0, 1, "a", "b", 10),),
                                        found=[(top, other)])
    co = annotated[0].co_occurrence
    # the 7 images of A called B that hold the feature; B's own images and A's without it do not count
    assert co["images"] == 7 and co["images_correct"] == 5
    assert co["cells"] == [
        {"cell": list(PARTNER), "images": 6, "share": round(6 / 7, 4), "share_correct": 0.2, "finding": 2},
    ]  # ELSEWHERE co-occurs in one misclassified image only, below MIN_IMAGES; B_ONLY in none that hold it
    # the partner's 9: the feature (finding 1) in 6, then the cell of B's images in 3
    assert [(c["cell"], c["images"], c["finding"]) for c in annotated[1].co_occurrence["cells"]] == [
        (list(FEATURE), 6, 1), (list(B_ONLY), 3, None)]


def test_a_finding_no_misclassified_image_holds_lists_nothing():
    acts, atlas = _run([(0, 0, [FEATURE, PARTNER])] * 4 + [(1, 1, [PARTNER])] * 3)
    co = composition.co_occurrence(_finding(FEATURE), 0, 1, composition._image_cells(acts, atlas), acts.per_image(), 4)
    assert co == {"images": 0, "images_correct": 4, "cells": []}
