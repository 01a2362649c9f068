"""Ground truth on CIFAR-10: plant a trigger in a fraction of one class's training images, then let
the toolkit, not told the trigger, find it and name it; and check that a clean model is not accused.

For each trigger variant x poisoning fraction: train a CifarResNet on the poisoned training split,
analyse validation data drawn from the same poisoned source (`poison_val`) at each layer, and
report per (layer, pair A -> planted class):
- learned: the true trigger, pasted on other classes' validation images, sends them to the planted
  class (rows where it does not are no ground truth);
- whether the top finding (summary.json `pairs[].findings[]`, best first) is the trigger: most
  (>= 50 %) of its exemplars, over all its cells, contain the trigger inside the sample's receptive
  field; how many findings of the pair mostly carry it (one: the feature appears once); whether
  it is flagged `suspected_shortcut`, with its evidence and its best real crop;
- the best synthesized patch (icon, icon crop, optimised, in-context) on the held-out half: flip
  rate with its 95 % interval and both controls;
- the true trigger's own flip rate (same images, its own positions) against a noise square;
- on a clean model (trained without the trigger, analysed on the same data): findings flagged as
  suspected shortcuts (should be none); and once per process the natural run, the clean model on
  clean validation data;
- the flag's recall (learned rows whose top finding is the trigger and flagged) and precision
  (flagged findings that carry a learned trigger, over planted, clean and natural runs).

Variants (`VARIANTS`): "checker" and "cross" (`debugatlas.data.PlantedShortcut`), "square" (a flat
magenta square), "line" (a one-pixel yellow line), "glyph" (a cyan "T"), all 5 px at random
positions in the airplanes; and shapes the toolkit was not built around: "corner" (the checker at
one fixed place), "faint" (the checker at 50 % opacity), "stamp" (white text "OK"), "large" (an
8 px checker, a quarter of the side) and "cross-cat" (the cross planted in the cats, pairs dog and
truck -> cat).

    python experiments/planted_shortcut.py --device cpu --out reports/planted_cpu   # reduced CPU configuration
    python experiments/planted_shortcut.py --device cpu --out reports/planted_cpu --fractions 0.2
    python experiments/planted_shortcut.py --device cuda --fractions 0.5 0.2 0.1 --layers layer2 layer3  # GPU

Each trained model is kept under `--weights` (default `~/.cache/debugatlas/planted`, outside the
repository), named by its configuration and recipe, and reused by later runs; `--train-only` trains
them all without analysing, so the analyses can be rerun later at the cost of the analyses alone.

Each configuration's rows are saved as `<out>/<trigger>_<fraction>.json` and RESULTS.md is
rebuilt from every such file in `<out>`, so configurations can run as separate processes (in
parallel on one GPU) and still land in one table; each process logs to its own `run_*.log`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_data_args, cifar10_split, command_line, device_name, pct, setup_logging  # noqa: E402

from debugatlas.data import PlantedShortcut  # noqa: E402

SYNTHESIZED = ("icon", "icon_crop", "optimised", "in_context")
KINDS = ("checker", "cross", "square", "line", "glyph", "text")
GOAL_FLIP, GOAL_NOISE, GOAL_SHARE, LEARNED, GOAL_FLAGGED = 0.30, 0.05, 0.5, 0.5, 0.9
FORMAT = 3  # layout of the per-configuration JSON files (rows per layer and pair)
_COLOURS = {"square": (1.0, 0.0, 1.0), "line": (1.0, 1.0, 0.0), "glyph": (0.0, 1.0, 1.0), "text": (1.0, 1.0, 1.0)}
# "OK" in a 3 x 5 pixel font, one column apart: a text stamp 7 px wide, 5 px high
_TEXT = ("###.#.#", "#.#.#.#", "#.#.##.", "#.#.#.#", "###.#.#")
# The shapes of the benchmark: the four small opaque patterns pasted anywhere, and shapes the
# toolkit was not built around: a tag at one fixed place, a semi-transparent one, a text stamp, a
# larger one (a quarter of the side), and a trigger planted in another class (cat, not airplane).
VARIANTS = {
    "checker": {"kind": "checker"}, "cross": {"kind": "cross"}, "square": {"kind": "square"},
    "line": {"kind": "line"}, "glyph": {"kind": "glyph"},
    "corner": {"kind": "checker", "position": "corner", "about": "checker at one fixed place (bottom right)"},
    "faint": {"kind": "checker", "alpha": 0.5, "about": "checker at 50 % opacity"},
    "stamp": {"kind": "text", "size": 7, "about": "white text stamp \"OK\", 7 x 5 px"},
    "large": {"kind": "checker", "size": 8, "about": "checker 8 x 8 px, a quarter of the side"},
    "cross-cat": {"kind": "cross", "target": 3, "pairs": ("dog", "truck"), "about": "cross planted in the cats"},
}


class Trigger(PlantedShortcut):
    """`PlantedShortcut` with more trigger kinds (see `KINDS`); only the masked pixels are pasted,
    blended at `alpha` (1.0: opaque).

    checker / cross: as `PlantedShortcut` (the whole size x size box, black background included).
    square: the whole box in magenta (grey 1.0 on one channel). line: the box's middle row in
    yellow. glyph: a "T" (top row and middle column) in cyan. text: "OK" in white (`_TEXT`, rows 1-5
    of a 7 px box). Same seeded positions as the base.
    """

    def __init__(self, target: int, fraction: float = 0.3, size: int = 5, kind: str = "checker",
                 position: str = "random", seed: int = 0, alpha: float = 1.0) -> None:
        if kind not in KINDS:
            raise ValueError(f"Trigger(kind={kind!r}): choose from {list(KINDS)}")
        if kind == "text" and size < 7:
            raise ValueError("Trigger(kind='text') needs size >= 7 (the stamp is 7 px wide)")
        self.kind, self.alpha = kind, float(alpha)
        super().__init__(target=target, fraction=fraction, size=size,
                         trigger=kind if kind in ("checker", "cross") else "checker", position=position, seed=seed)

    def mask(self) -> torch.Tensor:
        """[size, size] bool: the pixels the trigger sets."""
        s = self.size
        mask = torch.zeros(s, s, dtype=torch.bool)
        if self.kind == "line":
            mask[s // 2] = True
        elif self.kind == "glyph":
            mask[0] = True
            mask[:, s // 2] = True
        elif self.kind == "text":
            top = (s - len(_TEXT)) // 2
            for r, row in enumerate(_TEXT):
                for c, ch in enumerate(row):
                    mask[top + r, c] = ch == "#"
        else:
            mask[:] = True
        return mask

    def pattern(self, channels: int) -> torch.Tensor:
        if self.kind in ("checker", "cross"):
            return super().pattern(channels)
        colour = _COLOURS[self.kind] if channels == 3 else (1.0,) * channels
        return torch.tensor(colour).view(-1, 1, 1).expand(channels, self.size, self.size).clone()

    def apply(self, image: torch.Tensor, index: int) -> torch.Tensor:
        r0, r1, c0, c1 = trigger_box(self, index, image.shape[1], image.shape[2])
        out = image.clone()
        box = out[:, r0:r1, c0:c1]
        blended = self.alpha * self.pattern(image.shape[0]) + (1.0 - self.alpha) * box
        out[:, r0:r1, c0:c1] = torch.where(self.mask(), blended, box)
        return out


def trigger_box(shortcut, index: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the trigger `shortcut.apply(image, index)` pastes (same seeded draw)."""
    rng = np.random.default_rng([shortcut.seed, index])
    s = shortcut.size
    if shortcut.position == "corner":
        y, x = height - s - 1, width - s - 1
    else:
        y, x = int(rng.integers(0, height - s + 1)), int(rng.integers(0, width - s + 1))
    return y, y + s, x, x + s


def trigger_in_field(model, layer: str, dataset, acts, shortcut, samples=None) -> np.ndarray:
    """Per sample (all, or the indices `samples`): the sample *contains the trigger*.

    That is: its image is poisoned, the whole trigger lies inside the sample's receptive field,
    and the trigger's centre is within stride + size / 2 pixels (each axis) of the centre pixel of
    the sample's position (stride = image side / layer side), so that at deep layers, whose field
    covers the whole image, a sample far from the trigger does not count.
    """
    from debugatlas.render import receptive_field

    shape = tuple(dataset.images.shape[1:])
    index = np.arange(len(acts)) if samples is None else np.asarray(samples, dtype=np.int64).reshape(-1)
    out = np.zeros(index.size, dtype=bool)
    ids, positions = acts.image_ids.numpy(), acts.positions.numpy()
    layer_hw = acts.spatial_shape or (1, 1)
    stride = (shape[1] / layer_hw[0], shape[2] / layer_hw[1])
    for k, s in enumerate(index.tolist()):
        i = int(ids[s])
        if not dataset.poisoned[i]:
            continue
        r0, r1, c0, c1 = receptive_field(model, layer, shape, tuple(positions[s]))
        t0, t1, u0, u1 = trigger_box(shortcut, i, shape[1], shape[2])
        inside = r0 <= t0 and t1 <= r1 and c0 <= u0 and u1 <= c1
        py, px = (positions[s][0] + 0.5) * stride[0] - 0.5, (positions[s][1] + 0.5) * stride[1] - 0.5
        ty, tx = (t0 + t1 - 1) / 2, (u0 + u1 - 1) / 2
        near = abs(py - ty) <= stride[0] + shortcut.size / 2 and abs(px - tx) <= stride[1] + shortcut.size / 2
        out[k] = inside and (positions[s][0] < 0 or near)
    return out


def true_trigger_flip(model, shortcut, dataset, a: int, b: int, limit: int, device, seed: int) -> dict:
    """The planted trigger pasted (its own seeded positions) on up to `limit` images of `a` that the
    model classifies as `a`: share sent to `b`, against a uniform-noise square in the same box."""
    ids = [i for i in range(len(dataset)) if int(dataset.labels[i]) == a and not dataset.poisoned[i]][:limit]
    if not ids:
        return {"flip": None, "noise": None, "n": 0}
    clean = dataset.images[ids]
    gen = torch.Generator().manual_seed(seed)
    pasted, noisy = [], []
    for k, i in enumerate(ids):
        pasted.append(shortcut.apply(clean[k], 20_000 + i))
        r0, r1, c0, c1 = trigger_box(shortcut, 20_000 + i, clean.shape[2], clean.shape[3])
        box = clean[k].clone()
        box[:, r0:r1, c0:c1] = torch.rand(clean.shape[1], r1 - r0, c1 - c0, generator=gen)
        noisy.append(box)
    with torch.no_grad():
        keep = model(clean.to(device)).argmax(-1).cpu() == a
        flip = model(torch.stack(pasted).to(device)).argmax(-1).cpu() == b
        noise = model(torch.stack(noisy).to(device)).argmax(-1).cpu() == b
    n = int(keep.sum())
    return {"flip": float(flip[keep].float().mean()) if n else None,
            "noise": float(noise[keep].float().mean()) if n else None, "n": n}


def _weights_file(args, name: str) -> Path | None:
    """Where the weights of one trained model are kept (`--weights`), named by everything that
    decides them: the configuration, the recipe and the data."""
    if not args.weights:
        return None
    recipe = (f"w{args.width}b{args.blocks}e{args.epochs}lr{args.lr:g}bs{args.batch_size}s{args.seed}"
              f"n{args.n_train}-{args.n_val}t{args.train_seconds or 0:g}")
    return Path(args.weights).expanduser() / f"{name}_{recipe}.pt"


def _train(args, shortcut, train, log, what: str, name: str):
    """The model of one configuration: trained here, or loaded from `--weights` when an earlier run
    of the same recipe left it there (its recorded training history and time come with it)."""
    from debugatlas.models import CifarResNet, train_classifier

    model = CifarResNet(10, width=args.width, blocks=args.blocks)
    path = _weights_file(args, name)
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["state_dict"])
        log.info("%s: weights reused from %s (trained %d epochs in %.0f s)", what, path, len(saved["history"]),
                 saved["seconds"])
        return model.to(args.device).eval(), saved["history"], saved["seconds"]
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    history: list[dict] = []
    model = train_classifier(model, train, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             seed=args.seed, device=args.device, max_seconds=args.train_seconds, history=history)
    seconds = time.perf_counter() - t0
    log.info("%s: %d epochs in %.0f s, last mean training loss %.3f", what, len(history), seconds,
             history[-1]["loss"] if history else float("nan"))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"state_dict": state, "history": history, "seconds": seconds}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return model.eval(), history, seconds


_CLEAN: dict = {}


def clean_model(args, log):
    """The model trained without any trigger (one per process: the clean data is the same for every
    configuration)."""
    if "model" not in _CLEAN:
        train, _ = cifar10_split(args, shortcut=None, poison_val=False)
        _CLEAN["model"], _CLEAN["history"], _CLEAN["seconds"] = _train(args, None, train, log, "clean model", "clean")
    return _CLEAN["model"]


def _findings(pair: dict) -> list[dict]:
    return list(pair.get("findings") or [])


def _carries(model, layer, val, acts, atlas, shortcut, finding: dict) -> tuple[int, int]:
    """(exemplar samples containing the trigger, exemplar samples) over every cell of `finding`."""
    cells = [tuple(c["cell"]) for c in finding.get("cells") or []] or [tuple(finding["cell"])]
    ex = list(dict.fromkeys(s for c in cells for s in atlas.exemplars.get(c, [])))
    if not ex:
        return 0, 0
    return int(trigger_in_field(model, layer, val, acts, shortcut, ex).sum()), len(ex)


def shortcut_candidates(atlas, labels, b):
    from debugatlas.shortcut import shortcut_candidates as ranked

    return ranked(atlas, labels, b)


def analyse_layer(args, model, val, layer: str, target: int, pair_classes, tag: str, title: str):
    from debugatlas import analyze

    names = val.classes
    pairs = [(a, names[target]) for a in pair_classes]
    out = Path(args.out) / f"{tag}_{layer}"
    t0 = time.perf_counter()
    result = analyze(model, val, layer, pairs=pairs, out_dir=out, seed=args.seed, device=args.device,
                     title=title, **args.options)
    return result, time.perf_counter() - t0


def _flags(result) -> list[dict]:
    """Every finding flagged as a suspected shortcut in a run: pair, cell, evidence numbers."""
    return [{"pair": f"{p['a']} → {p['b']}", "cell": f["cell"],
             "enrichment": (f.get("shortcut_evidence") or {}).get("enrichment")}
            for p in result.summary["pairs"] for f in _findings(p) if f.get("suspected_shortcut")]


def _evidence(finding: dict | None) -> dict | None:
    ev = (finding or {}).get("shortcut_evidence") or {}
    keep = ("exemplar_b_share", "real_beats_noise", "real_confirmed", "real_tested", "enrichment", "images_b", "n_images_b",
            "other_images", "n_images_other", "spot", "real_crop")
    return {k: ev.get(k) for k in keep} if ev else None


def run_natural(args, log) -> dict:
    """The clean model on clean validation data (the natural CIFAR-10 run): flags, per layer."""
    _, val = cifar10_split(args, shortcut=None, poison_val=False)
    model = clean_model(args, log)
    rows = []
    for layer in args.layers:
        result, seconds = analyse_layer(args, model, val, layer, args.target, args.pair_classes, "natural",
                                        f"clean model, clean data, at {layer}")
        rows.append({"layer": layer, "flags": _flags(result), "accuracy": result.summary["accuracy"],
                     "findings": sum(len(_findings(p)) for p in result.summary["pairs"]), "analyze_s": seconds})
        log.info("natural run at %s: %s", layer, json.dumps(rows[-1], default=str))
    return {"format": FORMAT, "rows": rows, "command": command_line()}


def run_config(args, variant: str, fraction: float, log) -> dict:
    spec = dict(VARIANTS[variant])
    target, pair_classes = spec.pop("target", args.target), list(spec.pop("pairs", args.pair_classes))
    about = spec.pop("about", spec["kind"])
    spec.setdefault("size", args.size)
    shortcut = Trigger(target=target, fraction=fraction, seed=args.seed, **spec)
    train, val = cifar10_split(args, shortcut=shortcut, poison_val=True)
    names = train.classes
    model, history, train_s = _train(args, shortcut, train, log, f"{variant} {fraction:g}", f"{variant}_{fraction:g}")
    if args.train_only:
        return {}
    others = [i for i in range(len(val)) if int(val.labels[i]) != target][:500]
    with torch.no_grad():
        pasted = torch.stack([shortcut.apply(val.images[i], 10_000 + i) for i in others]).to(args.device)
        clean_imgs = val.images[others].to(args.device)
        learned = float((model(pasted).argmax(-1) == target).float().mean())
        base = float((model(clean_imgs).argmax(-1) == target).float().mean())
    log.info("%s %.2f: trigger pasted on other classes -> %s: %.3f (clean %.3f)", variant, fraction,
             names[target], learned, base)
    clean = clean_model(args, log) if args.clean else None
    rows = []
    for layer in args.layers:
        result, analyze_s = analyse_layer(args, model, val, layer, target, pair_classes, f"{variant}_{fraction:g}",
                                          f"planted {about} at {layer}")
        acts, atlas = result.activations, result.atlases[result.config.grid_size]
        hit = trigger_in_field(model, layer, val, acts, shortcut)
        purity = {cell: (float(hit[atlas.members(cell)].mean()), len(atlas.members(cell)))
                  for cell in atlas.valid_cells()}
        trigger_cell = max(purity, key=lambda c: purity[c]) if purity else None
        clean_flags = None
        if clean is not None:
            clean_result, _ = analyse_layer(args, clean, val, layer, target, pair_classes, f"clean_{variant}_{fraction:g}",
                                            f"clean model at {layer}, data of {variant} {fraction:g}")
            clean_flags = _flags(clean_result)
        for pair in result.summary["pairs"]:
            a, b = names.index(pair["a"]), names.index(pair["b"])
            island = [c for c, _ in shortcut_candidates(atlas, acts.labels, b)]
            findings = _findings(pair)
            shares = [_carries(model, layer, val, acts, atlas, shortcut, f) for f in findings]
            carries = [bool(n and h / n >= GOAL_SHARE) for h, n in shares]
            rank = next((k + 1 for k, c in enumerate(carries) if c), None)
            syn = [r for r in pair.get("patches", []) if r.get("placement") == "random"
                   and r.get("source") in SYNTHESIZED and r.get("flip_rate") is not None]
            best = max(syn, key=lambda r: r["flip_rate"], default=None)
            true = true_trigger_flip(model, shortcut, val, a, b, result.config.max_patch_images, args.device,
                                     args.seed)
            top_share = shares[0] if shares else (0, 0)
            row = {
                "trigger": variant, "about": about, "fraction": fraction, "layer": layer,
                "pair": f"{pair['a']} → {pair['b']}",
                "learned": learned, "clean_to_target": base, "accuracy": result.summary["accuracy"],
                "trigger_cell": list(trigger_cell) if trigger_cell else None,
                "trigger_cell_purity": purity.get(trigger_cell, (0.0, 0))[0],
                "trigger_cell_count": purity.get(trigger_cell, (0.0, 0))[1],
                "n_findings": len(findings), "rank_trigger_finding": rank, "n_carrying": sum(carries),
                "rank_island": island.index(trigger_cell) + 1 if trigger_cell in island else None,
                "top_share": list(top_share), "top_cells": len(findings[0].get("cells") or [1]) if findings else 0,
                "top_suspected": bool(findings[0].get("suspected_shortcut")) if findings else None,
                "top_evidence": _evidence(findings[0] if findings else None),
                "top_stability": (findings[0].get("stability") or None) if findings else None,
                # every flagged finding of the pair, and whether its exemplars mostly carry the trigger
                "flagged": [c for f, c in zip(findings, carries) if f.get("suspected_shortcut")],
                "best_syn": best and {k: best.get(k) for k in ("id", "source", "cell", "flip_rate", "flip_rate_ci",
                                                              "noise_flip_rate", "natural_flip_rate", "n_images",
                                                              "verdict")},
                "true_flip": true["flip"], "true_noise": true["noise"], "true_n": true["n"],
                "clean_flags": clean_flags,
                "screening": pair.get("screening"),
                "train_s": train_s, "analyze_s": analyze_s, "timings": result.summary["timings_s"],
                "cost_w": result.summary.get("cost_w"),
            }
            row["ground_truth"] = learned >= LEARNED
            row["top_is_trigger"] = bool(carries and carries[0])
            row["once"] = row["top_is_trigger"] and sum(carries) == 1
            row["patch_goal"] = bool(best and best["flip_rate"] >= GOAL_FLIP
                                     and (best.get("noise_flip_rate") or 0.0) <= GOAL_NOISE)
            log.info("%s", json.dumps(row, default=str))
            rows.append(row)
    return {"format": FORMAT, "trigger": variant, "fraction": fraction, "rows": rows, "epochs": len(history),
            "history": history, "poisoned_train": int(train.poisoned.sum()), "poisoned_val": int(val.poisoned.sum()),
            "n_train": len(train), "n_val": len(val), "command": command_line(), "device": device_name(args.device),
            "cpu": args.device == "cpu", "width": args.width, "blocks": args.blocks,
            "options": args.options, "clean": args.clean, "clean_epochs": len(_CLEAN.get("history", []))}


def _rank(value) -> str:
    return "–" if value is None else str(value)


def _times(value) -> str:
    if value is None:
        return "–"
    return "∞" if value == float("inf") else f"{value:.0f}×" if value >= 10 else f"{value:.1f}×"


def flag_scores(runs: list[dict], natural: dict | None) -> dict:
    """Recall: rows where the trigger was learned whose top finding is the trigger and flagged.
    Precision: of every flagged finding (planted models, clean models, the natural run), the share
    whose exemplars mostly carry a trigger the model learned (rows of models that did not learn
    their trigger count in neither)."""
    rows = [r for run in runs for r in run["rows"]]
    truth = [r for r in rows if r["ground_truth"]]
    recalled = sum(1 for r in truth if r["top_is_trigger"] and r["top_suspected"])
    true_flags = sum(sum(r["flagged"]) for r in truth)
    false_flags = (sum(len(r["flagged"]) - sum(r["flagged"]) for r in truth)
                   + len({(r["trigger"], r["fraction"], r["layer"], f["pair"], tuple(f["cell"]))
                          for r in rows for f in (r["clean_flags"] or [])})
                   + sum(len(n["flags"]) for n in (natural or {}).get("rows", [])))
    flags = true_flags + false_flags
    return {"rows": len(truth), "recalled": recalled, "recall": recalled / len(truth) if truth else None,
            "flags": flags, "true_flags": true_flags, "precision": true_flags / flags if flags else None,
            "once": sum(1 for r in truth if r["once"])}


def write_results(runs: list[dict], path: Path, natural: dict | None = None) -> None:
    first = runs[0]
    commands = list(dict.fromkeys(run["command"] for run in runs))
    lines = [
        "# Planted shortcut on CIFAR-10: does the toolkit find and name a trigger it is not told?", "",
        ("**Reduced CPU run**: " if first["cpu"] else "")
        + f"{first['n_train']} training images, {first['n_val']} validation images analysed (drawn from the same "
        f"poisoned source), CifarResNet(width={first['width']}, blocks={first['blocks']}), epochs per "
        "configuration in the timings table. Triggers (`VARIANTS` in `experiments/planted_shortcut.py`): 5 px "
        "patterns at random positions in a fraction of the airplanes, and the shapes named in the first column.", "",
        *[f"- Command: `{c}`" for c in commands],
        f"- Device: {first['device']}",
        f"- Analysis options: `{json.dumps(first['options'])}`",
        f"- Goals, in every row where the true trigger flips ≥ {LEARNED:.0%} of other classes' images: the top "
        f"finding is the trigger (≥ {GOAL_SHARE:.0%} of its exemplars carry it) and appears once (no other finding "
        f"of the pair mostly carries it); it is flagged `suspected_shortcut` in ≥ {GOAL_FLAGGED:.0%} of the rows; "
        "nothing is flagged on a clean model or on the natural run.", "",
        "'learned': other classes' validation images sent to the planted class by the true trigger (clean images "
        "in brackets). Top finding: exemplars (all its cells) that carry the trigger (poisoned image, trigger inside "
        "the sample's receptive field and near its position), its cells, whether it is flagged, and its evidence "
        "(real crops that beat the noise control / measured; enrichment: B's images with the feature against the other class that "
        "has it most). 'carrying': findings of the pair whose exemplars mostly carry the trigger (1 = the feature "
        "appears once). Flip rates: random placement, held-out images of A classified as A before. Clean flags: "
        "findings flagged when the clean model is analysed on the same data. Recurs in: other layouts of the same "
        "vectors (seeds, n_neighbors, min_dist) in which the top finding is found again (`pipeline.stability`).", "",
        "| trigger | fraction | layer | pair | learned | top finding: trigger exemplars, cells, flagged "
        "(real crops, enrichment) | carrying | best real crop of the top finding: flip [95 % CI] (noise, natural) "
        "| best synthesized patch: flip [95 % CI] (noise, natural) | true trigger: flip (noise) | clean flags "
        "| top finding recurs in | goals met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for r in run["rows"]:
            h, n = r["top_share"]
            ev = r.get("top_evidence") or {}
            real = ev.get("real_crop")
            goals = r["once"] and r["top_suspected"] and not r["clean_flags"]
            lines.append(
                f"| {r['trigger']}{' (' + r['about'] + ')' if r['about'] != r['trigger'] else ''} | {r['fraction']:g} "
                f"| {r['layer']} | {r['pair']} | {pct(r['learned'])} ({pct(r['clean_to_target'])}) "
                f"| {h}/{n}, {r['top_cells']} cell{'s' if r['top_cells'] != 1 else ''}, "
                f"{'**flagged**' if r['top_suspected'] else 'not flagged'} ({_rank(ev.get('real_beats_noise'))}/"
                f"{_rank(ev.get('real_tested'))}, {_times(ev.get('enrichment'))}) "
                f"| {r['n_carrying']} of {r['n_findings']} | {_rate(real)} | {_rate(r['best_syn'])} "
                f"| {pct(r['true_flip'])} ({pct(r['true_noise'])}) | {len(r['clean_flags'] or [])} "
                f"| {_recurs(r.get('top_stability'))} "
                f"| {('yes' if goals else 'no') if r['ground_truth'] else 'not learned'} |")
    scores = flag_scores(runs, natural)
    lines += ["", f"Rows where the trigger was learned: {scores['rows']}. The top finding is the trigger and appears "
              f"once in {scores['once']}; it is the trigger and flagged in {scores['recalled']} "
              f"(flag recall {pct(scores['recall'])}, goal ≥ {GOAL_FLAGGED:.0%}). Flag precision: "
              f"{scores['true_flags']} of {scores['flags']} flagged findings carry a learned trigger "
              f"({pct(scores['precision'])}), over the planted models, the clean models and the natural run.", ""]
    if natural:
        lines += ["Natural run (the clean model on clean validation data, pairs toward airplane): "
                  + "; ".join(f"{n['layer']}: {n['findings']} findings, {len(n['flags'])} flagged" for n in natural["rows"])
                  + ".", ""]
    lines += ["## Timings", "", "| trigger | fraction | layer | epochs | train | analyze() | capture | attribution "
              "| layout | render | patches | analysis in W |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in {row["layer"]: row for row in run["rows"]}.values():
            t = r["timings"]
            cost = (r.get("cost_w") or {}).get("total")
            lines.append(f"| {r['trigger']} | {r['fraction']:g} | {r['layer']} | {run['epochs']} | {r['train_s']:.0f} s "
                         f"| {r['analyze_s']:.0f} s | "
                         + " | ".join(f"{t.get(k, 0.0):.1f} s" for k in ("capture", "attribution", "layout", "render",
                                                                       "patches"))
                         + f" | {'–' if cost is None else f'{cost:.1f} W'} |")
    lines.append("")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


def _recurs(stability: dict | None) -> str:
    return "–" if not stability else f"{stability['recurred']} of {stability['of']} layouts"


def _rate(row: dict | None) -> str:
    if not row or row.get("flip_rate") is None:
        return "none"
    ci = row.get("flip_rate_ci")
    ci_s = f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else ""
    name = row.get("id") or row.get("patch")
    return (f"{pct(row['flip_rate'])}{ci_s} ({pct(row.get('noise_flip_rate'))}, {pct(row.get('natural_flip_rate'))})"
            + (f" `{name}`" if name else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--out", default="reports/planted")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--triggers", nargs="+", default=["checker", "cross", "square", "line", "corner", "faint",
                                                          "stamp", "large", "cross-cat"], choices=list(VARIANTS))
    parser.add_argument("--fractions", nargs="+", type=float, default=None,
                        help="poisoned share of the planted class (default: 0.5 0.2 0.1; CPU: 0.5)")
    parser.add_argument("--layers", nargs="+", default=None, help="default: layer2 layer3 (CPU: layer2)")
    parser.add_argument("--no-clean", dest="clean", action="store_false",
                        help="skip the clean model (trained once per process, analysed on each configuration's data "
                             "and, as the natural run, on clean data)")
    parser.add_argument("--target", type=int, default=0, help="planted class index (0 = airplane)")
    parser.add_argument("--pair-classes", nargs="+", default=["cat", "truck"], help="classes A of the pairs A → target")
    parser.add_argument("--size", type=int, default=5, help="trigger side in pixels")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-seconds", type=float, default=None,
                        help="stop training after the epoch that ends past this many seconds")
    parser.add_argument("--samples-per-image", type=int, default=None)
    parser.add_argument("--sampling", default="guided", help="capture sampling rule (guided | random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="~/.cache/debugatlas/planted",
                        help="folder where each trained model is kept and reused by later runs of the same recipe "
                             "('' trains every model afresh)")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or find) every configuration's model and the clean one, analyse nothing")
    parser.add_argument("--layout", default=None, help="layout method (default: umap); pca for a fast CPU run")
    parser.add_argument("--grid-size", type=int, default=None)
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    defaults = ({"n_train": 10_000, "n_val": 3000, "epochs": 8, "width": 16, "blocks": 1, "fractions": [0.5],
                 "layers": ["layer2"]} if cpu
                else {"n_train": None, "n_val": 2000, "epochs": 20, "width": 16, "blocks": 3,
                      "fractions": [0.5, 0.2, 0.1], "layers": ["layer2", "layer3"]})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.options = ({"samples_per_image": 4, "grid_size": 20, "grid_sizes": (20,), "layout": "umap",
                     "layout_backend": "torch", "patch_cells": 8, "crop_sizes": (4, 6, 8),
                     "n_random": 4, "min_count": 2, "n_examples": 1}
                    if cpu else {"samples_per_image": 8, "crop_sizes": (4, 6, 8), "render_steps": 256,
                                 "render_batch_size": 256, "patch_cells": 16})
    args.options["sampling"] = args.sampling
    if args.layout is not None:
        args.options["layout"] = args.layout
    if args.samples_per_image is not None:
        args.options["samples_per_image"] = args.samples_per_image
    if args.grid_size is not None:
        args.options.update(grid_size=args.grid_size, grid_sizes=(args.grid_size,))
    out = Path(args.out)
    tag = "_".join([*args.triggers, *(f"{f:g}" for f in args.fractions)])
    log = setup_logging(out / f"run_{tag}.log")
    log.info("command: %s", command_line())
    natural_file = out / "natural.json"
    natural = json.loads(natural_file.read_text()) if natural_file.is_file() else None
    if args.train_only:
        if args.clean:
            clean_model(args, log)
        for trigger in args.triggers:
            for fraction in args.fractions:
                run_config(args, trigger, fraction, log)
        return 0
    if args.clean and (natural is None or natural.get("format") != FORMAT):
        natural = run_natural(args, log)
        natural_file.write_text(json.dumps(natural, indent=1, default=str))
    for trigger in args.triggers:
        for fraction in args.fractions:
            run = run_config(args, trigger, fraction, log)
            (out / f"{trigger}_{fraction:g}.json").write_text(json.dumps(run, indent=1, default=str))
            runs = [json.loads(p.read_text()) for p in sorted(out.glob("*_*.json"))]
            runs = [r for r in runs if r.get("format") == FORMAT]  # files of earlier table layouts are skipped
            write_results(runs, out / "RESULTS.md", natural)
    log.info("wrote %s", out / "RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
