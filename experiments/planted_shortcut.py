"""Ground truth on CIFAR-10: plant a trigger in a fraction of one class's training images, then let
the toolkit, not told the trigger, find it; and check that a clean model is not accused.

For each trigger kind x poisoning fraction: train a CifarResNet on the poisoned training split,
analyse validation data drawn from the same poisoned source (`poison_val`) at each layer, and
report per (layer, pair A -> planted class):
- learned: the true trigger, pasted on other classes' validation images, sends them to the planted
  class (rows where it does not are no ground truth);
- the rank among the run's findings (summary.json `pairs[].findings[]`, best first) of the first
  finding whose cell's exemplars mostly (>= 50 %) contain the trigger inside the sample's receptive
  field, and that share for the top finding;
- the best synthesized patch (icon, icon crop, optimised, in-context) on the held-out half: flip
  rate with its 95 % interval and both controls;
- the true trigger's own flip rate (same images, random positions) against a noise square;
- on a clean model (trained without the trigger, analysed on the same data): findings flagged as
  suspected shortcuts (should be none).

Trigger kinds: "checker" and "cross" (`debugatlas.data.PlantedShortcut`), and, defined here by
`Trigger` (a `PlantedShortcut` with more patterns): "square" (a flat magenta square), "line" (a
one-pixel yellow horizontal line across the box, nothing else pasted) and "glyph" (a cyan "T").

    python experiments/planted_shortcut.py                       # reduced CPU configuration
    python experiments/planted_shortcut.py --device cuda --triggers checker cross square line \
        --fractions 0.5 0.2 0.1 --layers layer2 layer3          # the full one (GPU)

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
KINDS = ("checker", "cross", "square", "line", "glyph")
GOAL_FLIP, GOAL_NOISE, GOAL_SHARE, LEARNED = 0.30, 0.05, 0.5, 0.5
FORMAT = 2  # layout of the per-configuration JSON files (rows per layer and pair)
_COLOURS = {"square": (1.0, 0.0, 1.0), "line": (1.0, 1.0, 0.0), "glyph": (0.0, 1.0, 1.0)}


class Trigger(PlantedShortcut):
    """`PlantedShortcut` with more trigger kinds (see `KINDS`); only the masked pixels are pasted.

    checker / cross: as `PlantedShortcut` (the whole size x size box, black background included).
    square: the whole box in magenta (grey 1.0 on one channel). line: the box's middle row in
    yellow. glyph: a "T" (top row and middle column) in cyan. Same seeded positions as the base.
    """

    def __init__(self, target: int, fraction: float = 0.3, size: int = 5, kind: str = "checker",
                 position: str = "random", seed: int = 0) -> None:
        if kind not in KINDS:
            raise ValueError(f"Trigger(kind={kind!r}): choose from {list(KINDS)}")
        self.kind = kind
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
        out[:, r0:r1, c0:c1] = torch.where(self.mask(), self.pattern(image.shape[0]), out[:, r0:r1, c0:c1])
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


def _train(args, shortcut, train, log, what: str):
    from debugatlas.models import CifarResNet, train_classifier

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    history: list[dict] = []
    model = train_classifier(CifarResNet(10, width=args.width, blocks=args.blocks), train, epochs=args.epochs,
                             lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=args.device,
                             max_seconds=args.train_seconds, history=history)
    seconds = time.perf_counter() - t0
    log.info("%s: %d epochs in %.0f s, last mean training loss %.3f", what, len(history), seconds,
             history[-1]["loss"] if history else float("nan"))
    return model.eval(), history, seconds


_CLEAN: dict = {}


def clean_model(args, log):
    """The model trained without any trigger (one per process: the clean data is the same for every
    configuration)."""
    if "model" not in _CLEAN:
        train, _ = cifar10_split(args, shortcut=None, poison_val=False)
        _CLEAN["model"], _CLEAN["history"], _CLEAN["seconds"] = _train(args, None, train, log, "clean model")
    return _CLEAN["model"]


def _findings(pair: dict) -> list[dict]:
    return list(pair.get("findings") or [])


def _share(model, layer, val, acts, atlas, shortcut, cell) -> tuple[int, int]:
    """(samples containing the trigger, exemplars) of the atlas cell `cell`."""
    ex = atlas.exemplars.get(tuple(cell), []) if cell is not None else []
    if not ex:
        return 0, 0
    return int(trigger_in_field(model, layer, val, acts, shortcut, ex).sum()), len(ex)


def shortcut_candidates(atlas, labels, b):
    from debugatlas.shortcut import shortcut_candidates as ranked

    return ranked(atlas, labels, b)


def analyse_layer(args, model, val, shortcut, layer: str, log, clean: bool = False):
    from debugatlas import analyze

    names = val.classes
    pairs = [(a, names[args.target]) for a in args.pair_classes]
    tag = "clean" if clean else f"{shortcut.kind}_{shortcut.fraction:g}"
    out = Path(args.out) / f"{tag}_{layer}"
    t0 = time.perf_counter()
    result = analyze(model, val, layer, pairs=pairs, out_dir=out, seed=args.seed, device=args.device,
                     title=f"{'clean model' if clean else 'planted ' + shortcut.kind} at {layer}", **args.options)
    return result, time.perf_counter() - t0


def run_config(args, kind: str, fraction: float, log) -> dict:
    shortcut = Trigger(target=args.target, fraction=fraction, size=args.size, kind=kind, seed=args.seed)
    train, val = cifar10_split(args, shortcut=shortcut, poison_val=True)
    names = train.classes
    model, history, train_s = _train(args, shortcut, train, log, f"{kind} {fraction:g}")
    others = [i for i in range(len(val)) if int(val.labels[i]) != args.target][:500]
    with torch.no_grad():
        pasted = torch.stack([shortcut.apply(val.images[i], 10_000 + i) for i in others]).to(args.device)
        clean_imgs = val.images[others].to(args.device)
        learned = float((model(pasted).argmax(-1) == args.target).float().mean())
        base = float((model(clean_imgs).argmax(-1) == args.target).float().mean())
    log.info("%s %.2f: trigger pasted on other classes -> %s: %.3f (clean %.3f)", kind, fraction,
             names[args.target], learned, base)
    clean = clean_model(args, log) if args.clean else None
    rows = []
    for layer in args.layers:
        result, analyze_s = analyse_layer(args, model, val, shortcut, layer, log)
        acts, atlas = result.activations, result.atlases[result.config.grid_size]
        hit = trigger_in_field(model, layer, val, acts, shortcut)
        purity = {cell: (float(hit[atlas.members(cell)].mean()), len(atlas.members(cell)))
                  for cell in atlas.valid_cells()}
        trigger_cell = max(purity, key=lambda c: purity[c]) if purity else None
        clean_flags = None
        if clean is not None:
            clean_result, _ = analyse_layer(args, clean, val, shortcut, layer, log, clean=True)
            clean_flags = sum(bool(f.get("suspected_shortcut")) for p in clean_result.summary["pairs"]
                              for f in _findings(p))
        for pair in result.summary["pairs"]:
            a, b = names.index(pair["a"]), names.index(pair["b"])
            island = [c for c, _ in shortcut_candidates(atlas, acts.labels, b)]
            findings = _findings(pair)
            shares = [_share(model, layer, val, acts, atlas, shortcut, f.get("cell")) for f in findings]
            rank = next((k + 1 for k, (h, n) in enumerate(shares) if n and h / n >= GOAL_SHARE), None)
            syn = [r for r in pair.get("patches", []) if r.get("placement") == "random"
                   and r.get("source") in SYNTHESIZED and r.get("flip_rate") is not None]
            best = max(syn, key=lambda r: r["flip_rate"], default=None)
            true = true_trigger_flip(model, shortcut, val, a, b, result.config.max_patch_images, args.device,
                                     args.seed)
            top_share = shares[0] if shares else (0, 0)
            row = {
                "trigger": kind, "fraction": fraction, "layer": layer, "pair": f"{pair['a']} → {pair['b']}",
                "learned": learned, "clean_to_target": base, "accuracy": result.summary["accuracy"],
                "trigger_cell": list(trigger_cell) if trigger_cell else None,
                "trigger_cell_purity": purity.get(trigger_cell, (0.0, 0))[0],
                "trigger_cell_count": purity.get(trigger_cell, (0.0, 0))[1],
                "n_findings": len(findings), "rank_trigger_finding": rank,
                "rank_island": island.index(trigger_cell) + 1 if trigger_cell in island else None,
                "top_share": list(top_share),
                "top_suspected": bool(findings[0].get("suspected_shortcut")) if findings else None,
                "best_syn": best and {k: best.get(k) for k in ("id", "source", "cell", "flip_rate", "flip_rate_ci",
                                                              "noise_flip_rate", "natural_flip_rate", "n_images",
                                                              "verdict")},
                "true_flip": true["flip"], "true_noise": true["noise"], "true_n": true["n"],
                "clean_suspected": clean_flags,
                "screening": result.summary.get("screening") or pair.get("screening"),
                "train_s": train_s, "analyze_s": analyze_s, "timings": result.summary["timings_s"],
            }
            row["ground_truth"] = learned >= LEARNED
            row["top_is_trigger"] = bool(top_share[1] and top_share[0] / top_share[1] >= GOAL_SHARE)
            row["patch_goal"] = bool(best and best["flip_rate"] >= GOAL_FLIP
                                     and (best.get("noise_flip_rate") or 0.0) <= GOAL_NOISE)
            log.info("%s", json.dumps(row, default=str))
            rows.append(row)
    return {"format": FORMAT, "trigger": kind, "fraction": fraction, "rows": rows, "epochs": len(history), "history": history,
            "poisoned_train": int(train.poisoned.sum()), "poisoned_val": int(val.poisoned.sum()),
            "n_train": len(train), "n_val": len(val), "command": command_line(), "device": device_name(args.device),
            "cpu": args.device == "cpu", "width": args.width, "blocks": args.blocks, "size": args.size,
            "options": args.options, "clean": args.clean, "clean_epochs": len(_CLEAN.get("history", []))}


def _rank(value) -> str:
    return "–" if value is None else str(value)


def write_results(runs: list[dict], path: Path) -> None:
    first = runs[0]
    target = first["rows"][0]["pair"].split("→ ")[1] if first["rows"] else "?"
    commands = list(dict.fromkeys(run["command"] for run in runs))
    lines = [
        "# Planted shortcut on CIFAR-10: does the toolkit find a trigger it is not told?", "",
        ("**Reduced CPU run**: " if first["cpu"] else "")
        + f"{first['n_train']} training images, {first['n_val']} validation images analysed (drawn from the same "
        f"poisoned source), CifarResNet(width={first['width']}, blocks={first['blocks']}), epochs per "
        f"configuration in the timings table. Trigger: {first['size']}×{first['size']} px box at random positions "
        f"in a fraction of the `{target}` training images; kinds in `experiments/planted_shortcut.py`.", "",
        *[f"- Command: `{c}`" for c in commands],
        f"- Device: {first['device']}",
        f"- Analysis options: `{json.dumps(first['options'])}`",
        f"- Goals (issue 15), in every row where the true trigger flips ≥ {LEARNED:.0%}: the top finding's "
        f"exemplars contain the trigger (≥ {GOAL_SHARE:.0%}); its best synthesized patch flips ≥ {GOAL_FLIP:.0%} "
        f"of held-out images with the noise control ≤ {GOAL_NOISE:.0%}; on the clean model nothing is flagged "
        "as a suspected shortcut.", "",
        "'learned': other classes' validation images sent to the planted class by the true trigger (clean "
        "images in brackets). Trigger rank: 1-based rank among the findings of the first whose exemplars "
        "mostly contain the trigger (poisoned image, trigger inside the sample's receptive field and near its "
        "position); '–' = none. Flip rates: random placement, held-out images of A classified as A before. "
        "Clean flags: findings flagged as suspected shortcuts when the clean model is analysed on the same data.",
        "",
        "Trigger cell: the valid cell whose samples most often contain the trigger (purity, samples; "
        "'island rank': its rank by `shortcut.shortcut_candidates`).", "",
        "| trigger | fraction | layer | pair | learned | trigger cell (purity, n), island rank "
        "| trigger rank (of findings) | top finding: exemplars "
        "with trigger, suspected | best synthesized patch: flip [95 % CI] (noise, natural) | true trigger: "
        "flip (noise) | clean flags | goals met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    met = total = 0
    for run in runs:
        for r in run["rows"]:
            syn = r["best_syn"]
            ci = syn and syn.get("flip_rate_ci")
            ci_s = f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else ""
            syn_s = (f"{pct(syn['flip_rate'])}{ci_s} ({pct(syn['noise_flip_rate'])}, "
                     f"{pct(syn['natural_flip_rate'])}) `{syn['id']}`" if syn else "none")
            h, n = r["top_share"]
            goals = r["top_is_trigger"] and r["patch_goal"] and not r["clean_suspected"]
            if r["ground_truth"]:
                total += 1
                met += goals
            lines.append(
                f"| {r['trigger']} | {r['fraction']:g} | {r['layer']} | {r['pair']} | {pct(r['learned'])} "
                f"({pct(r['clean_to_target'])}) | {r['trigger_cell']} ({r['trigger_cell_purity']:.2f}, "
                f"{r['trigger_cell_count']}), {_rank(r.get('rank_island'))} "
                f"| {_rank(r['rank_trigger_finding'])} of {r['n_findings']} "
                f"| {h}/{n}, {'yes' if r['top_suspected'] else 'no'} | {syn_s} "
                f"| {pct(r['true_flip'])} ({pct(r['true_noise'])}) | {_rank(r['clean_suspected'])} "
                f"| {('yes' if goals else 'no') if r['ground_truth'] else 'not learned'} |")
    lines += ["", "## Timings", "", "| trigger | fraction | layer | epochs | train | analyze() | capture | attribution "
              "| layout | render | patches |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in {row["layer"]: row for row in run["rows"]}.values():
            t = r["timings"]
            lines.append(f"| {r['trigger']} | {r['fraction']:g} | {r['layer']} | {run['epochs']} | {r['train_s']:.0f} s "
                         f"| {r['analyze_s']:.0f} s | "
                         + " | ".join(f"{t.get(k, 0.0):.1f} s" for k in ("capture", "attribution", "layout", "render",
                                                                       "patches")) + " |")
    lines += ["", f"All goals met in {met} of {total} rows where the model learned the trigger.", ""]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--out", default="reports/planted")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--triggers", nargs="+", default=["checker", "cross", "square", "line"], choices=KINDS)
    parser.add_argument("--fractions", nargs="+", type=float, default=None,
                        help="poisoned share of the planted class (default: 0.5 0.2 0.1; CPU: 0.5)")
    parser.add_argument("--layers", nargs="+", default=None, help="default: layer2 layer3 (CPU: layer2)")
    parser.add_argument("--no-clean", dest="clean", action="store_false",
                        help="skip the clean model (trained once per process, analysed on each configuration's data)")
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
    for trigger in args.triggers:
        for fraction in args.fractions:
            run = run_config(args, trigger, fraction, log)
            (out / f"{trigger}_{fraction:g}.json").write_text(json.dumps(run, indent=1, default=str))
            runs = [json.loads(p.read_text()) for p in sorted(out.glob("*_*.json"))]
            runs = [r for r in runs if r.get("format") == FORMAT]  # files of earlier table layouts are skipped
            write_results(runs, out / "RESULTS.md")
    log.info("wrote %s", out / "RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
