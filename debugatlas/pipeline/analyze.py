"""`analyze()`: run every stage on a model and a dataset, and write the run directory."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..attribution import MAX_ALL_CLASSES
from ..capture import ActivationSet
from ..core.datasets import load_images
from ..core.inputs import (
    CheckedDataset, auto_samples_per_image, check_class_names, check_model, check_normalize, fit_grid,
    inspect_dataset, layer_positions, resolve_pairs,
)
from ..core.model import Normalized, fast_precision, layer_name, on_device, resolve_layer
from ..core.progress import RunProgress
from ..data import class_names as _class_names
from ..patches.split import split_images
from . import composition, examples, findings, icons, patch_stage, prepare, stability, summary, views
from .config import AnalysisConfig, auto_filter_top_n
from .context import RunContext
from .cost import ForwardCost, measure_w
from .records import AnalysisResult, PairFinding, PairTest, Rendered

_CHECKED_IMAGES = 4
AUTO_PER_CELL = 5  # samples_per_image="auto" aims at this many vectors per cell of the main grid
SPARSE_PER_CELL = 2  # below this average of vectors per cell the grid shrinks, and the summary says so
# expected shares of a run's time per progress-bar stage, from the digits demo: the bar's time left
STAGE_WEIGHTS = (("capture", 2), ("attribution", 3), ("layout", 10), ("render", 30), ("patches", 50),
                 ("stability", 5), ("examples", 5))


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
    progress: bool | None = False,
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
    `progress`: one bar across the stages on stderr (None: only when stderr is a terminal).
    An error leaves any earlier report in `out_dir` intact: files are written only once everything
    has been computed.
    """
    config = AnalysisConfig.from_options(options)
    resolve_layer(model, layer)
    info = inspect_dataset(dataset, seed=seed)
    data = CheckedDataset(dataset, info.scale)
    normalize = check_normalize(normalize, info.shape[0])
    started = time.perf_counter()
    with on_device(model, device) as dev:
        net = Normalized(model, *normalize).to(dev) if normalize is not None else model
        user_layer = layer_name(model, layer)
        name = layer_name(net, resolve_layer(model, layer))
        module = resolve_layer(net, name)
        probe = load_images(data, list(range(min(_CHECKED_IMAGES, len(data))))).to(dev)
        k = check_model(net, probe)
        data.num_classes = k  # labels are checked against the model's outputs from here on
        names = check_class_names(_class_names(dataset, class_names, k), k)
        wanted = resolve_pairs(pairs, names, class_counts=info.class_counts)
        if config.samples_per_image == "auto":
            config = dataclasses.replace(config, samples_per_image=_auto_samples(net, module, name, probe, config,
                                                                                 len(data)))
        if config.choosing_precision == "auto":
            config = dataclasses.replace(config, choosing_precision=fast_precision(dev))
        with RunProgress(STAGE_WEIGHTS, enabled=None if progress is None else bool(progress)) as bar:
            ctx = RunContext(net, name, module, data, dev, int(seed), config, tuple(names), bar)
            w = measure_w(ctx, len(data))
            with ctx.timer.counting(net):
                result = _run(ctx, activations, normalize, model_spec, started, wanted, user_layer, w)
    result = dataclasses.replace(result, out_dir=Path(out_dir) if out_dir is not None else None)
    if out_dir is not None:
        from ..report.rundir import write_run

        write_run(Path(out_dir), result, data, model, title=title,
                  data_description=data_description or type(dataset).__name__)
    return result


def _auto_samples(net, module, name: str, probe, config: AnalysisConfig, n_images: int) -> int:
    """`samples_per_image="auto"`: enough vectors for about `AUTO_PER_CELL` per cell of the main grid."""
    positions = layer_positions(net, module, name, probe)
    return auto_samples_per_image(n_images, positions, config.grid_size, config.cap, per_cell=AUTO_PER_CELL)


def _run(ctx: RunContext, given: ActivationSet | None, normalize, model_spec: str | None,
         started: float, wanted: list[tuple[int, int]] | None, user_layer: str, w: ForwardCost) -> AnalysisResult:
    with ctx.stage("capture"):
        acts = prepare.activations(ctx, given=given, wanted=wanted)
    grid, sparse = fit_grid(len(acts), ctx.config.grid_size, per_cell=SPARSE_PER_CELL)
    if sparse is not None:
        sizes = tuple(sorted({grid, *(g for g in ctx.config.grid_sizes if g <= grid)}))
        ctx = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, grid_size=grid, grid_sizes=sizes))
    if ctx.config.filter_top_n == "auto":
        top_n = auto_filter_top_n(len(acts), ctx.num_classes)
        ctx = dataclasses.replace(ctx, config=dataclasses.replace(ctx.config, filter_top_n=top_n))
    cfg = ctx.config
    uid, labels, preds = acts.per_image()
    attr = probs = None
    if wanted is None and ctx.num_classes <= MAX_ALL_CLASSES:
        # every class is attributed, so no pair is needed first, and picking the pairs takes the
        # images' probabilities from the attribution's forward passes
        with ctx.stage("attribution"):
            attr, probs = views.attributions(ctx, acts=acts, plans=None, return_probs=True)
    confusion, plans = prepare.pairs(ctx, acts=acts, wanted=wanted, probs=probs)
    split = split_images(uid, labels, ctx.seed, cfg.split_fraction)
    if attr is None:
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
        tested = []
        for p, v in zip(plans, pair_views):
            spent = w.in_w(time.perf_counter() - started)
            if not (cfg.render and cfg.patches):
                tested.append(PairTest())
            elif cfg.budget_w is not None and spent >= cfg.budget_w:
                tested.append(PairTest(notes=(f"patch tests cut: the run had spent {spent:.1f} W of "
                                              f"budget_w={cfg.budget_w:g} before this pair",)))
            else:
                tested.append(patch_stage.run_pair(ctx, acts=acts, atlas=atlas, plan=p, views=v, rendered=rendered,
                                                   split=split))
        found = [findings.pair_findings(plan=p, test=t, atlas=atlas, acts=acts, whitening=rendered.whitening)
                 for p, t in zip(plans, tested)]
        with ctx.timer.stage("patches.composition"):
            joint = composition.joint_tests(ctx, plans=plans, tested=tested)
    with ctx.stage("layout", shown_as="stability"), ctx.timer.stage("layout.stability"):
        found = stability.check(ctx, acts=acts, attributions=attr, atlas=atlas, plans=plans, found=found,
                                whitening=rendered.whitening)
    found = composition.annotate(acts=acts, atlas=atlas, plans=plans, found=found)
    with ctx.stage("attribution", shown_as="examples"):
        shown = [examples.misclassified(ctx, acts=acts, plan=p) for p in plans]
        crops = [_finding_crops(ctx, acts, atlas, f) for f in found]
    pair_results = [dataclasses.replace(_finding(k, plan, view, rendered, test, found[k], crops[k], shown[k], cfg.render_cells),
                            composition=joint[k]) for k, (plan, view, test) in enumerate(zip(plans, pair_views, tested))]
    ctx.timer.times["total"] = round(time.perf_counter() - started, 3)
    facts = summary.RunFacts(layer=user_layer, layout_params=layout.params, normalize=normalize,
                             model_spec=model_spec, split=split, sparse=sparse)
    record = summary.build(ctx, acts=acts, findings=pair_results, confusion=confusion, facts=facts, w=w)
    return AnalysisResult(
        record=record, out_dir=None, activations=acts, attributions=attr, xy=layout.xy, atlases=atlases,
        pairs=pair_results, confusion=confusion, class_names=list(ctx.class_names), config=cfg,
        icon_atlas=rendered.icon_atlas, suites=[f.patches for f in pair_results if f.patches is not None],
    )


def _finding_crops(ctx: RunContext, acts: ActivationSet, atlas, found) -> dict:
    """Receptive-field crops of each finding cell's exemplars, side by side on the page."""
    from ..render import exemplar_crops

    out = {}
    for f in found:
        samples = atlas.exemplars.get(f.cell, [])[:6]
        if samples:
            out[f.cell] = exemplar_crops(ctx.model, ctx.module, ctx.dataset, acts, samples)
    return out


def _finding(index: int, plan, view, rendered: Rendered, test: PairTest, found, crops, shown,
             render_cells: int) -> PairFinding:
    top = [c.cell for c in view.cells[:render_cells]]
    top += [f.cell for f in found if f.cell not in top]
    return PairFinding(
        plan.a, plan.b, plan.a_name, plan.b_name, plan.confused, cells=view.cells,
        filtered_a=view.filtered_a, filtered_b=view.filtered_b, comparison=view.comparison,
        icons={c: rendered.icons[c] for c in top if c in rendered.icons},
        icon_objective={c: rendered.objective[c] for c in top if c in rendered.objective},
        exemplar_crops={c: rendered.exemplar_crops[(index, c)] for c in top if (index, c) in rendered.exemplar_crops},
        icon_atlases={side: img for (k, side), img in rendered.view_atlases.items() if k == index},
        examples=shown, patches=test.suite, notes=tuple(view.notes) + tuple(test.notes), kind=plan.kind,
        findings=found, finding_crops=crops, screening={"n_screened": test.cells_screened, "seconds": test.screen_seconds,
                                   "n_candidates": test.n_candidates},
    )
