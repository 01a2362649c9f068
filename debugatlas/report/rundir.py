"""Write a run directory: summary.json, cells.csv, figures, icons, crops, patches, index.html.

Everything is written into a staging folder beside `out_dir` and swapped in at the end, so an
error never leaves a half-written run over an earlier good one. File names come from
`artifacts.paths`; summary.json and cells.csv from `artifacts`; what the page shows beside the run
record is the run's `artifacts.manifest.Manifest`.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np

from ..artifacts import paths
from ..artifacts.atomic import staged_dir
from ..artifacts.cells import write_cells
from ..artifacts.manifest import AtlasCell, AtlasPictures, Example, Manifest, PairPictures
from ..artifacts.summary import write_summary
from ..confusion import SCORE_DESCRIPTION
from ..core.datasets import load_images
from .figures import atlas_figure, grid_image, heat_overlay, save_png


def _atlas_cells(atlas, result, exemplar_files: dict) -> tuple[AtlasCell, ...]:
    out = []
    names = result.class_names
    for i, j in atlas.valid_cells():
        hist = atlas.class_histogram[i, j]
        out.append(AtlasCell(
            cell=(i, j), count=int(atlas.counts[i, j]),
            classes={names[k]: int(hist[k]) for k in np.nonzero(hist)[0]},
            attribution={names[k]: round(float(atlas.mean_attribution[i, j, k]), 4) for k in range(len(names))},
            exemplars=tuple(exemplar_files.get((i, j), ())),
        ))
    return tuple(out)


def _pair_files(stage: Path, k: int, finding, names) -> PairPictures:
    """Write the pictures and the suite of the k-th studied pair; return what was written."""
    views = {}
    for side, atlas, label in (("filtered_a", finding.filtered_a, finding.a_name),
                               ("filtered_b", finding.filtered_b, finding.b_name),
                               ("comparison", finding.comparison, None)):
        if atlas is None:
            continue
        ttl = (f"Class filter: {label}" if label is not None
               else f"{finding.b_name}  ←  attribution  →  {finding.a_name}")
        atlas_figure(stage / paths.view_path(k, side), atlas, names, ttl)
        views[side] = paths.view_path(k, side)
        if side in finding.icon_atlases:
            save_png(stage / paths.view_path(k, side, icons=True), finding.icon_atlases[side])
            views[side] = paths.view_path(k, side, icons=True)
    cell_crops = {c.cell: _crops(stage, finding.exemplar_crops.get(c.cell, [])[:6],
                                 lambda n, cell=c.cell: paths.exemplar_crop_path(k, cell, n)) for c in finding.cells}
    finding_crops = {f.cell: _crops(stage, finding.finding_crops.get(f.cell, []),
                                    lambda n, cell=f.cell: paths.finding_crop_path(k, cell, n)) for f in finding.findings}
    examples = []
    for ex in finding.examples:
        img_rel, heat_rel = paths.example_paths(k, ex["id"])
        save_png(stage / img_rel, ex["image"], scale=4)
        save_png(stage / heat_rel, heat_overlay(ex["image"], ex["heatmap"]), scale=4)
        examples.append(Example(int(ex["id"]), img_rel, heat_rel, float(ex["p_b"])))
    if finding.patches is not None:  # the page reads the pair's `patches` rows from the run record
        finding.patches.save(stage / paths.suite_dir(k))
    return PairPictures(finding.a_name, finding.b_name, cell_crops=cell_crops, finding_crops=finding_crops,
                        misclassified=tuple(examples), **views)


def _crops(stage: Path, crops, path_of) -> tuple[str, ...]:
    files = []
    for n, crop in enumerate(crops):
        rel = path_of(n)
        save_png(stage / rel, crop, scale=6)
        files.append(rel)
    return tuple(files)


def _write_files(stage: Path, result, dataset, model, title, data_description) -> Manifest:
    """Write every file of the run into `stage`; return its manifest for index.html."""
    names = result.class_names
    main = result.atlases[result.config.grid_size]
    write_summary(stage, result.record)
    write_cells(stage, result.atlases, result.activations.image_ids, names)
    icons_written = set()
    for finding in result.pairs:
        for cell, icon in finding.icons.items():
            if cell not in icons_written:
                save_png(stage / paths.icon_path(cell), icon, scale=4)
                icons_written.add(cell)
    if result.icon_atlas is not None:
        save_png(stage / paths.ICON_ATLAS, result.icon_atlas)

    exemplar_files: dict = {}
    for (i, j), samples in main.exemplars.items():
        ids = result.activations.image_ids[samples[:4]].tolist()
        files = []
        for image_id in ids:
            rel = paths.exemplar_image_path(image_id)
            if not (stage / rel).exists():
                save_png(stage / rel, load_images(dataset, [image_id])[0], scale=3)
            files.append(rel)
        exemplar_files[(i, j)] = files
    atlases = []
    for g, atlas in result.atlases.items():
        atlas_figure(stage / paths.atlas_figure_path(g), atlas, names, f"Activation atlas, {g}×{g} grid")
        save_png(stage / paths.atlas_grid_path(g), grid_image(atlas, names, max(2, 480 // g)))
        icon_image = paths.ICON_ATLAS if g == main.grid_size and result.icon_atlas is not None else None
        atlases.append(AtlasPictures(g, paths.atlas_figure_path(g), paths.atlas_grid_path(g), icon_image,
                                     _atlas_cells(atlas, result, exemplar_files if g == main.grid_size else {})))
    pairs = tuple(_pair_files(stage, k, finding, names) for k, finding in enumerate(result.pairs))
    saved = any(f.patches is not None for f in result.pairs)
    return Manifest(title=title or "debugatlas report", model=type(model).__name__,
                    data=data_description or type(dataset).__name__, score_description=SCORE_DESCRIPTION,
                    icon_atlas=paths.ICON_ATLAS if result.icon_atlas is not None else None,
                    atlases=tuple(atlases), pairs=pairs, suite_dir=paths.SUITE_ROOT if saved else None,
                    check_command=check_command(result) if saved else None)


def check_command(result) -> str:
    """The `debugatlas check` command line that gates a checkpoint on this run's suite."""
    config = result.record.config
    spec = config.get("model_spec") or "pkg.module:factory"
    normalize = config.get("normalize")
    norm = " --normalize " + " ".join(f"{v:g}" for v in [*normalize[0], *normalize[1]]) if normalize else ""
    return (f"debugatlas check --suite {paths.SUITE_ROOT} --model {spec} --weights NEW_CHECKPOINT.pt{norm} "
            f"--data VALIDATION_IMAGEFOLDER --baseline {paths.SUMMARY_FILE} --tolerance 0.05 --junit check.xml")


def write_run(out_dir: Path, result, dataset, model, title: str | None = None,
              data_description: str | None = None) -> Path:
    """Write the run into `out_dir` atomically (staging folder, then swap); return `out_dir`."""
    from .writer import write_report

    with staged_dir(out_dir) as stage:
        manifest = _write_files(stage, result, dataset, model, title, data_description)
        write_report(stage, result.record, manifest)
    return Path(out_dir)
