"""`analyze()`: run every stage on a model and a dataset, and write the run directory."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..capture import ActivationSet
from ..core.errors import DebugAtlasError
from ..core.model import Normalized, layer_name, on_device, resolve_layer
from ..data import class_names as _class_names
from . import examples, icons, patch_stage, prepare, summary, views
from .config import AnalysisConfig
from .context import RunContext
from .records import AnalysisResult, PairFinding, Rendered


def _check_normalize(normalize) -> None:
    if normalize is None:
        return
    if len(normalize) != 2 or len(normalize[0]) != len(normalize[1]):
        raise DebugAtlasError(f"`normalize={normalize!r}` must be (mean, std), one value per channel.")
    if any(float(s) <= 0 for s in normalize[1]):
        raise DebugAtlasError(f"`normalize` std {list(normalize[1])!r} must be positive.")


def analyze(
    model: nn.Module,
    dataset,
    layer: str,
    pairs="auto",
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    class_names: Sequence[str] | None = None,
    activations: ActivationSet | None = None,
    progress: bool = False,
    title: str | None = None,
    data_description: str | None = None,
    model_spec: str | None = None,
    **options: Any,
) -> AnalysisResult:
    """Find why `model` confuses classes of `dataset`, at `layer`, and write a report to `out_dir`.

    `dataset` yields (image in [0, 1] as [C, H, W], int label); ids in the report index into it.
    `activations` skips capture (the Lightning callback passes what it captured during validation);
    it is not changed. `model_spec` ("pkg.module:factory") is recorded so the report can print the
    exact check command. Options (see `AnalysisConfig`) tune each stage. The model is left as found.
    An error leaves any earlier report in `out_dir` intact: files are written only once everything
    has been computed.
    """
    config = AnalysisConfig.from_options(options)
    _check_normalize(normalize)
    if len(dataset) == 0:
        raise DebugAtlasError("The dataset is empty. HINT: pass a dataset with at least one image.")
    resolve_layer(model, layer)
    started = time.perf_counter()
    with on_device(model, device) as dev:
        net = Normalized(model, *normalize).to(dev) if normalize is not None else model
        name = layer_name(net, resolve_layer(model, layer))
        k = prepare.count_outputs(net, dataset, dev)
        names = _class_names(dataset, class_names, k)
        if len(names) != k:
            raise DebugAtlasError(
                f"The model predicts {k} classes but there are {len(names)} class names. "
                "HINT: pass `class_names=` with one name per model output."
            )
        wanted = prepare.resolve_pairs(pairs, names)
        ctx = RunContext(net, name, resolve_layer(net, name), dataset, dev, int(seed), config, tuple(names), progress)
        result = _run(ctx, activations, normalize, model_spec, started, wanted)
    result = AnalysisResult(**{**result.__dict__, "out_dir": Path(out_dir) if out_dir is not None else None})
    if out_dir is not None:
        from ..report.rundir import write_run

        write_run(Path(out_dir), result, dataset, net, title=title, data_description=data_description)
    return result


def _run(ctx: RunContext, given: ActivationSet | None, normalize, model_spec: str | None,
         started: float, wanted: list[tuple[int, int]] | None = None) -> AnalysisResult:
    cfg = ctx.config
    with ctx.stage("capture"):
        acts = prepare.activations(ctx, given=given)
    _, labels, preds = acts.per_image()
    confusion, plans = prepare.pairs(ctx, labels=labels, preds=preds, wanted=wanted)
    with ctx.stage("attribution"):
        attr = views.attributions(ctx, acts=acts, plans=plans)
    with ctx.stage("layout"):
        layout = views.layout(ctx, acts=acts)
        atlases = views.atlases(ctx, acts=acts, attributions=attr, layout=layout)
        atlas = atlases[cfg.grid_size]
        pair_views = tuple(views.pair_views(ctx, acts=acts, attributions=attr, layout=layout, atlas=atlas, plan=p)
                           for p in plans)
    with ctx.stage("render"):
        rendered = icons.render(ctx, acts=acts, atlas=atlas, views=pair_views) if cfg.render else Rendered(icon_atlas=None)
    with ctx.stage("patches"):
        tested = [patch_stage.test_pair(ctx, acts=acts, atlas=atlas, plan=p, views=v, rendered=rendered)
                  if cfg.render and cfg.patches else (None, ()) for p, v in zip(plans, pair_views)]
    with ctx.stage("attribution"):
        shown = [examples.misclassified(ctx, acts=acts, plan=p) for p in plans]
    findings = [_finding(k, plan, view, rendered, suite, notes, shown[k], cfg.render_cells)
                for k, (plan, view, (suite, notes)) in enumerate(zip(plans, pair_views, tested))]
    ctx.timer.times["total"] = round(time.perf_counter() - started, 3)
    run_summary = summary.build(ctx, acts=acts, findings=findings, confusion=confusion, layout_params=layout.params,
                                normalize=normalize, model_spec=model_spec)
    return AnalysisResult(
        summary=run_summary, out_dir=None, activations=acts, attributions=attr, xy=layout.xy, atlases=atlases,
        pairs=findings, confusion=confusion, class_names=list(ctx.class_names), config=cfg,
        icon_atlas=rendered.icon_atlas, suites=[f.patches for f in findings if f.patches is not None],
    )


def _finding(index: int, plan, view, rendered: Rendered, suite, notes, shown, render_cells: int) -> PairFinding:
    top = [c.cell for c in view.cells[:render_cells]]
    return PairFinding(
        plan.a, plan.b, plan.a_name, plan.b_name, plan.confused, cells=view.cells,
        filtered_a=view.filtered_a, filtered_b=view.filtered_b, comparison=view.comparison,
        icons={c: rendered.icons[c] for c in top if c in rendered.icons},
        icon_objective={c: rendered.objective[c] for c in top if c in rendered.objective},
        exemplar_crops={c: rendered.exemplar_crops[(index, c)] for c in top if (index, c) in rendered.exemplar_crops},
        icon_atlases={side: img for (k, side), img in rendered.view_atlases.items() if k == index},
        examples=shown, patches=suite, notes=tuple(view.notes) + tuple(notes), kind=plan.kind,
    )
