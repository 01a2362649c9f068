"""Peak resident memory of capturing many vectors: on-disk store vs in memory, side by side.

Each mode runs in its own child process (this script with --mode), which feeds random
[batch, 1, dim] float16 "layer outputs" through `ActivationRecorder.commit` until `--n` vectors
are kept (cap = n), then calls `result()` and reads one row; the child reports its own peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and the parent prints both.

    .venv/bin/python experiments/bench_memory.py [--n 1000000] [--dim 512] [--batch 1024]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def child(args) -> None:
    import torch

    from debugatlas.capture import ActivationRecorder

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = tempfile.mkdtemp(prefix="bench-memory-") if args.mode == "disk" else None
    rec = ActivationRecorder("x", cap=args.n, seed=0, store_dir=store,
                             disk_threshold_bytes=0 if args.mode == "disk" else None)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for first in range(0, args.n, args.batch):
        b = min(args.batch, args.n - first)
        rec._pending = (torch.randn(b, 1, args.dim, generator=gen).to(torch.float16),
                        torch.zeros(b, 1, 2, dtype=torch.long))
        rec.commit(torch.arange(first, first + b), torch.zeros(b, dtype=torch.long))
    acts = rec.result()
    _ = acts.vectors[len(acts) // 2].float().sum()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rec.close()
    print(json.dumps({"mode": args.mode, "n": len(acts), "peak_mib": peak / 1024, "import_mib": base / 1024,
                      "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--mode", choices=("disk", "memory"))
    args = parser.parse_args()
    if args.mode:
        return child(args)
    rows = {}
    for mode in ("disk", "memory"):
        cmd = [sys.executable, __file__, "--mode", mode, "--n", str(args.n), "--dim", str(args.dim),
               "--batch", str(args.batch)]
        rows[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        r = rows[mode]
        print(f"{mode:6s}: {r['n']:,} x {args.dim} float16 vectors, peak RSS {r['peak_mib']:8.0f} MiB "
              f"(after imports {r['import_mib']:.0f} MiB), {r['seconds']:.1f} s", flush=True)
    data_mib = args.n * args.dim * 2 / 2**20
    print(f"vector data {data_mib:.0f} MiB; peak RSS memory/disk = {rows['memory']['peak_mib'] / rows['disk']['peak_mib']:.2f}x")


if __name__ == "__main__":
    main()
