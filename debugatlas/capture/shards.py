"""Merge the `ActivationSet`s captured by several processes (DDP ranks) into one.

Each rank sees a shard of the validation set; a `DistributedSampler` pads the shards with
repeats of the first images so that all ranks get the same number. `merge_shards` keeps, for
every image id, only the samples of the first rank that holds it, orders the samples by image id
(the order one process would have seen them in), and applies the reservoir `cap` again with the
same seed. When no rank reached `cap` and positions depend on (seed, image id)
(`ActivationRecorder.expect`), the result equals a single-process capture. The sampling `rule`
column travels with the vectors (None when no rank recorded one).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..core.errors import DebugAtlasError
from .activations import ActivationSet
from .recorder import ActivationRecorder


def merge_shards(shards: Sequence[ActivationSet], cap: int, seed: int = 0) -> ActivationSet:
    """One `ActivationSet` from the ranks' sets (in rank order): duplicates dropped, sorted, capped."""
    shards = [s for s in shards if s is not None and len(s)]
    if not shards:
        raise DebugAtlasError("No rank captured any activations. HINT: check that the validation set is not empty.")
    layers = {s.layer for s in shards}
    if len(layers) != 1:
        raise DebugAtlasError(f"The ranks captured different layers {sorted(layers)}. HINT: use one AtlasCallback layer.")
    ids = torch.cat([s.image_ids for s in shards])
    rank = torch.cat([torch.full((len(s),), k, dtype=torch.long) for k, s in enumerate(shards)])
    first_rank = torch.full((int(ids.max()) + 1,), len(shards), dtype=torch.long)
    first_rank.scatter_reduce_(0, ids, rank, reduce="amin")
    keep = torch.nonzero(rank == first_rank[ids]).flatten()
    keep = keep[torch.argsort(ids[keep], stable=True)]
    columns = [torch.cat([getattr(s, name) for s in shards])[keep]
               for name in ("vectors", "image_ids", "labels", "preds", "positions")]
    guided = any(s.rule is not None for s in shards)
    columns.append(torch.cat([s.rules() for s in shards])[keep])
    offered = sum(s.num_offered for s in shards) - (len(ids) - len(keep))
    if len(keep) > cap:
        recorder = ActivationRecorder(shards[0].layer, cap=cap, seed=seed)
        recorder._offer(*columns)
        merged = recorder.result()
        columns = [merged.vectors, merged.image_ids, merged.labels, merged.preds, merged.positions,
                   merged.rules()]
    rule = columns.pop()
    return ActivationSet(*columns, layer=shards[0].layer, spatial_shape=shards[0].spatial_shape,
                         num_offered=int(offered), rule=rule if guided else None)
