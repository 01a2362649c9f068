"""`CaptureSpec`: what a capture records, one frozen record that `capture` and the guided capture read."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from ..core.errors import DebugAtlasError, refuse_unknown
from .recorder import DISK_THRESHOLD_BYTES, GUIDED, ActivationRecorder


@dataclass(frozen=True)
class CaptureSpec:
    """What a capture of one layer records.

    sampling: "random" (`samples_per_image` uniformly random interior positions per image), "all",
        "center", or "guided" (per image, round(samples_per_image * guided_fraction) positions at
        the highest attribution toward its predicted class and `guided_classes`, the rest uniformly
        random; see `capture.guided`).
    cap: the reservoir keeps at most this many vectors. seed: of the positions and the reservoir.
    dtype: of the stored vectors.
    store_dir, disk_threshold_bytes: the on-disk store (see `ActivationRecorder`).
    """

    sampling: str = "random"
    samples_per_image: int = 1
    cap: int = 100_000
    seed: int = 0
    dtype: torch.dtype = torch.float16
    guided_fraction: float = 0.5
    guided_classes: tuple[int, ...] = ()
    store_dir: str | Path | None = None
    disk_threshold_bytes: int | None = DISK_THRESHOLD_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "guided_classes", tuple(int(c) for c in self.guided_classes))

    def recorder(self, layer: str) -> ActivationRecorder:
        """The recorder of `layer` with these settings; guided sampling records its random share
        through the recorder's keyed random picks."""
        sampling = "random" if self.sampling == GUIDED else self.sampling
        return ActivationRecorder(layer, sampling, self.samples_per_image, self.cap, self.seed, self.dtype,
                                  store_dir=self.store_dir, disk_threshold_bytes=self.disk_threshold_bytes)

    @classmethod
    def given(cls, spec: "CaptureSpec | None", settings: Mapping[str, Any], caller: str) -> "CaptureSpec":
        """`spec` (default: `CaptureSpec()`) with the fields named in `settings` replaced; an
        unknown name is an error listing the valid ones."""
        refuse_unknown(settings, [f.name for f in fields(cls)], what="capture setting", where=f"`{caller}`")
        base = spec if spec is not None else cls()
        if not isinstance(base, cls):
            raise DebugAtlasError(
                f"`{caller}` got spec={base!r}, not a CaptureSpec. HINT: pass `CaptureSpec(...)` or the "
                f"settings by keyword, e.g. `samples_per_image=4`."
            )
        return replace(base, **settings) if settings else base
