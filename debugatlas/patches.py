"""Patch tests: paste candidate patches onto images of A and count how many the model flips to B.

Attribution nominates, experiment confirms: candidates from confusing cells (the rendered icon,
crops of it, real exemplar crops) are measured against two controls run with the same sizes and
placements, a seeded random-noise patch and a natural crop of an image of B. Only images of A
that the model classifies correctly before patching are counted.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._utils import DebugAtlasError, generator, gradient_context, model_device, preserved_model_state

SOURCES = ("icon", "icon_crop", "exemplar", "noise", "natural", "optimised")
CONTROL_SOURCES = ("noise", "natural")
PLACEMENTS = ("static", "dynamic", "random")
DEFAULT_SIZES = (0.25, 0.375, 0.5)
DEFAULT_CROP_SIZES = (6, 8, 12, 16)
SELECTION_RULE = ("images of class A that the model classifies as A before patching "
                  "(images already misclassified are not counted)")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


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


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[C, h, w] in [0, 1] -> [h, w, C] uint8 (rounded)."""
    return (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


def from_uint8(array: np.ndarray) -> torch.Tensor:
    """[h, w, C] (or [h, w]) uint8 -> [C, h, w] float32 in [0, 1]."""
    array = np.array(array, dtype=np.uint8, copy=True)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


# -- synthesis -------------------------------------------------------------------------------------
def _center_crop(image: torch.Tensor, h: int, w: int | None = None) -> torch.Tensor:
    w = h if w is None else w
    top, left = (image.shape[-2] - h) // 2, (image.shape[-1] - w) // 2
    return image[..., top:top + h, left:left + w]


def candidate_patches(
    cells: Sequence[tuple],
    crop_sizes: Sequence[int] = DEFAULT_CROP_SIZES,
    max_exemplars: int = 4,
    resize_exemplars: bool | None = False,
) -> list[Patch]:
    """Candidate patches for the given cells, best cell first.

    cells: (cell (i, j) or None, icon [C, h, w] in [0, 1] or None, exemplar crops: list of
    [C, h, w]). Per cell: the icon resized to the paste sizes; for each crop size s (pixels of the
    icon, smaller than its side) the s x s centre crop pasted both unresized (native pixels) and
    resized; up to `max_exemplars` receptive-field crops of real exemplars, unresized unless
    `resize_exemplars` (None: both, the resized ones with ids ending in "r"). Whether a trigger
    flips depends on its pixel scale, so both are searched.
    """
    if any(int(s) < 1 for s in crop_sizes):
        raise DebugAtlasError(f"`crop_sizes={tuple(crop_sizes)!r}` must be positive pixel sizes.")
    patches: list[Patch] = []
    for n, entry in enumerate(cells):
        if not isinstance(entry, (tuple, list)) or len(entry) != 3:
            raise DebugAtlasError(
                f"`cells[{n}]` is {type(entry).__name__}; expected (cell, icon or None, exemplar crops). "
                "HINT: pass a list of 3-tuples."
            )
        cell, icon, crops = entry
        tag = f"p{n}" if cell is None else f"c{int(cell[0])}-{int(cell[1])}"
        if icon is not None:
            icon = torch.as_tensor(icon)
            patches.append(Patch(f"{tag}-icon", cell, "icon", icon, resize=True))
            side = min(icon.shape[-2:])
            for s in sorted({int(s) for s in crop_sizes}):
                if s >= side:
                    continue
                crop = _center_crop(icon, s)
                patches.append(Patch(f"{tag}-crop{s}", cell, "icon_crop", crop, resize=False))
                patches.append(Patch(f"{tag}-crop{s}r", cell, "icon_crop", crop, resize=True))
        modes = (False, True) if resize_exemplars is None else (bool(resize_exemplars),)
        for k, crop in enumerate(list(crops or [])[:max_exemplars]):
            for resize in modes:
                suffix = "r" if resize and len(modes) == 2 else ""
                patches.append(Patch(f"{tag}-ex{k}{suffix}", cell, "exemplar", torch.as_tensor(crop), resize=resize))
    return patches


def _geometry(patch: Patch, height: int, width: int) -> str:
    """Key shared by a patch and its controls: "resized" or "native-HxW" (size after fitting)."""
    if patch.resize:
        return "resized"
    h, w = patch.image.shape[-2:]
    return f"native-{min(h, height)}x{min(w, width)}"


def control_patches(
    patches: Sequence[Patch],
    images_b: torch.Tensor | None,
    image_shape: Sequence[int],
    sizes: Sequence[float] = DEFAULT_SIZES,
    seed: int = 0,
) -> list[Patch]:
    """Noise and natural controls, one pair per patch geometry (resized, or each native size).

    noise: seeded uniform noise; natural: a crop of a seeded random image of B at a random position
    (omitted when `images_b` is None or empty). Resized controls are made at the largest paste size.
    """
    c, height, width = (int(v) for v in image_shape)
    if images_b is not None and len(images_b) > 0 and tuple(images_b.shape[1:]) != (c, height, width):
        raise DebugAtlasError(
            f"`images_b` have shape {tuple(images_b.shape[1:])}, the images of A {(c, height, width)}. "
            "HINT: pass images of B prepared like the images of A."
        )
    controls = []
    for key in sorted({_geometry(p, height, width) for p in patches}):
        if key == "resized":
            h = w = max(1, min(height, width, round(max(sizes) * min(height, width))))
        else:
            h, w = (int(v) for v in key.split("-", 1)[1].split("x"))
        rng = np.random.default_rng([int(seed), h, w, int(key == "resized")])  # per geometry
        noise = torch.from_numpy(rng.random((c, h, w), dtype=np.float32))
        controls.append(Patch(f"noise-{key}", None, "noise", noise, resize=key == "resized"))
        if images_b is not None and len(images_b) > 0:
            source = images_b[int(rng.integers(0, len(images_b)))]
            top = int(rng.integers(0, source.shape[-2] - h + 1))
            left = int(rng.integers(0, source.shape[-1] - w + 1))
            crop = source[..., top:top + h, left:left + w]
            controls.append(Patch(f"natural-{key}", None, "natural", crop, resize=key == "resized"))
    return controls


# -- evaluation ------------------------------------------------------------------------------------
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

    @property
    def is_control(self) -> bool:
        return self.source in CONTROL_SOURCES

    @property
    def lift(self) -> float:
        """Flip rate above the stronger of the two controls of the same geometry and placement.

        A large pasted square can flip a fragile model whatever it shows; the lift discounts that.
        """
        controls = [_nan0(c) for c in (self.noise_flip_rate, self.natural_flip_rate) if c is not None]
        return _nan0(self.flip_rate) - max(controls, default=0.0)

    def to_dict(self) -> dict:
        """Plain JSON-ready values (NaN becomes None)."""
        out = asdict(self)
        out["cell"] = None if self.cell is None else list(self.cell)
        out["best_config"] = None if self.best_config is None else list(self.best_config)
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "PatchResult":
        data = dict(data)
        data["cell"] = None if data.get("cell") is None else tuple(data["cell"])
        cfg = data.get("best_config")
        data["best_config"] = None if cfg is None else (float(cfg[0]), int(cfg[1]), int(cfg[2]))
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


def placement_positions(height: int, width: int, ph: int, pw: int, n: int, seed: int) -> list[tuple[int, int]]:
    """`n` seeded (row, col) top-left positions for a ph x pw patch; the same for every image."""
    rng = np.random.default_rng([int(seed), int(height), int(width), int(ph), int(pw)])
    rows = rng.integers(0, height - ph + 1, size=n)
    cols = rng.integers(0, width - pw + 1, size=n)
    return [(int(r), int(c)) for r, c in zip(rows, cols)]


def _match_channels(image: torch.Tensor, channels: int, patch_id: str) -> torch.Tensor:
    if image.shape[0] == channels:
        return image
    if image.shape[0] == 1:
        return image.expand(channels, -1, -1).clone()
    if channels == 1:
        return image.mean(0, keepdim=True)
    raise DebugAtlasError(
        f"Patch {patch_id!r} has {image.shape[0]} channels but the images have {channels}. "
        "HINT: render the patch with the images' channel count."
    )


def paste_variants(patch: Patch, sizes: Sequence[float], image_shape: Sequence[int]) -> list[tuple[float, torch.Tensor]]:
    """(size_frac, [C, ph, pw] pixels) for each paste size of `patch` on images of `image_shape`."""
    c, height, width = (int(v) for v in image_shape)
    pixels = _match_channels(patch.image, c, patch.id)
    h, w = pixels.shape[-2:]
    if not patch.resize:
        fitted = _center_crop(pixels, min(h, height), min(w, width))
        return [(max(fitted.shape[-2:]) / min(height, width), fitted)]
    out = []
    for frac in sizes:
        side = max(1, round(float(frac) * min(height, width)))
        scale = side / max(h, w)
        ph, pw = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
        resized = F.interpolate(pixels[None], size=(ph, pw), mode="bilinear", align_corners=False,
                                antialias=ph < h or pw < w)[0].clamp(0, 1)
        out.append((float(frac), resized))
    return out


def _configs(variants, placements, height, width, n_random, seed) -> list[tuple[int, int, int, str]]:
    """(variant index, row, col, kind) with kind "corner" or "random"; config 0 is the static one."""
    configs = []
    for vi, (_, px) in enumerate(variants):
        ph, pw = px.shape[-2:]
        if "dynamic" in placements or ("static" in placements and vi == 0):
            corners = [(0, 0), (0, width - pw), (height - ph, 0), (height - ph, width - pw)]
            if "dynamic" not in placements:
                corners = corners[:1]
            configs += [(vi, r, c, "corner") for r, c in corners]
        if "random" in placements:
            configs += [(vi, r, c, "random") for r, c in placement_positions(height, width, ph, pw, n_random, seed)]
    return configs


def _logits(model: nn.Module, batch: torch.Tensor, b: int) -> torch.Tensor:
    logits = model(batch)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] <= b:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DebugAtlasError(
            f"The model returned {shape} for a batch of {batch.shape[0]}; expected logits [B, K] with K > {b}. "
            "HINT: pass a classifier whose forward returns class scores."
        )
    return logits.float()


def _measure(model, images, b, patch, sizes, placements, n_random, seed, batch_size, device):
    """Flips [N, K] bool, P(B) [N, K], the configs and the variants for one patch."""
    n, c, height, width = images.shape
    variants = paste_variants(patch, sizes, (c, height, width))
    configs = _configs(variants, placements, height, width, n_random, seed)
    pixels = [px.to(device) for _, px in variants]
    per = max(1, batch_size // len(configs))
    flips, probs = [], []
    for start in range(0, n, per):
        chunk = images[start:start + per].to(device)
        batch = chunk.unsqueeze(1).repeat(1, len(configs), 1, 1, 1)
        for k, (vi, r, col, _) in enumerate(configs):
            ph, pw = pixels[vi].shape[-2:]
            batch[:, k, :, r:r + ph, col:col + pw] = pixels[vi]
        logits = _logits(model, batch.flatten(0, 1), b).view(chunk.shape[0], len(configs), -1)
        flips.append((logits.argmax(-1) == b).cpu())
        probs.append(logits.softmax(-1)[..., b].cpu())
    k = len(configs)
    flips = torch.cat(flips) if flips else torch.zeros((0, k), dtype=torch.bool)
    probs = torch.cat(probs) if probs else torch.zeros((0, k))
    return flips, probs, configs, variants


def _summarise(patch, geometry, placement, flips, probs, configs, variants, p_before) -> PatchResult:
    n = flips.shape[0]
    if placement == "static":
        ks = [0]
    else:
        kind = "corner" if placement == "dynamic" else "random"
        ks = [k for k, cfg in enumerate(configs) if cfg[3] == kind]
    f, p = flips[:, ks], probs[:, ks]
    counts = f.sum(0).tolist()
    best = max(range(len(ks)), key=lambda i: counts[i])
    vi, row, col, _ = configs[ks[best]]
    frac = variants[vi][0]
    nan = float("nan")
    if placement == "dynamic":
        rate = int(f.any(1).sum()) / n if n else nan
        after = float(p.max(1).values.mean()) if n else nan
    else:
        rate = sum(counts) / (n * len(ks)) if n else nan
        after = float(p.mean()) if n else nan
    return PatchResult(
        patch.id, patch.source, patch.cell, patch.resize, geometry, placement, n, rate,
        counts[best] / n if n else nan, p_before, after, frac, (frac, row, col),
    )


def evaluate_patches(
    model: nn.Module,
    images_a: torch.Tensor,
    a: int,
    b: int,
    patches: Sequence[Patch],
    sizes: Sequence[float] = DEFAULT_SIZES,
    placements: Sequence[str] = PLACEMENTS,
    n_random: int = 8,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    images_b: torch.Tensor | None = None,
    controls: Sequence[Patch] | None = None,
) -> PatchEvaluation:
    """Paste each patch onto the images of A the model gets right and count flips to B.

    Placements: "static" = top-left corner at the first size; "dynamic" = best of the four corners
    x all sizes per image (flipped if any flips it); "random" = `n_random` seeded positions per
    size, the same for every image (flip rate averaged over positions; `best_flip_rate` is the
    best position). Unresized patches have one size, their own. Controls (noise, and a natural
    crop of an image of B when `images_b` is given) are made by `control_patches` unless passed,
    and run with the same sizes and placements. All positions of a chunk go in one forward pass.
    """
    placements = tuple(placements)
    sizes = tuple(float(s) for s in sizes)
    bad = [p for p in placements if p not in PLACEMENTS]
    if bad or not placements:
        raise DebugAtlasError(f"`placements={placements!r}`: choose from {list(PLACEMENTS)}.")
    if not sizes or any(not 0 < s <= 1 for s in sizes):
        raise DebugAtlasError(f"`sizes={sizes!r}` must be fractions of the image side in (0, 1].")
    if int(n_random) < 1 or int(batch_size) < 1:
        raise DebugAtlasError(f"`n_random={n_random!r}` and `batch_size={batch_size!r}` must be >= 1.")
    if not isinstance(images_a, torch.Tensor) or images_a.dim() != 4:
        shape = tuple(images_a.shape) if isinstance(images_a, torch.Tensor) else type(images_a).__name__
        raise DebugAtlasError(f"`images_a` has shape {shape}; expected [N, C, H, W] in [0, 1].")
    device = torch.device(device) if device is not None else model_device(model)
    images_a = images_a.detach().float()
    if controls is None:
        controls = control_patches(patches, images_b, images_a.shape[1:], sizes, seed)
    everything = list(patches) + list(controls)
    ids = [p.id for p in everything]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DebugAtlasError(f"Patch ids must be unique; repeated: {dup}. HINT: rename the patches.")
    height, width = images_a.shape[-2:]
    results: list[PatchResult] = []
    with preserved_model_state(model), torch.no_grad():
        model.eval()
        preds, p_b = [], []
        for start in range(0, len(images_a), batch_size):
            logits = _logits(model, images_a[start:start + batch_size].to(device), max(a, b))
            preds.append(logits.argmax(-1).cpu())
            p_b.append(logits.softmax(-1)[:, b].cpu())
        keep = torch.cat(preds) == a if preds else torch.zeros(0, dtype=torch.bool)
        images = images_a[keep]
        p_before = float(torch.cat(p_b)[keep].mean()) if int(keep.sum()) else float("nan")
        for done, patch in enumerate(everything, 1):
            measured = _measure(model, images, b, patch, sizes, placements, int(n_random), seed, batch_size, device)
            geometry = _geometry(patch, height, width)
            results += [_summarise(patch, geometry, pl, *measured, p_before) for pl in placements]
            if progress is not None:
                progress(done, len(everything))
    controls_by = {(r.source, r.geometry, r.placement): r.flip_rate for r in results if r.is_control}
    for r in results:
        if not r.is_control:
            r.noise_flip_rate = controls_by.get(("noise", r.geometry, r.placement))
            r.natural_flip_rate = controls_by.get(("natural", r.geometry, r.placement))
    return PatchEvaluation(int(a), int(b), int(keep.sum()), len(images_a), sizes, placements,
                           int(n_random), int(seed), results)


# -- refinement ------------------------------------------------------------------------------------
def refine_patch(
    model: nn.Module,
    patch: Patch,
    images_a: torch.Tensor,
    b: int,
    steps: int = 100,
    lr: float = 0.05,
    size_frac: float = DEFAULT_SIZES[0],
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Patch:
    """Optimise the patch's pixels by gradient to raise log P(B) when pasted at random positions.

    The result is an upper bound on what a patch of that size can do, not a finding: its source is
    "optimised" and its id ends in "-opt". It is pasted unresized at the size optimised (the
    patch's native size, or `size_frac` of the image side for a resized patch).
    """
    if int(steps) < 0:
        raise DebugAtlasError(f"`steps={steps!r}` must be >= 0.")
    device = torch.device(device) if device is not None else model_device(model)
    with gradient_context(model):
        images = images_a.detach().clone().float().to(device)
        n, c, height, width = images.shape
        start = paste_variants(patch, [size_frac], (c, height, width))[0][1].to(device)
        ph, pw = start.shape[-2:]
        param = torch.logit(start.clamp(0.02, 0.98)).clone().requires_grad_(True)
        opt = torch.optim.Adam([param], lr=lr)
        gen = generator(seed)
        for _ in range(int(steps)):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            rows = torch.randint(0, height - ph + 1, (len(idx),), generator=gen).tolist()
            cols = torch.randint(0, width - pw + 1, (len(idx),), generator=gen).tolist()
            pixels = torch.sigmoid(param)
            canvas = torch.zeros((len(idx), c, height, width), device=device)
            mask = torch.zeros_like(canvas)
            for k, (r, col) in enumerate(zip(rows, cols)):
                canvas[k, :, r:r + ph, col:col + pw] = pixels
                mask[k, :, r:r + ph, col:col + pw] = 1.0
            batch = images[idx.to(device)] * (1 - mask) + canvas
            loss = -_logits(model, batch, b).log_softmax(-1)[:, b].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        result = torch.sigmoid(param).detach().cpu()
    return Patch(f"{patch.id}-opt", patch.cell, "optimised", result, resize=False)
