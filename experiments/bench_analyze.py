"""End-to-end `analyze()` time per stage: default options against the options of the earlier behaviour.

Default: one layout for every view, only the main grid's cells rendered, batched patch tests.
Earlier behaviour ("old"): ``filtered_layout="own"`` (a UMAP per class-filtered and comparison
atlas, whose own cells are then inverted too), ``patch_batching="per_candidate"``,
``layout_backend="umap-learn"`` (what "auto" chose below 4,096 vectors on a GPU, 50,000 on a CPU),
``choosing_precision="float32"`` (screening and ranking at the model's own precision).
Both variants analyse the same trained model on the same images, each in a fresh Python process
(as a user's run or a CI job pays import and compilation costs), one after the other in one run.
The script prints `summary["timings_s"]` of each, the wall time of the `analyze()` call and of the
whole process, the ratio old / default, and whether both found the same top cells; it writes the
same text to ``reports/bench/analyze_<case>.txt``.

Cases:
  digits      the demo's digits CNN (`debugatlas.demo`), trained here on the CPU, analysed on its
              539 validation images with the demo's options (1,078 vectors);
  cifar       CIFAR-10 (``--images`` validation images, 3,000 by default) with `CifarResNet(width=16)`
              trained briefly on ``--train-images`` others, default analysis options;
  cifar-vgg   as "cifar" with `CifarVGG` (below: 64-512 channels, about five times the ResNet-20's
              multiply-adds per image), analysed at layer2;
  cifar-cuda  as "cifar" with 2,000 images, trained and analysed on ``--device cuda``.

    .venv/bin/python experiments/bench_analyze.py --case digits
    .venv/bin/python experiments/bench_analyze.py --case cifar [--images 3000] [--train-seconds 120]
    .venv/bin/python experiments/bench_analyze.py --case cifar-vgg --train-images 5000 --train-seconds 120 \
        [--model-file /tmp/vgg.pt]   # the same trained model in every run
    python experiments/bench_analyze.py --case cifar-cuda --device cuda   # experiments/run_gpu.sh
    [--variants default old] [--archive ../shared/data/cifar10-train.tgz] [--layer layer2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# umap-learn: what backend="auto" chose before for fewer than 4,096 vectors on a GPU, 50,000 on a CPU
OLD_OPTIONS = {"filtered_layout": "own", "patch_batching": "per_candidate", "layout_backend": "umap-learn",
               "choosing_precision": "float32"}
STAGES = ("capture", "attribution", "layout", "render", "patches", "patches.screening", "patches.synthesis",
          "patches.selection", "patches.confirmation", "total")
# converged cases: weights from experiments/train_converged.py (--model-file is required)
CONVERGED = {"cifar-vgg-converged": "vgg", "cifar-resnet-converged": "resnet20"}
ROOT = Path(__file__).resolve().parent.parent


def _vgg(widths: tuple[int, int, int, int] = (64, 128, 256, 512)):
    """`CifarVGG`: a VGG-style net for 32 px images, two conv-BN-ReLU per stage at `widths` channels
    (64, 128, 256, 512 by default), max-pooled between stages (layer1 32 px, layer2 16 px, layer3 8 px,
    layer4 4 px)."""
    from torch import nn

    class CifarVGG(nn.Module):
        def __init__(self, num_classes: int = 10) -> None:
            super().__init__()

            def stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
                mods = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
                return nn.Sequential(*mods, *([nn.MaxPool2d(2)] if pool else []))

            w1, w2, w3, w4 = widths
            self.layer1 = stage(3, w1, False)
            self.layer2 = stage(w1, w2, False)
            self.layer3 = stage(w2, w3, False)
            self.layer4 = stage(w3, w4, False)
            self.down = nn.MaxPool2d(2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(w4, num_classes)

        def forward(self, x):
            x = self.down(self.layer1(x))
            x = self.down(self.layer2(x))
            x = self.down(self.layer3(x))
            return self.fc(self.pool(self.layer4(x)).flatten(1))

    return CifarVGG()


def converged_model(name: str):
    """The untrained net of a converged case: "vgg" (`CifarVGG` at 32, 64, 128, 256 channels) or
    "resnet20" (`CifarResNet(width=16)`); `experiments/train_converged.py` trains them."""
    if name == "vgg":
        return _vgg((32, 64, 128, 256))
    from debugatlas.models import CifarResNet

    return CifarResNet(width=16)


def _dataset(case: str, args):
    """(train, val) of the case, the same in the parent and in every child process."""
    if case == "digits":
        from debugatlas.data import digits
        from debugatlas.demo import IMAGE_SIZE

        return digits(size=IMAGE_SIZE, seed=0)
    from debugatlas.data import folder_split, unpack_cifar10

    root = unpack_cifar10(args.archive)
    return folder_split(root, n_train=args.train_images, n_val=args.images, seed=0)


def _model(case: str):
    if case == "digits":
        from debugatlas.demo import digits_cnn

        return digits_cnn()
    if case in CONVERGED:
        return converged_model(CONVERGED[case])
    if case == "cifar-vgg":
        return _vgg()
    from debugatlas.models import CifarResNet

    return CifarResNet(width=16)


def _options(case: str, args) -> tuple[str, dict]:
    """(layer, analysis options) of the case."""
    if case == "digits":
        from debugatlas.demo import demo_options

        return args.layer or "layer3", demo_options()
    return args.layer or "layer2", {}


def _child(args) -> None:
    """One analyze() run in this fresh process; prints one JSON line."""
    import torch

    start = time.perf_counter()
    _, val = _dataset(args.case, args)
    model = _model(args.case)
    model.load_state_dict(torch.load(args.weights, map_location="cpu"))
    model.to(args.device).eval()
    layer, options = _options(args.case, args)
    missing = _missing_options()
    extra = {k: v for k, v in OLD_OPTIONS.items() if k not in missing} if args.child == "old" else {}
    from debugatlas import analyze

    w_full = _forward_seconds(model, val, args.device)
    ready = time.perf_counter()
    pairs = [tuple(p.split(",")) for p in args.pairs] if args.pairs else "auto"
    with tempfile.TemporaryDirectory() as out:
        result = analyze(model, val, layer, pairs=pairs, out_dir=out, seed=0, device=args.device,
                         **options, **extra)
    done = time.perf_counter()
    summary = result.summary
    import debugatlas

    timings = dict(summary.get("timings_s", {}))
    # sub-stage seconds: from cost_w x W where the package records them
    w_run = (summary.get("w_s") or {}).get("seconds")
    for k, v in (summary.get("cost_w") or {}).items():
        if k not in timings and w_run:
            timings[k] = v * w_run
    top = [[list(c["cell"]) for c in p.get("confusing_cells", [])[:3]] for p in summary["pairs"]]
    findings = [[f.get("statement", "") for f in p.get("findings", [])] for p in summary["pairs"]]
    print(json.dumps({"timings_s": timings, "analyze_s": done - ready, "w_s": w_full,
                      "package": str(Path(debugatlas.__file__).parent), "forwards": summary.get("forwards"),
                      "setup_s": ready - start, "pairs": [[p["a"], p["b"]] for p in summary["pairs"]],
                      "top_cells": top, "findings": findings, "num_samples": summary.get("num_samples"),
                      "accuracy": summary.get("accuracy")}))


def _forward_seconds(model, dataset, device: str, batch_size: int = 128) -> float:
    """W: one float32 forward over every analysed image (batch 128, as the analysis), after a warm-up."""
    import torch

    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        model(images[:batch_size].to(device))
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size].to(device))
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


def _worktree(ref: str) -> Path:
    """A checkout of `ref` under /tmp (made once), whose `debugatlas` package the 'ref' variant imports."""
    sha = subprocess.run(["git", "rev-parse", ref], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"debugatlas-ref-{sha[:12]}"
    if not (path / "debugatlas").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return path


def _missing_options() -> list[str]:
    from dataclasses import fields

    from debugatlas.pipeline.config import AnalysisConfig

    names = {f.name for f in fields(AnalysisConfig)}
    return [k for k in OLD_OPTIONS if k not in names]


def _train(args, path: Path) -> str:
    import torch

    from debugatlas.models import train_classifier

    start = time.perf_counter()
    train, _ = _dataset(args.case, args)
    model = _model(args.case)
    epochs, lr = (8, 3e-3) if args.case == "digits" else (args.epochs, 2e-3)
    history: list = []
    train_classifier(model, train, epochs=epochs, lr=lr, batch_size=32 if args.case == "digits" else 64,
                     seed=0, device=args.device, max_seconds=args.train_seconds, history=history)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    last = history[-1] if history else {}
    return (f"trained {type(model).__name__} on {len(train)} images: {len(history)} epoch(s), "
            f"loss {last.get('loss', float('nan')):.3f}, {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["digits", "cifar", "cifar-vgg", "cifar-cuda", *CONVERGED], default="digits")
    parser.add_argument("--pair", dest="pairs", action="append", default=[],
                        help="A,B class names to study (repeatable; default: pairs='auto')")
    parser.add_argument("--baseline-ref", default=None,
                        help="also run the 'default' variant on the package as of this git commit (a worktree "
                             "under /tmp), side by side: today's code against the earlier one")
    parser.add_argument("--device", default=None, help="cpu or cuda (cifar-cuda: cuda)")
    parser.add_argument("--images", type=int, default=None, help="CIFAR-10 images analysed (3,000; cuda 2,000)")
    parser.add_argument("--train-images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=None, help="stop training after this epoch")
    parser.add_argument("--layer", default=None, help="digits: layer3; CIFAR: layer2")
    parser.add_argument("--archive", default=str(ROOT.parent / "shared" / "data" / "cifar10-train.tgz"))
    parser.add_argument("--variants", nargs="+", default=["default", "old"], choices=["default", "old", "ref"])
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per variant")
    parser.add_argument("--out", default=None, help="report file (default reports/bench/analyze_<case>.txt)")
    parser.add_argument("--model-file", default=None,
                        help="keep the trained weights here and reuse them when the file exists: a brief "
                             "CPU training differs from run to run, and so does the analysis's work")
    parser.add_argument("--child", choices=["default", "old", "ref"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = args.device or ("cuda" if args.case == "cifar-cuda" else "cpu")
    args.images = args.images or (2000 if args.case == "cifar-cuda" else 3000)
    if args.child:
        return _child(args)

    import platform

    import torch

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    variants = list(dict.fromkeys(args.variants))
    missing = _missing_options()
    if "old" in variants and missing:
        say(f"NOTE: AnalysisConfig has no option(s) {missing} yet: the 'old' variant runs without them, "
            "so it reproduces the earlier behaviour only in part.")
    n_images = 539 if args.case == "digits" else args.images
    say(f"bench_analyze: case {args.case}, device {args.device}, {n_images} images analysed; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}" + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""))
    say(f"old options: { {k: v for k, v in OLD_OPTIONS.items() if k not in missing} }")
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.model_file) if args.model_file else Path(tmp) / "model.pt"
        if args.model_file and weights.is_file():
            say(f"model: {weights} (trained by an earlier run with the same --model-file)")
        elif args.case in CONVERGED:
            parser.error(f"--case {args.case} needs --model-file of a converged model: run "
                         f"experiments/train_converged.py --model {CONVERGED[args.case]} --out FILE first")
        else:
            weights.parent.mkdir(parents=True, exist_ok=True)
            say(_train(args, weights))
        if args.baseline_ref and "ref" not in variants:
            variants.append("ref")
        for variant in variants:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--weights", str(weights),
                   "--case", args.case, "--device", args.device, "--images", str(args.images),
                   "--train-images", str(args.train_images), "--archive", args.archive]
            if args.layer:
                cmd += ["--layer", args.layer]
            for pair in args.pairs:
                cmd += ["--pair", pair]
            env = dict(os.environ)
            if variant == "ref":
                env["PYTHONPATH"] = str(_worktree(args.baseline_ref))
            start = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
            except subprocess.TimeoutExpired:
                say(f"{variant}: not finished after {args.timeout:.0f} s (stopped)")
                continue
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                say(f"{variant}: failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                continue
            runs[variant] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": wall}
            say(f"{variant}: done in {wall:.0f} s")
    say()
    names = list(runs)
    for n in names:
        say(f"{n}: package {runs[n].get('package')}; W = {runs[n].get('w_s', float('nan')):.2f} s "
            "(one float32 forward over the analysed images, batch 128, in the same process)")
    say(f"{'seconds (W)':22s}" + "".join(f"{n:>18s}" for n in names) + ("   other/default" if len(names) == 2 else ""))
    rows = [(s, lambda r, s=s: r["timings_s"].get(s)) for s in STAGES]
    rows += [("analyze() call", lambda r: r["analyze_s"]), ("whole process", lambda r: r["process_s"])]
    for label, get in rows:
        values = [get(runs[n]) for n in names]
        ws = [runs[n].get("w_s") for n in names]
        cells = "".join(f"{v:9.1f} ({v / w:5.1f} W)" if isinstance(v, (int, float)) and w else f"{'-':>18s}"
                        for v, w in zip(values, ws))
        ratio = ""
        if len(values) == 2 and all(isinstance(v, (int, float)) for v in values) and values[0] > 0:
            ratio = f"{values[1] / values[0]:14.2f}x"
        say(f"{label:22s}{cells}{ratio}")
    for name in names:
        r = runs[name]
        say(f"{name}: {r['num_samples']} vectors, accuracy {r['accuracy']:.3f}, pairs {r['pairs']}, "
            f"top cells {r['top_cells']}")
        for pair, statements in zip(r["pairs"], r["findings"]):
            for s in statements[:3]:
                say(f"  {pair[0]}->{pair[1]}: {s}")
    if len(names) == 2:
        same = runs[names[0]]["pairs"] == runs[names[1]]["pairs"]
        say(f"same pairs in both: {same}; same top cells: {runs[names[0]]['top_cells'] == runs[names[1]]['top_cells']}")
    out = Path(args.out) if args.out else ROOT / "reports" / "bench" / f"analyze_{args.case.replace('-', '_')}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
