"""Helpers shared by the experiment scripts: data loading, logging to a file, result tables."""
from __future__ import annotations

import logging
import platform
import shlex
import sys
from pathlib import Path

import torch

ARCHIVE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar10-train.tgz"
CACHE = Path.home() / ".cache" / "debugatlas" / "cifar10"


def command_line() -> str:
    """The exact command that ran this script."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def setup_logging(path: Path) -> logging.Logger:
    """Log to stdout and to `path` (the run log kept next to RESULTS.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("experiment")
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(path, mode="w")):
        handler.setFormatter(fmt)
        log.addHandler(handler)
        logging.getLogger("debugatlas").addHandler(handler)
    logging.getLogger("debugatlas").setLevel(logging.INFO)
    return log


def cifar10_split(args, shortcut=None, poison_val: bool = False):
    """(train, val) from torchvision (`--torchvision-root`) or the ImageFolder archive."""
    from debugatlas.data import folder_split, torchvision_cifar10, unpack_cifar10

    if args.torchvision_root:
        return torchvision_cifar10(args.torchvision_root, args.n_train, args.n_val, args.seed, shortcut, poison_val)
    root = unpack_cifar10(args.archive, args.cache_dir)
    return folder_split(root, args.n_train, args.n_val, args.seed, shortcut, poison_val)


def add_data_args(parser) -> None:
    parser.add_argument("--archive", default=str(ARCHIVE.resolve()), help="cifar10-train.tgz (ImageFolder)")
    parser.add_argument("--cache-dir", default=str(CACHE), help="where the archive is unpacked once")
    parser.add_argument("--torchvision-root", default=None,
                        help="use torchvision.datasets.CIFAR10(root, download=True) instead of the archive")
    parser.add_argument("--n-train", type=int, default=None, help="training images (default: all, or a CPU subset)")
    parser.add_argument("--n-val", type=int, default=None, help="validation images analysed")


def pct(x) -> str:
    if x is None or x != x:
        return "–"
    return f"{100 * float(x):.1f} %"


def best_row(rows: list[dict], placement: str, sources=None) -> dict | None:
    """The kept patch with the highest flip rate under `placement` (optionally of given sources)."""
    rows = [r for r in rows if r["placement"] == placement and (sources is None or r["source"] in sources)
            and r["flip_rate"] is not None]
    return max(rows, key=lambda r: r["flip_rate"], default=None)


def candidate_counts(run_dir: Path, summary: dict) -> list[int]:
    """Candidate cells tried per pair, read from the run directory's saved suites."""
    import json

    from debugatlas.artifacts.paths import SUITE_FILE, suite_dir

    counts = []
    for k in range(len(summary["pairs"])):
        path = Path(run_dir) / suite_dir(k) / SUITE_FILE
        meta = json.loads(path.read_text()).get("metadata", {}) if path.is_file() else {}
        counts.append(len(meta.get("candidate_cells", [])))
    return counts


def interval(row: dict) -> str:
    """"41.0 % [33–49 %]" from a summary.json patch row (flip rate and its 95 % Wilson interval)."""
    ci = row.get("flip_rate_ci")
    if not ci or ci[0] is None:
        return pct(row.get("flip_rate"))
    return f"{pct(row['flip_rate'])} [{100 * ci[0]:.0f}–{100 * ci[1]:.0f} %]"


def pair_table(summary: dict, tried_per_pair: list[int]) -> str:
    """Per pair: its findings' statements, then one table row per placement for the best kept patch,
    measured on the held-out (confirmation) half: flip rate with its interval, both controls, verdict."""
    out = []
    for pair, tried in zip(summary["pairs"], tried_per_pair):
        kept = len({r["id"] for r in pair["patches"]})
        kind = " — near miss (no confusion; closest call)" if pair.get("kind") == "near_miss" else ""
        out.append(f"### {pair['a']} → {pair['b']} ({pair['confused']} of the analysed {pair['a']} images "
                   f"predicted {pair['b']}){kind}\n")
        out.append(f"Candidate cells tried: {tried}; kept patches: {kept}; confusing cells ranked: "
                   f"{len(pair['confusing_cells'])}.\n")
        findings = pair.get("findings") or []
        if findings:
            out += [f"- Finding {k + 1} (cell {f.get('cell')}, {f.get('source')} `{f.get('patch')}`"
                    f"{', suspected shortcut' if f.get('suspected_shortcut') else ''}): {f.get('statement', '')}"
                    for k, f in enumerate(findings)]
        else:
            out.append("- Nothing confirmed: no kept patch beat both controls on the held-out half.")
        out.append("")
        out.append("| placement | best patch | source | held-out images | flip rate [95 % CI] | noise control | "
                   "natural control | verdict |")
        out.append("|---|---|---|---|---|---|---|---|")
        for placement in ("static", "dynamic", "random"):
            rows = [r for r in pair["patches"] if r["placement"] == placement and r["flip_rate"] is not None]
            best = best_row(rows, placement)
            if best is None:
                out.append(f"| {placement} | – | – | 0 | – | – | – | – |")
                continue
            out.append(f"| {placement} | `{best['id']}` | {best['source']} | {best['n_images']} | "
                       f"{interval(best)} | {pct(best['noise_flip_rate'])} | "
                       f"{pct(best['natural_flip_rate'])} | {best.get('verdict', '–')} |")
        out.append("")
    return "\n".join(out)


def timings_table(times: dict) -> str:
    keys = [k for k in times]
    return ("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| "
            + " | ".join(f"{times[k]:.1f} s" for k in keys) + " |\n")
