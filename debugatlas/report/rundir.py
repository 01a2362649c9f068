"""Write a run directory: summary.json, cells.csv, figures, icons, crops, patches, index.html.

Everything is written into a staging folder beside `out_dir` and swapped in at the end, so an
error never leaves a half-written run over an earlier good one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[C, H, W] in [0, 1] (C = 1 or 3) or [H, W, 3] uint8 -> [H, W, 3] uint8."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)
    arr = torch.as_tensor(image).detach().float().cpu().clamp(0, 1).numpy()
    if arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    return (arr * 255 + 0.5).astype(np.uint8)


def save_png(path: Path, image, scale: int = 1) -> None:
    """Save an image (see `to_uint8`) as PNG, upscaled by `scale` with nearest neighbour."""
    from PIL import Image

    arr = to_uint8(image)
    if scale > 1:
        arr = arr.repeat(scale, 0).repeat(scale, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _heat_overlay(image: torch.Tensor, heat: torch.Tensor) -> np.ndarray:
    """Image in grey with positive attribution in red and negative in blue."""
    grey = to_uint8(image).astype(np.float32).mean(-1, keepdims=True) / 255.0
    h = heat.detach().float().cpu().numpy()
    scale = np.abs(h).max() or 1.0
    pos, neg = np.clip(h / scale, 0, 1)[..., None], np.clip(-h / scale, 0, 1)[..., None]
    base = 0.35 + 0.5 * grey
    rgb = np.concatenate([base + pos * 0.65, base * (1 - pos) , base * (1 - pos) + neg * 0.65], -1)
    rgb[..., :2] *= (1 - neg)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _class_colours(atlas, class_names: list[str]) -> np.ndarray:
    """[G, G, 4] RGBA indexed [row j, column i]: the cell's most frequent class, alpha by log count."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    g, counts = atlas.grid_size, atlas.counts
    top = atlas.class_histogram.argmax(-1)
    alpha = np.log1p(counts) / max(float(np.log1p(counts.max())), 1e-9)
    rgba = np.ones((g, g, 4))
    for i, j in zip(*np.nonzero(counts)):
        rgba[j, i, :3] = cmap(int(top[i, j]) % cmap.N)[:3]
        rgba[j, i, 3] = 0.25 + 0.75 * alpha[i, j]
    return rgba


def grid_image(atlas, class_names: list[str], cell_px: int = 8) -> np.ndarray:
    """The atlas as an exact G x G picture (row 0 on top), colours blended over white, uint8."""
    rgba = _class_colours(atlas, class_names)
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    arr = (rgb * 255 + 0.5).astype(np.uint8)
    return arr.repeat(cell_px, 0).repeat(cell_px, 1)


def atlas_figure(path: Path, atlas, class_names: list[str], title: str) -> None:
    """A matplotlib figure of an atlas (row 0 on top, like the icon atlas) with a class legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = atlas.grid_size
    cmap = matplotlib.colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    top = atlas.class_histogram.argmax(-1)
    fig, ax = plt.subplots(figsize=(5, 5.4), dpi=100)
    ax.imshow(_class_colours(atlas, class_names), origin="upper", interpolation="nearest", extent=(0, g, g, 0))
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
    present = np.unique(top[atlas.counts > 0])
    handles = [plt.Line2D([], [], marker="s", ls="", color=cmap(int(k) % cmap.N), label=class_names[int(k)])
               for k in present]
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=5,
              frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _cells_table(result) -> "Any":
    import pandas as pd

    rows = []
    for g, atlas in result.atlases.items():
        for i, j in atlas.valid_cells():
            row: dict[str, Any] = {"grid_size": g, "i": i, "j": j, "count": int(atlas.counts[i, j])}
            hist = atlas.class_histogram[i, j]
            row["top_class"] = result.class_names[int(hist.argmax())]
            for k, name in enumerate(result.class_names):
                row[f"n_{name}"] = int(hist[k])
            for k, name in enumerate(result.class_names):
                row[f"attr_{name}"] = float(atlas.mean_attribution[i, j, k])
            ex = atlas.exemplars.get((i, j), [])
            row["exemplar_ids"] = " ".join(str(int(result.activations.image_ids[s])) for s in ex)
            rows.append(row)
    return pd.DataFrame(rows)


def _atlas_cells(atlas, result, exemplar_files: dict) -> list[dict]:
    out = []
    names = result.class_names
    for i, j in atlas.valid_cells():
        hist = atlas.class_histogram[i, j]
        out.append({
            "cell": [i, j], "count": int(atlas.counts[i, j]),
            "classes": {names[k]: int(hist[k]) for k in np.nonzero(hist)[0]},
            "attribution": {names[k]: round(float(atlas.mean_attribution[i, j, k]), 4) for k in range(len(names))},
            "exemplars": exemplar_files.get((i, j), []),
        })
    return out


def _write_files(stage: Path, result, dataset, model, title, data_description) -> dict:
    """Write every file of the run into `stage`; return the report data for index.html."""
    from ..pipeline.stages import icon_path, suite_dir

    names = result.class_names
    main = result.atlases[result.config.grid_size]
    (stage / "summary.json").write_text(json.dumps(result.summary, indent=2))
    _cells_table(result).to_csv(stage / "cells.csv", index=False)
    icons_written = set()
    for finding in result.pairs:
        for cell, icon in finding.icons.items():
            if cell not in icons_written:
                save_png(stage / icon_path(cell), icon, scale=4)
                icons_written.add(cell)
    if result.icon_atlas is not None:
        save_png(stage / "icon_atlas.png", result.icon_atlas)
    from ..core.datasets import load_images

    exemplar_files: dict = {}
    for (i, j), samples in main.exemplars.items():
        ids = result.activations.image_ids[samples[:4]].tolist()
        files = []
        for image_id in ids:
            rel = f"exemplars/image_{image_id}.png"
            if not (stage / rel).exists():
                save_png(stage / rel, load_images(dataset, [image_id])[0], scale=3)
            files.append(rel)
        exemplar_files[(i, j)] = files
    atlases = []
    for g, atlas in result.atlases.items():
        atlas_figure(stage / f"atlas_{g}.png", atlas, names, f"Activation atlas, {g}×{g} grid")
        save_png(stage / f"atlas_{g}_grid.png", grid_image(atlas, names, max(2, 480 // g)))
        atlases.append({"grid_size": g, "image": f"atlas_{g}.png", "grid_image": f"atlas_{g}_grid.png",
                        "cells": _atlas_cells(atlas, result, exemplar_files if g == main.grid_size else {})})
    pairs = []
    for k, finding in enumerate(result.pairs):
        tag = f"pair{k}"
        entry: dict[str, Any] = {"a": finding.a_name, "b": finding.b_name, "confused": finding.confused,
                                 "notes": finding.notes}
        for side, atlas, label in (("filtered_a", finding.filtered_a, finding.a_name),
                                   ("filtered_b", finding.filtered_b, finding.b_name),
                                   ("comparison", finding.comparison, None)):
            if atlas is None:
                continue
            ttl = (f"Class filter: {label}" if label is not None
                   else f"{finding.b_name}  ←  attribution  →  {finding.a_name}")
            atlas_figure(stage / f"{tag}_{side}.png", atlas, names, ttl)
            entry[side] = f"{tag}_{side}.png"
            if side in finding.icon_atlases:
                save_png(stage / f"{tag}_{side}_icons.png", finding.icon_atlases[side])
                entry[side] = f"{tag}_{side}_icons.png"
        cells = []
        for c in finding.cells:
            crops = []
            for n, crop in enumerate(finding.exemplar_crops.get(c.cell, [])[:6]):
                rel = f"exemplars/{tag}_cell_{c.cell[0]:02d}_{c.cell[1]:02d}_{n}.png"
                save_png(stage / rel, crop, scale=6)
                crops.append(rel)
            cells.append({"cell": list(c.cell), "score": c.score, "count": c.count, "count_a": c.count_a,
                          "attribution_a": c.attribution_a, "attribution_b": c.attribution_b,
                          "icon": icon_path(c.cell) if c.cell in finding.icons else None, "exemplars": crops})
        entry["cells"] = cells
        entry["misclassified"] = []
        for ex in finding.examples:
            img_rel, heat_rel = f"examples/{tag}_{ex['id']}.png", f"examples/{tag}_{ex['id']}_attr.png"
            save_png(stage / img_rel, ex["image"], scale=4)
            save_png(stage / heat_rel, _heat_overlay(ex["image"], ex["heatmap"]), scale=4)
            entry["misclassified"].append({"id": ex["id"], "image": img_rel, "heatmap": heat_rel, "p_b": ex["p_b"]})
        if finding.patches is not None:  # the page reads the pair's `patches` rows from the summary
            finding.patches.save(stage / suite_dir(k))
        pairs.append(entry)
    suite = None
    if any(f.patches is not None for f in result.pairs):
        suite = {"dir": "suite", "check_command": check_command(result)}
    from ..confusion import SCORE_DESCRIPTION

    return {"title": title or "debugatlas report", "model": type(model).__name__,
            "data": data_description or type(dataset).__name__, "seed": result.summary["config"]["seed"],
            "score_description": SCORE_DESCRIPTION, "atlases": atlases, "pairs": pairs, "suite": suite,
            "icon_atlas": "icon_atlas.png" if result.icon_atlas is not None else None}


def check_command(result) -> str:
    """The `debugatlas check` command line that gates a checkpoint on this run's suite."""
    spec = result.summary["config"].get("model_spec") or "pkg.module:factory"
    return (f"debugatlas check --suite suite --model {spec} --weights NEW_CHECKPOINT.pt "
            "--data VALIDATION_IMAGEFOLDER --baseline summary.json --tolerance 0.05 --junit check.xml")


def write_run(out_dir: Path, result, dataset, model, title: str | None = None,
              data_description: str | None = None) -> Path:
    """Write the run into `out_dir` atomically (staging folder, then swap); return `out_dir`."""
    from . import write_report

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        data = _write_files(stage, result, dataset, model, title, data_description)
        write_report(stage, result.summary, data)
        old = None
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            out_dir.rename(old)
        stage.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out_dir
