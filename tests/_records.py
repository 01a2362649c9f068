"""Complete summary.json dicts for tests that need a run record with chosen numbers.

Every field the run record requires is filled with a plain default; the caller sets the ones a
test is about.
"""
from __future__ import annotations

from debugatlas.artifacts.summary import patch_rows


def patch_row(pid: str, rate, n: int = 40, placement: str = "static", verdict=None, ci=None, **more) -> dict:
    row = {"id": pid, "cell": [1, 2], "file": f"patches/{pid}.png", "target": "b", "size_frac": 0.25,
           "placement": placement, "n_images": n, "flip_rate": rate, "noise_flip_rate": 0.0,
           "natural_flip_rate": 0.05, "source": "icon", "resize": False, "best_flip_rate": rate,
           "p_b_before": 0.1, "p_b_after": 0.5, "verdict": verdict, "flip_rate_ci": ci, "p_value": None}
    row.update(more)
    return row


def finding(pid: str, rate, ci, n: int = 40, placement: str = "static", **more) -> dict:
    said = "an unrecorded share" if rate is None else f"{rate:.0%}"
    entry = {"cell": [1, 2], "statement": f"Pasting {pid} makes the model say b in {said} of them.",
             "patch": pid, "source": "icon", "placement": placement, "n_images": n, "flip_rate": rate,
             "flip_rate_ci": ci, "p_value": 0.001, "noise_flip_rate": 0.0, "natural_flip_rate": 0.05,
             "exemplar_ids": [3], "icon": "icons/x.png", "confirmed_sources": ["icon"], "real_crops_tested": 0,
             "synthesized_only": True, "suspected_shortcut": False, "shortcut_evidence": None,
             "patch_file": f"suite/pair0/patches/{pid}.png"}
    entry.update(more)
    return entry


def pair(a: str, b: str, confused: int = 0, patches=(), findings=(), **more) -> dict:
    entry = {"a": a, "b": b, "kind": "confused", "confused": confused, "confusing_cells": [],
             "findings": list(findings), "patches": list(patches),
             "screening": {"n_screened": 0, "seconds": 0.0, "n_candidates": 0}, "notes": []}
    entry.update(more)
    return entry


def run(pairs, *, classes=("a", "b", "c"), accuracy: float = 0.9, num_images: int = 100,
        confusion_matrix=None, **more) -> dict:
    k = len(classes)
    summary = {"schema_version": 1, "layer": "layer3", "num_samples": 100, "num_images": num_images,
               "accuracy": accuracy, "classes": list(classes),
               "confusion_matrix": confusion_matrix if confusion_matrix is not None else [[0] * k] * k,
               "pairs": list(pairs), "timings_s": {"total": 1.0}, "config": {"seed": 0, "grid_size": 20},
               "versions": {"debugatlas": "test"}, "notes": []}
    summary.update(more)
    return summary


def suite_baseline(suite, classes, **top) -> dict:
    """A run record whose one pair holds the patch rows of `suite` (as `analyze()` writes them)."""
    return run([pair(suite.a, suite.b, patches=[r.to_dict() for r in patch_rows(suite, "patches/")])], classes=classes, **top)


def complete(summary: dict) -> dict:
    """`summary` with every field the run record requires that it lacks filled with a default
    (the defaults of `patch_row`, `finding`, `pair` and `run`); the fields it has are kept."""
    pairs = []
    for p in summary.get("pairs", []):
        p = dict(pair(p["a"], p["b"]), **p)
        p["patches"] = [dict(patch_row(r.get("id", f"p{k}"), r.get("flip_rate")), **r)
                        for k, r in enumerate(p["patches"])]
        p["findings"] = [dict(finding(f.get("patch", f"p{k}"), f.get("flip_rate"), f.get("flip_rate_ci")), **f)
                         for k, f in enumerate(p["findings"])]
        p["confusing_cells"] = [dict({"cell": [0, 0], "score": 0.0, "count": 1, "count_a": 1, "attribution_a": 0.0,
                                      "attribution_b": 0.0, "exemplar_ids": [], "icon": None}, **c)
                                for c in p["confusing_cells"]]
        pairs.append(p)
    classes = summary.get("classes", ("a", "b", "c"))
    out = run(pairs, classes=classes)
    out.update({k: v for k, v in summary.items() if k != "pairs"})
    return out
