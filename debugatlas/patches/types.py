"""Patch-test records: a `Patch` to paste, the `Experiment` that measures it, one `PatchResult` per
patch and placement, a `PatchEvaluation`.

Placements: "static" (one fixed corner and size), "dynamic" (best of the four corners and the sizes),
"random" (seeded positions, the same for every image). Pixels are [C, h, w] float32 in [0, 1].
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace

import torch

from ..artifacts.images import from_uint8, to_uint8
from ..core.errors import DebugAtlasError

SOURCES = ("icon", "icon_crop", "exemplar", "noise", "natural", "optimised", "in_context")
CONTROL_SOURCES = ("noise", "natural")
REAL_SOURCES = ("exemplar",)  # crops of real images; every other non-control source is synthesized
PLACEMENTS = ("static", "dynamic", "random")
DEFAULT_SIZES = (0.25, 0.35)  # side fractions: at most about 12 % of the image
DEFAULT_CROP_SIZES = (6, 8, 12, 16)
SELECTION_RULE = ("images of class A that the model classifies as A before patching "
                  "(images already misclassified are not counted)")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def patch_side(frac: float, image_side: int) -> int:
    """Pixels of a patch side that is `frac` of `image_side`: rounded down, so the size cap holds at
    every image size (0.35 of 16 px is 5 px, not 6 = 0.375), and at least one pixel."""
    return max(1, min(int(image_side), int(float(frac) * int(image_side) + 1e-9)))


@dataclass
class Patch:
    """One patch to paste.

    id:     file-safe name (letters, digits, `_`, `.`, `-`).
    cell:   (i, j) of the atlas cell it comes from, None for controls.
    source: one of SOURCES ("icon", "icon_crop", "exemplar", "noise", "natural", "optimised").
    image:  [C, h, w] float32 in [0, 1] on the CPU (values outside are clipped).
    resize: True: resized so its longer side is a fraction of the image side (the `sizes`);
            False: pasted at its native pixel size (centre-cropped if larger than the image).
    """

    id: str
    cell: tuple[int, int] | None
    source: str
    image: torch.Tensor
    resize: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise DebugAtlasError(
                f"`Patch(id={self.id!r})` is not a file-safe name. "
                "HINT: use letters, digits, '_', '.' and '-' only."
            )
        if self.source not in SOURCES:
            raise DebugAtlasError(f"`Patch(source={self.source!r})` is not one of {list(SOURCES)}.")
        image = torch.as_tensor(self.image)
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.dim() != 3 or min(image.shape) < 1:
            raise DebugAtlasError(
                f"`Patch({self.id!r})` image has shape {tuple(image.shape)}; expected [C, h, w]."
            )
        if not torch.isfinite(image).all():
            raise DebugAtlasError(f"`Patch({self.id!r})` image contains NaN or Inf.")
        self.image = image.detach().float().cpu().clamp(0.0, 1.0)
        self.cell = None if self.cell is None else (int(self.cell[0]), int(self.cell[1]))
        self.resize = bool(self.resize)

    def quantized(self) -> "Patch":
        """A copy whose pixels are rounded to 8 bits, exactly as they come back from a PNG."""
        return replace(self, image=from_uint8(to_uint8(self.image)))


@dataclass(frozen=True)
class Experiment:
    """How the patches of one pair are measured.

    a, b: class indices (A true, B target). sizes: paste sizes of resized patches (fractions of
    the image side). placements: subset of `PLACEMENTS`. n_random: seeded positions per size for
    "random". seed: the positions and the controls. batch_size: images per forward of the
    unpatched images (and, with `batched=False`, images x positions per forward of one patch).
    batched: every patch and control x size x position x image shares forwards of up to
    `max_batch` images (None: `evaluate.auto_max_batch` of the image size, `batch_size` and the
    device); False: one patch at a time (same results up to the model's own float differences
    between batch sizes). device: None for the model's. precision: "float32" (the model as given)
    or a reduced one (`core.model.fast_precision`) for measurements that only choose.
    """

    a: int
    b: int
    sizes: tuple[float, ...] = DEFAULT_SIZES
    placements: tuple[str, ...] = PLACEMENTS
    n_random: int = 8
    seed: int = 0
    batch_size: int = 256
    batched: bool = True
    max_batch: int | None = None
    device: torch.device | str | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        placements = tuple(self.placements)
        sizes = tuple(float(s) for s in self.sizes)
        bad = [p for p in placements if p not in PLACEMENTS]
        if bad or not placements:
            raise DebugAtlasError(f"`placements={placements!r}`: choose from {list(PLACEMENTS)}.")
        if not sizes or any(not 0 < s <= 1 for s in sizes):
            raise DebugAtlasError(f"`sizes={sizes!r}` must be fractions of the image side in (0, 1].")
        if int(self.n_random) < 1 or int(self.batch_size) < 1 or (self.max_batch is not None
                                                                   and int(self.max_batch) < 1):
            raise DebugAtlasError(f"`n_random={self.n_random!r}`, `batch_size={self.batch_size!r}` and "
                                  f"`max_batch={self.max_batch!r}` must be >= 1 (max_batch may be None).")
        object.__setattr__(self, "a", int(self.a))
        object.__setattr__(self, "b", int(self.b))
        object.__setattr__(self, "placements", placements)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "n_random", int(self.n_random))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "batched", bool(self.batched))

    def with_(self, **changes) -> "Experiment":
        """A copy with `changes` (checked like the original)."""
        return replace(self, **changes)


@dataclass
class PatchResult:
    """Measured effect of one patch under one placement.

    n_images: images of A counted (correctly classified before patching).
    flip_rate: fraction of (image, position) trials whose argmax becomes B; for "dynamic" the
        fraction of images flipped by any corner x size; for "random" the mean over positions.
    best_flip_rate: flip rate of the best single (size, position) over the counted images.
    best_config: (size_frac, row, col) of that best single position.
    p_b_before / p_b_after: mean softmax P(B) before and after (dynamic: best config per image).
    size_frac: paste size as a fraction of the image side (static: the size used; otherwise the
        size of the best config). noise_flip_rate / natural_flip_rate: the matching controls'
        flip rates under the same placement (None for controls themselves or when missing).
    verdict / p_value / flip_rate_ci: set by `stats.judge_evaluation` ("confirmed", "natural",
        "not_confirmed"; Holm-adjusted p; Wilson 95 % interval (lo, hi)); None until judged.
    """

    patch_id: str
    source: str
    cell: tuple[int, int] | None
    resize: bool
    geometry: str
    placement: str
    n_images: int
    flip_rate: float
    best_flip_rate: float
    p_b_before: float
    p_b_after: float
    size_frac: float
    best_config: tuple[float, int, int] | None
    noise_flip_rate: float | None = None
    natural_flip_rate: float | None = None
    verdict: str | None = None
    p_value: float | None = None
    flip_rate_ci: tuple[float, float] | None = None

    @property
    def flips(self) -> int:
        """Images flipped, per image (flip_rate x n_images, rounded; exact for static and dynamic)."""
        return 0 if self.flip_rate != self.flip_rate else round(self.flip_rate * self.n_images)

    @property
    def is_control(self) -> bool:
        return self.source in CONTROL_SOURCES

    @property
    def lift(self) -> float:
        """Flip rate above the stronger of the two controls of the same geometry and placement.

        A large pasted square can flip a fragile model whatever it shows; the lift discounts that.
        It is the run record's margin (`artifacts.record.margin`) as a ranking key: a rate that
        could not be measured counts as 0, and without controls the lift is the rate.
        """
        from ..artifacts.record import margin

        rate = _nan0(self.flip_rate)
        controls = [None if c is None else _nan0(c) for c in (self.noise_flip_rate, self.natural_flip_rate)]
        lift = margin(rate, *controls)
        return rate if lift is None else lift

    def to_dict(self) -> dict:
        """Plain JSON-ready values (NaN becomes None)."""
        out = asdict(self)
        out["cell"] = None if self.cell is None else list(self.cell)
        out["best_config"] = None if self.best_config is None else list(self.best_config)
        out["flip_rate_ci"] = None if self.flip_rate_ci is None else [float(v) for v in self.flip_rate_ci]
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "PatchResult":
        data = dict(data)
        data["cell"] = None if data.get("cell") is None else tuple(data["cell"])
        cfg = data.get("best_config")
        data["best_config"] = None if cfg is None else (float(cfg[0]), int(cfg[1]), int(cfg[2]))
        ci = data.get("flip_rate_ci")
        data["flip_rate_ci"] = None if ci is None else (float(ci[0]), float(ci[1]))
        for key in ("flip_rate", "best_flip_rate", "p_b_before", "p_b_after", "size_frac"):
            data[key] = float("nan") if data.get(key) is None else float(data[key])
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class PatchEvaluation:
    """All results of one run: candidates and controls, every placement.

    a, b: class indices. n_images: counted images of A; n_offered: images of A passed in.
    results: PatchResult per patch x placement, candidates first, then controls.
    """

    a: int
    b: int
    n_images: int
    n_offered: int
    sizes: tuple[float, ...]
    placements: tuple[str, ...]
    n_random: int
    seed: int
    results: list[PatchResult] = field(default_factory=list)

    def get(self, patch_id: str, placement: str) -> PatchResult:
        for r in self.results:
            if r.patch_id == patch_id and r.placement == placement:
                return r
        raise KeyError((patch_id, placement))

    def candidates(self, placement: str | None = None) -> list[PatchResult]:
        return [r for r in self.results if not r.is_control and placement in (None, r.placement)]

    def controls(self, placement: str | None = None) -> list[PatchResult]:
        return [r for r in self.results if r.is_control and placement in (None, r.placement)]

    def ranked(self, placement: str | None = None) -> list[PatchResult]:
        """Candidates under `placement` (default "random", else the first evaluated), best first.

        Best means the largest `lift` (flip rate above the stronger control), then the flip rate.
        """
        placement = placement or ("random" if "random" in self.placements else self.placements[0])
        if placement not in self.placements:
            raise DebugAtlasError(f"`placement={placement!r}` was not evaluated; evaluated: {list(self.placements)}.")
        key = lambda r: (-r.lift, -_nan0(r.flip_rate), -_nan0(r.best_flip_rate), -_nan0(r.p_b_after))  # noqa: E731
        return sorted(self.candidates(placement), key=key)

    def to_frame(self):
        """The results as a pandas DataFrame, one row per patch x placement."""
        import pandas as pd

        return pd.DataFrame([r.to_dict() for r in self.results])

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("a", "b", "n_images", "n_offered", "n_random", "seed")}
        out.update(sizes=list(self.sizes), placements=list(self.placements),
                   results=[r.to_dict() for r in self.results])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PatchEvaluation":
        return cls(int(data["a"]), int(data["b"]), int(data["n_images"]), int(data["n_offered"]),
                   tuple(float(s) for s in data["sizes"]), tuple(data["placements"]),
                   int(data["n_random"]), int(data["seed"]),
                   [PatchResult.from_dict(r) for r in data["results"]])


def _nan0(value: float) -> float:
    return 0.0 if value != value else value
