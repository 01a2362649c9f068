"""Real data: train a CIFAR-10 ResNet with `AtlasCallback` and analyse its most confused pairs.

On a GPU: all 49,000 training images (1,000 held out for analysis), ResNet-20, 30 epochs.
On a CPU (no GPU found): a reduced run by default, a training subset, a narrow ResNet and few
epochs; the sizes are written into RESULTS.md.

    python experiments/cifar10.py                                  # archive ../shared/data/cifar10-train.tgz
    python experiments/cifar10.py --torchvision-root ~/data        # torchvision's CIFAR10(download=True)
    python experiments/cifar10.py --epochs 30 --width 16 --blocks 3 --device cuda
    python experiments/cifar10.py --from-run reports/cifar10     # only rebuild RESULTS.md

Writes reports/cifar10/ (the callback's run directory), reports/cifar10/RESULTS.md and run.log.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (add_data_args, candidate_counts, cifar10_split, command_line, device_name, pair_table,  # noqa: E402
                     setup_logging, timings_table)

GPU_DEFAULTS = {"n_train": None, "n_val": 1000, "epochs": 30, "width": 16, "blocks": 3}
CPU_DEFAULTS = {"n_train": 10_000, "n_val": 1000, "epochs": 4, "width": 8, "blocks": 1}


def analysis_options(cpu: bool) -> dict:
    """Stage options; on a CPU sized to finish in a few minutes on two cores."""
    if not cpu:
        return {"samples_per_image": 8, "n_pairs": 3, "render_steps": 256, "render_batch_size": 256,
                "patch_cells": 16, "max_patch_images": 200}
    return {"samples_per_image": 2, "n_pairs": 3, "grid_size": 20, "grid_sizes": (20,), "layout_epochs": 200,
            "filter_top_n": 400, "render_steps": 64, "patch_cells": 12, "n_random": 4,
            "max_patch_images": 64, "min_count": 2, "n_examples": 2}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    parser.add_argument("--out", default="reports/cifar10")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--blocks", type=int, default=None)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--layer", default="model.layer3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--from-run", default=None, help="only rebuild RESULTS.md of this finished run directory")
    parser.add_argument("--note", default="", help="with --from-run: a line added under the run details")
    args = parser.parse_args(argv)
    if args.from_run:
        return rebuild(Path(args.from_run), args.note)
    cpu = args.device == "cpu"
    for key, value in (CPU_DEFAULTS if cpu else GPU_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import pytorch_lightning as pl

    from debugatlas.lightning import AtlasCallback, ClassifierModule
    from debugatlas.models import CifarResNet

    out = Path(args.out)
    # analyze() replaces the run directory when it writes it, so the log lives beside it until the end.
    log_path = out.parent / f".{out.name}.run.log"
    log = setup_logging(log_path)
    log.info("command: %s", command_line())
    started = time.perf_counter()
    t0 = time.perf_counter()
    train, val = cifar10_split(args)
    load_s = time.perf_counter() - t0
    log.info("data: %d train, %d val images (%.1f s)", len(train), len(val), load_s)

    pl.seed_everything(args.seed, verbose=False)
    model = CifarResNet(10, width=args.width, blocks=args.blocks)
    module = ClassifierModule(model, lr=args.lr)
    options = analysis_options(cpu)
    callback = AtlasCallback(args.layer, pairs="auto", every_n_epochs=args.epochs, dirpath=out, subdir="",
                             seed=args.seed, options=options)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs:
        trainer = pl.Trainer(max_epochs=args.epochs, accelerator="gpu" if args.device == "cuda" else "cpu",
                             devices=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, default_root_dir=logs,
                             num_sanity_val_steps=0)
        trainer.fit(module, DataLoader(train, batch_size=128, shuffle=True,
                                       generator=torch.Generator().manual_seed(args.seed)),
                    DataLoader(val, batch_size=256))
    fit_s = time.perf_counter() - t0
    result = callback.last_result
    if result is None:
        log.error("no analysis was run")
        return 1
    torch.save(model.state_dict(), out / "model.pt")
    log.info("accuracy %.3f; pairs %s", result.summary["accuracy"],
             [(p["a"], p["b"]) for p in result.summary["pairs"]])
    sizes = (f"{len(train)} training images, {len(val)} validation images analysed, "
             f"CifarResNet(width={args.width}, blocks={args.blocks}), {args.epochs} epochs, Adam lr={args.lr}")
    run = [f"- Command: `{command_line()}`", f"- Device: {device_name(args.device)}",
           f"- Data loading {load_s:.1f} s; training + analysis (Trainer.fit) {fit_s:.1f} s; "
           f"script total {time.perf_counter() - started:.1f} s"]
    write_results(out, result.summary, cpu, f"{sizes}. Layer `{args.layer}`; analysis at the last epoch by "
                  "`AtlasCallback`.", run)
    log.info("wrote %s", out / "RESULTS.md")
    shutil.copyfile(log_path, out / "run.log")
    return 0


def write_results(out: Path, summary: dict, cpu: bool, setup: str, run: list[str]) -> None:
    """RESULTS.md of a finished run directory `out` (its summary.json and saved suites)."""
    options = summary["config"]
    reduced = "**Reduced CPU run** (no GPU on this machine): " if cpu else ""
    lines = [
        "# CIFAR-10: the most confused pairs", "",
        f"{reduced}{setup}", "",
        *run,
        f"- Validation accuracy (analysed images): {100 * summary['accuracy']:.1f} %",
        f"- Sampled activation vectors: {summary['num_samples']}",
        f"- Analysis options (summary.json `config`): `{json.dumps(options)}`", "",
        "Flip rate: share of correctly classified images of A that the patch turns into B. Static = "
        "one fixed corner and size; dynamic = best of four corners × sizes per image; random = mean "
        "over seeded positions. Controls (same geometry and placement): a random-noise patch and a natural "
        "crop from images of B. 'best patch' = highest flip rate among the kept patches (at most 10, "
        "ranked by flip rate above the stronger control under random placement).", "",
        "## Pairs", "", pair_table(summary, candidate_counts(out, summary)),
        "## Stage timings (analysis)", "", timings_table(summary["timings_s"]),
        "## Not shown", "",
        "- One seed, one run; flip rates on at most "
        f"{options.get('max_patch_images', 200)} images of A per pair have sampling error of several points.",
        "- The reduced CPU model is far from a converged ResNet-20; its confusions are those of a weak model."
        if cpu else "- One architecture and one layer.", "",
    ]
    (out / "RESULTS.md").write_text("\n".join(lines))


def rebuild(run_dir: Path, note: str) -> int:
    """`--from-run`: rewrite RESULTS.md of a run directory from its summary.json and run.log.

    The device and training details are not in summary.json; pass them in `note`.
    """
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        print(f"error: {summary_path} does not exist. HINT: pass the run directory the callback wrote "
              "(it holds summary.json and suite/).", file=sys.stderr)
        return 2
    summary = json.loads(summary_path.read_text())
    log = run_dir / "run.log"
    commands = [line.split("command: ", 1)[1] for line in log.read_text().splitlines()
                if "command: " in line] if log.is_file() else []
    run = [f"- Command: `{c}`" for c in commands[:1]] + [f"- RESULTS.md rebuilt from the run directory: `{command_line()}`"]
    if note:
        run.append(f"- {note}")
    write_results(run_dir, summary, False, f"Layer `{summary['layer']}`; {summary['num_images']} validation images "
                  "analysed at the last epoch by `AtlasCallback`.", run)
    print(f"wrote {run_dir / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
