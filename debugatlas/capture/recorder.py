"""Capture: sample spatial activation vectors of one layer with a forward hook.

The hook picks positions on the model's device and copies only the chosen vectors to the CPU.
A seeded reservoir keeps at most `cap` vectors, so memory stays bounded however long the
validation set is. When the reservoir would exceed `disk_threshold_bytes` (256 MiB by default)
the vectors go to a memory-mapped file on disk (`store.DiskVectors`) and only the small scalar
columns stay in memory.

Random positions come from one seeded stream by default. When the batch's dataset indices are
announced before the forward pass (`ActivationRecorder.expect(image_ids)`), each image's
positions depend only on (seed, image id), so any split of the data over batches or processes
samples the same positions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..core.errors import DebugAtlasError
from ..core.model import output_tensor, resolve_layer
from .activations import RULE_ATTRIBUTION, RULE_RANDOM, ActivationSet
from .store import DiskVectors

SAMPLING = ("random", "all", "center")
GUIDED = "guided"  # `capture` only: attribution-guided sampling needs a gradient pass (see guided.py)


def _interior(size: int, device=None) -> torch.Tensor:
    """Index range that excludes both edges (the whole range for sizes below 3)."""
    return torch.arange(1, size - 1, device=device) if size >= 3 else torch.arange(size, device=device)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def image_picks(seed: int, image_ids: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """[B, k] int64 in [0, n): the sampled grid cells of each image, a function of (seed, id, j)."""
    with np.errstate(over="ignore"):
        base = _mix64(np.full(1, seed, dtype=np.int64).astype(np.uint64))
        ids = _mix64(base ^ image_ids.cpu().numpy().astype(np.int64).astype(np.uint64))
        z = _mix64(ids[:, None] ^ np.arange(k, dtype=np.uint64)[None, :])
    return torch.from_numpy((z % np.uint64(n)).astype(np.int64))


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host-to-device copy that does not wait for the GPU (pinned staging buffer on CUDA)."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _choose_positions(
    shape: tuple[int, int], sampling: str, k: int, batch: int, gen: torch.Generator, device,
    interior: bool = True, image_ids: torch.Tensor | None = None, seed: int = 0,
) -> torch.Tensor:
    """Positions [batch, m, 2] (row, col) to keep for each image; spatial maps skip both edges."""
    h, w = shape
    if sampling == "center":
        pos = torch.tensor([[h // 2, w // 2]], device=device)
        return pos.expand(batch, 1, 2)
    span = _interior if interior else torch.arange
    rows, cols = span(h, device=device), span(w, device=device)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)
    if sampling == "all":
        return grid.unsqueeze(0).expand(batch, -1, -1)
    if image_ids is not None:
        pick = _to_device(image_picks(seed, image_ids, k, grid.shape[0]), device)
    else:
        pick = torch.randint(0, grid.shape[0], (batch, k), generator=gen, device=device)
    return grid[pick]


DISK_THRESHOLD_BYTES = 256 * 2**20  # reservoirs larger than this live in a memory-mapped file


class ActivationRecorder:
    """Forward hook that samples the layer output and keeps a bounded, seeded reservoir.

    Use `attach(model)` as a context manager around forward passes, and after each forward pass
    call `commit(image_ids, labels, preds)` to attach the batch's dataset indices. Calling
    `expect(image_ids)` before the forward pass makes random positions a function of
    (seed, image id) instead of the batch stream.

    Committed batches are queued, still on the model's device, and stored together every
    `flush_batches` batches and in `result()`: on a GPU one device-to-host copy then waits for the
    device per `flush_batches` batches instead of one per batch, so validation is not stalled.

    Large captures: when `cap * C * itemsize` exceeds `disk_threshold_bytes` (default
    `DISK_THRESHOLD_BYTES`, 256 MiB: e.g. 1,000,000 vectors of 512 float16 channels), the vectors
    are written to a memory-mapped .npy file in `store_dir` (a temporary directory when None);
    `reset()` / `close()` delete it. None always keeps them in memory.
    """

    def __init__(
        self,
        layer: str,
        sampling: str = "random",
        samples_per_image: int = 1,
        cap: int = 100_000,
        seed: int = 0,
        dtype: torch.dtype = torch.float16,
        store_dir: str | Path | None = None,
        disk_threshold_bytes: int | None = DISK_THRESHOLD_BYTES,
        flush_batches: int = 32,
    ) -> None:
        if int(flush_batches) < 1:
            raise DebugAtlasError(f"`flush_batches={flush_batches!r}` must be >= 1.")
        if disk_threshold_bytes is not None and int(disk_threshold_bytes) < 0:
            raise DebugAtlasError(f"`disk_threshold_bytes={disk_threshold_bytes!r}` must be >= 0 or None.")
        if sampling not in SAMPLING:
            raise DebugAtlasError(f"`sampling={sampling!r}` is not one of {list(SAMPLING)}.")
        if int(samples_per_image) < 1:
            raise DebugAtlasError(f"`samples_per_image={samples_per_image!r}` must be >= 1.")
        if int(cap) < 1:
            raise DebugAtlasError(f"`cap={cap!r}` must be >= 1.")
        self.layer = layer
        self.sampling = sampling
        self.samples_per_image = int(samples_per_image)
        self.cap = int(cap)
        self.seed = int(seed)
        self.dtype = dtype
        self.store_dir = Path(store_dir) if store_dir is not None else None
        self.disk_threshold_bytes = None if disk_threshold_bytes is None else int(disk_threshold_bytes)
        self.flush_batches = int(flush_batches)
        self._disk: DiskVectors | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far (and delete the on-disk store's file, if any)."""
        self.close()
        self._expected: torch.Tensor | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._any_guided = False
        self._queue: list[tuple[torch.Tensor, ...]] = []
        self._chunks: list[tuple[torch.Tensor, ...]] = []
        self._store: list[torch.Tensor] | None = None
        self._count = 0
        self._rng = np.random.default_rng(self.seed)
        self._gen: torch.Generator | None = None
        self.spatial_shape: tuple[int, int] | None = None

    def close(self) -> None:
        """Delete the on-disk store's file; tensors already returned by `result()` stay readable."""
        if self._disk is not None:
            self._disk.close()
            self._disk = None

    def expect(self, image_ids: Sequence[int] | torch.Tensor) -> None:
        """Announce the next batch's dataset indices: its random positions then depend on (seed, id)."""
        self._expected = torch.as_tensor(image_ids, dtype=torch.long).reshape(-1).cpu()

    # -- hook ---------------------------------------------------------------------------------
    def _hook(self, module: nn.Module, inputs, output) -> None:
        out = output_tensor(output, f"Layer {self.layer!r}").detach()
        if self._gen is None or self._gen.device != out.device:
            self._gen = torch.Generator(device=out.device)
            self._gen.manual_seed(self.seed)
        batch = out.shape[0]
        ids, self._expected = self._expected, None
        if ids is not None and ids.numel() != batch:
            raise DebugAtlasError(
                f"`expect()` announced {ids.numel()} image ids but layer {self.layer!r} saw a batch of {batch}. "
                "HINT: call `expect(ids)` right before the forward pass of that batch."
            )
        kw = {"image_ids": ids, "seed": self.seed}
        if out.dim() == 4:
            shape = (out.shape[2], out.shape[3])
            pos = _choose_positions(shape, self.sampling, self.samples_per_image, batch, self._gen, out.device,
                                    **kw)
            b = torch.arange(batch, device=out.device).unsqueeze(1).expand_as(pos[..., 0])
            vec = out[b, :, pos[..., 0], pos[..., 1]]  # [B, m, C]
        elif out.dim() == 3:
            shape = (1, out.shape[1])
            pos = _choose_positions(shape, self.sampling, self.samples_per_image, batch, self._gen,
                                    out.device, interior=False, **kw)
            b = torch.arange(batch, device=out.device).unsqueeze(1).expand_as(pos[..., 0])
            vec = out[b, pos[..., 1], :]
        elif out.dim() == 2:
            shape = None
            pos = torch.full((batch, 1, 2), -1, device=out.device, dtype=torch.long)
            vec = out.unsqueeze(1)
        else:
            raise DebugAtlasError(
                f"Layer {self.layer!r} output has shape {tuple(out.shape)}; expected [B, C, H, W], "
                "[B, T, C] or [B, C]. HINT: choose another layer."
            )
        self.spatial_shape = shape
        self._pending = (vec.to(self.dtype), pos)

    def attach(self, model: nn.Module) -> "_Attached":
        """Context manager that registers the hook on the layer and always removes it."""
        return _Attached(self, resolve_layer(model, self.layer))

    # -- bookkeeping ----------------------------------------------------------------------------
    def commit(self, image_ids: Sequence[int] | torch.Tensor, labels, preds=None) -> None:
        """Attach dataset indices, labels and predictions to the last batch seen by the hook."""
        if self._pending is None:
            raise DebugAtlasError(
                f"No output of layer {self.layer!r} was seen for this batch. "
                "HINT: the layer must run in the model's forward pass."
            )
        vec, pos = self._pending
        self._pending = None
        self._enqueue(vec, pos, torch.full(pos.shape[:2], RULE_RANDOM, dtype=torch.int8, device=pos.device),
                      image_ids, labels, preds)

    def record(self, vectors: torch.Tensor, positions: torch.Tensor, rule: torch.Tensor,
               image_ids: Sequence[int] | torch.Tensor, labels, preds=None,
               spatial_shape: tuple[int, int] | None = None) -> None:
        """Store vectors chosen outside the hook (e.g. by `guided_positions`), with their rule.

        vectors [B, m, C], positions [B, m, 2] int64, rule [B, m] (RULE_RANDOM or RULE_ATTRIBUTION),
        one image id, label and prediction per row of the batch; `spatial_shape` (H, W) of the
        layer output. They enter the same reservoir (and on-disk store) as hooked batches.
        """
        if vectors.dim() != 3 or positions.shape != (*vectors.shape[:2], 2) or rule.shape != vectors.shape[:2]:
            raise DebugAtlasError(
                f"`record()` got vectors {tuple(vectors.shape)}, positions {tuple(positions.shape)} and rule "
                f"{tuple(rule.shape)}; expected [B, m, C], [B, m, 2] and [B, m]."
            )
        bad = rule[(rule != RULE_RANDOM) & (rule != RULE_ATTRIBUTION)]
        if bad.numel():
            raise DebugAtlasError(f"`record(rule=...)` holds {int(bad[0])}; rules are {RULE_RANDOM} and "
                                  f"{RULE_ATTRIBUTION}.")
        if spatial_shape is not None:
            self.spatial_shape = (int(spatial_shape[0]), int(spatial_shape[1]))
        self._enqueue(vectors.detach().to(self.dtype), positions.long(), rule.to(torch.int8), image_ids, labels,
                      preds)

    def _enqueue(self, vec, pos, rule, image_ids, labels, preds) -> None:
        batch, m, c = vec.shape
        ids = torch.as_tensor(image_ids, dtype=torch.long).reshape(-1)
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if ids.numel() != batch or labels.numel() != batch:
            raise DebugAtlasError(
                f"Batch of {batch} activations got {ids.numel()} ids and {labels.numel()} labels."
            )
        preds = (torch.full_like(labels, -1) if preds is None
                 else torch.as_tensor(preds, dtype=torch.long).reshape(-1))
        if preds.numel() != batch:
            raise DebugAtlasError(f"Batch of {batch} activations got {preds.numel()} predictions.")
        self._queue.append((vec, pos, ids.cpu(), labels, preds, rule))
        if len(self._queue) >= self.flush_batches:
            self._flush()

    def _flush(self) -> None:
        """Copy the queued batches to the host (one wait for the device) and store them."""
        queue, self._queue = self._queue, []
        for vec, pos, ids, labels, preds, rule in queue:
            vec, pos, labels, preds, rule = vec.cpu(), pos.cpu(), labels.cpu(), preds.cpu(), rule.cpu()
            batch, m, c = vec.shape
            if not torch.isfinite(vec.float()).all():
                bad = int((~torch.isfinite(vec.float())).any(-1).sum())
                raise DebugAtlasError(
                    f"Layer {self.layer!r} produced NaN or Inf in {bad} of {batch * m} sampled vectors. "
                    "HINT: check the model's weights and the input range."
                )
            rep = lambda t: t.repeat_interleave(m)  # noqa: E731
            self._offer(vec.reshape(-1, c), rep(ids), rep(labels), rep(preds), pos.reshape(-1, 2), rule.reshape(-1))

    def _use_disk(self, vectors: torch.Tensor) -> bool:
        if self.disk_threshold_bytes is None:
            return False
        size = self.cap * vectors.shape[1] * vectors.element_size()
        return size > self.disk_threshold_bytes

    def _offer(self, *columns: torch.Tensor) -> None:
        """Columns: vectors, image ids, labels, preds, positions, rule (all with N rows)."""
        n = columns[0].shape[0]
        self._any_guided = self._any_guided or bool((columns[5] != RULE_RANDOM).any())
        if self._count == 0 and self._disk is None and self._use_disk(columns[0]):
            self._disk = DiskVectors(self.store_dir, self.cap, columns[0].shape[1], columns[0].dtype, self.layer)
            # scalar columns preallocated: no small long-lived allocations between batches, whose
            # interleaving with the freed batch buffers would fragment the heap
            self._store = [None] + [torch.empty((self.cap, *col.shape[1:]), dtype=col.dtype) for col in columns[1:]]
        start = self._count
        self._count += n
        room = max(0, self.cap - start)
        if room:
            take = min(room, n)
            if self._disk is not None:
                self._disk.append(columns[0][:take])
                for store, col in zip(self._store[1:], columns[1:]):
                    store[start:start + take] = col[:take]
            else:
                self._chunks.append(tuple(col[:take] for col in columns))
            columns = tuple(col[take:] for col in columns)
            start += take
            n -= take
        if n == 0:
            return
        if self._store is None:
            self._store = [torch.cat(parts) for parts in zip(*self._chunks)]
            self._chunks = []
        dst_t, src_t = self._reservoir_slots(start, n)
        if len(dst_t):
            for store, col in zip(self._store, columns):
                if store is None:
                    self._disk.replace(dst_t, col[src_t])
                else:
                    store[dst_t] = col[src_t]

    def _reservoir_slots(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots, items) of the batch's items 0..n-1 (overall items start..) that enter the reservoir."""
        # Algorithm R, vectorised: item t (0-based overall) replaces slot j ~ U{0..t} if j < cap;
        # for slots drawn twice in one batch the later item wins, as in the sequential algorithm.
        seen = np.arange(start, start + n)
        slots = (self._rng.random(n) * (seen + 1)).astype(np.int64)
        keep = slots < self.cap
        src, dst = np.nonzero(keep)[0], slots[keep]
        last = {}
        for s, d in zip(src.tolist(), dst.tolist()):
            last[d] = s
        return torch.tensor(list(last.keys()), dtype=torch.long), torch.tensor(list(last.values()), dtype=torch.long)

    def result(self) -> ActivationSet:
        """The recorded samples as an `ActivationSet` (empty set raises)."""
        self._flush()
        if self._store is None and not self._chunks:
            raise DebugAtlasError(
                f"No activations were captured from layer {self.layer!r}. "
                "HINT: the dataset may be empty, or the layer never ran."
            )
        if self._disk is not None:
            kept = min(self._count, self.cap)
            vec = self._disk.finish()
            ids, labels, preds, pos, rule = (col[:kept] for col in self._store[1:])
        else:
            cols = self._store if self._store is not None else [torch.cat(p) for p in zip(*self._chunks)]
            vec, ids, labels, preds, pos, rule = cols
        return ActivationSet(vec, ids, labels, preds, pos, self.layer, self.spatial_shape, self._count,
                             rule.clone() if self._any_guided else None)


class _Attached:
    def __init__(self, recorder: ActivationRecorder, module: nn.Module) -> None:
        self.recorder, self.module, self.handle = recorder, module, None

    def __enter__(self) -> ActivationRecorder:
        self.handle = self.module.register_forward_hook(self.recorder._hook)
        return self.recorder

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
