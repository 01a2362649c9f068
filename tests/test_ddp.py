"""AtlasCallback under DDP on CPU (gloo, 2 processes) gives the same atlas as 1 process; errors do not hang.

Lightning's "ddp" strategy starts rank 1 by running the launching script again, so the trainer
runs in `tests/ddp_run.py` in a subprocess; the single-process reference runs the same function here.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from debugatlas.capture import ActivationSet
from debugatlas.capture import merge_shards

SCRIPT = Path(__file__).with_name("ddp_run.py")


def _run_two(out: Path, *extra: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(out), "--devices", "2", *extra],
                          capture_output=True, text=True, timeout=timeout, cwd=SCRIPT.parent.parent)


def _summary(path: Path) -> dict:
    s = json.loads((path / "summary.json").read_text())
    cells = [(c["cell"], c["count"]) for p in s["pairs"] for c in p.get("confusing_cells", [])]
    return {"num_samples": s["num_samples"], "num_images": s["num_images"], "accuracy": s["accuracy"],
            "confusion": s["confusion_matrix"], "pairs": [(p["a"], p["b"], p["confused"]) for p in s["pairs"]],
            "cells": cells}


@pytest.mark.slow
def test_two_processes_give_the_same_atlas_as_one(tmp_path):
    # 539 validation images x 3 samples = 1,617 vectors: each rank keeps its 810 (below the cap),
    # the merged set is capped to 1,000 with the seed, as one process's reservoir does.
    sys.path.insert(0, str(SCRIPT.parent))
    from ddp_run import run

    run(str(tmp_path / "one"), devices=1, cap=1000)
    done = _run_two(tmp_path / "two", "--cap", "1000")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _summary(tmp_path / "one"), _summary(tmp_path / "two")
    assert one["num_samples"] == 1000 and one["num_images"] < 539
    assert two == one


@pytest.mark.slow
def test_rank0_failure_makes_every_rank_raise(tmp_path):
    done = _run_two(tmp_path / "fail", "--fail", timeout=150)
    assert done.returncode != 0
    assert "planted failure" in done.stderr


@pytest.mark.slow
def test_rank0_failure_is_logged_and_every_rank_carries_on_by_default(tmp_path):
    done = _run_two(tmp_path / "lenient", "--fail", "--lenient", timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished") == 2  # both ranks returned from trainer.validate
    assert done.stderr.count("could not analyse epoch 0") == 1 and "planted failure" in done.stderr


def _set(ids, rank_tag, m=2):
    ids = torch.as_tensor(ids).repeat_interleave(m)
    n = len(ids)
    vec = torch.stack([ids.float(), torch.full((n,), float(rank_tag))], 1)
    return ActivationSet(vec, ids, ids % 2, ids % 2, torch.zeros(n, 2, dtype=torch.long), "x", (4, 4), n)


def test_merge_drops_padding_duplicates_and_orders_by_image():
    # DistributedSampler(shuffle=False) over 5 images on 2 ranks: [0, 2, 4] and [1, 3, 0 (padding)]
    merged = merge_shards([_set([0, 2, 4], 0), _set([1, 3, 0], 1)], cap=100)
    assert merged.image_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert merged.vectors[merged.image_ids == 0, 1].tolist() == [0.0, 0.0]  # rank 0's copy kept
    assert merged.num_offered == 10
    capped = merge_shards([_set([0, 2, 4], 0), _set([1, 3, 0], 1)], cap=4, seed=3)
    assert len(capped) == 4 and capped.num_offered == 10
