"""On-disk vector store for large captures: one memory-mapped ``.npy`` file, written in shards.

`ActivationRecorder` keeps the sampled vectors here when they would take more than its
`disk_threshold_bytes`; the small scalar columns (ids, labels, predictions, positions) stay in
memory. Rows are written with plain file writes (one write per committed batch, one per replaced
reservoir row), so the process's resident memory grows with the batch, not with the number of
vectors; the operating system's page cache holds the file. `finish()` maps the file and returns a
torch tensor over the mapping (`torch.from_numpy` of a `numpy.memmap`), which indexes like any
other tensor.

Files: ``<directory>/vectors_<layer>_<id>.npy``. `close()` deletes them; a tensor returned by
`finish()` stays readable afterwards on POSIX systems (the mapping outlives the directory entry).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DebugAtlasError

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


class DiskVectors:
    """Preallocated [capacity, dim] array on disk (sparse until written), filled row by row.

    directory: where the file goes; None makes a temporary directory, removed by `close()`.
    capacity, dim: shape of the file; `finish()` returns only the rows written so far.
    dtype: torch.float16 | float32 | float64 (numpy has no bfloat16).
    """

    def __init__(self, directory: str | Path | None, capacity: int, dim: int, dtype: torch.dtype,
                 layer: str = "layer") -> None:
        if dtype not in _NUMPY_DTYPES:
            raise DebugAtlasError(
                f"The on-disk store cannot hold {dtype} vectors. "
                f"HINT: capture with dtype in {[str(d) for d in _NUMPY_DTYPES]}."
            )
        self._tmpdir = None
        if directory is None:
            self._tmpdir = tempfile.mkdtemp(prefix="debugatlas-store-")
            directory = self._tmpdir
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", layer)[:60]
        self.path = self.directory / f"vectors_{safe}_{uuid.uuid4().hex[:8]}.npy"
        self.capacity, self.dim = int(capacity), int(dim)
        self.np_dtype = np.dtype(_NUMPY_DTYPES[dtype])
        header = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.np_dtype,
                                           shape=(self.capacity, self.dim))
        self._offset = int(header.offset)
        del header
        self._row_bytes = self.dim * self.np_dtype.itemsize
        self._fd: int | None = os.open(self.path, os.O_RDWR)
        self.count = 0

    def append(self, rows: torch.Tensor) -> None:
        """Write `rows` [n, dim] after the rows written so far."""
        data = self._bytes(rows)
        if self.count + rows.shape[0] > self.capacity:
            raise DebugAtlasError(f"DiskVectors.append: {self.count} + {rows.shape[0]} rows exceed "
                                  f"the capacity {self.capacity}.")
        os.pwrite(self._require_fd(), data, self._offset + self.count * self._row_bytes)
        self.count += int(rows.shape[0])

    def replace(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        """Overwrite rows `slots` [n] (distinct, < count) with `rows` [n, dim]."""
        data = self._bytes(rows)
        fd = self._require_fd()
        for k, slot in enumerate(slots.tolist()):
            chunk = data[k * self._row_bytes:(k + 1) * self._row_bytes]
            os.pwrite(fd, chunk, self._offset + int(slot) * self._row_bytes)

    def finish(self) -> torch.Tensor:
        """The rows written so far, [count, dim], as a tensor over a memory map of the file."""
        self._require_fd()  # the page cache is shared with the mapping: no flush needed
        array = np.lib.format.open_memmap(self.path, mode="r+")
        return torch.from_numpy(array[: self.count])

    def close(self) -> None:
        """Close and delete the file (and the temporary directory, if one was made)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _require_fd(self) -> int:
        if self._fd is None:
            raise DebugAtlasError(f"The on-disk store {self.path} is closed. HINT: call `reset()` first.")
        return self._fd

    def _bytes(self, rows: torch.Tensor) -> bytes:
        if rows.dim() != 2 or rows.shape[1] != self.dim:
            raise DebugAtlasError(f"DiskVectors got rows of shape {tuple(rows.shape)}; expected [n, {self.dim}].")
        return np.ascontiguousarray(rows.detach().cpu().numpy(), dtype=self.np_dtype).tobytes()
