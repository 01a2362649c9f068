"""`AtlasCallback`: capture activations during Lightning validation and analyse them at epoch end.

The only module that imports Lightning.

Distributed (DDP): every rank captures its shard of the validation set with global dataset
indices (read from the loader's `DistributedSampler`), the shards are gathered on every rank with
`torch.distributed.all_gather_object` (shards differ in size, so the strategy's tensor
`all_gather` does not fit; in memory, also with the on-disk store), the sampler's padding repeats
are dropped, rank 0 analyses and writes, rank 0's outcome goes to every rank through
`trainer.strategy.broadcast`, and all ranks meet at `trainer.strategy.barrier`. Random positions
depend on (seed, image id), so any number of processes samples the same vectors. `cap` applies per
rank while capturing and again to the merged set; the result equals a single-process run when no
rank reaches `cap`.

Never kills training, never fails unseen: a failed analysis is logged at ERROR with its one-line
cause and a hint, counted (`atlas/failed_epochs` to every logger, `failed_epochs` in the saved
state) and shown in the run's timeline as a failed epoch with its message; training goes on (with
`strict=True` every rank raises it instead). Set-up mistakes (an unknown layer, a shuffled
validation loader, batches that are not (images, labels)) still raise, before any work is lost.

Both Lightning packages: the class derives from `pytorch_lightning.Callback` and, where the
unified `lightning` package is installed, from `lightning.pytorch.Callback` too, so
`lightning.pytorch.Trainer` and its `LightningCLI` take it as they take their own callbacks.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch.utils.data import SequentialSampler

from ..capture import ActivationSet, merge_shards
from ..capture.recorder import GUIDED
from ..core.errors import DebugAtlasError
from ..core.model import resolve_layer
from .options import refuse_keywords, split_options

log = logging.getLogger("debugatlas.lightning")

def _callback_bases() -> tuple[type, ...]:
    """`pytorch_lightning.Callback`, and `lightning.pytorch.Callback` where `lightning` is installed.

    The two packages ship the same Trainer under two names, and each checks callbacks against its
    own `Callback` class (`LightningCLI` through `issubclass`, `Trainer(callbacks=cb)` through
    `isinstance`). Both base classes hold only no-op hooks, so deriving from both is safe.
    """
    try:
        import lightning.pytorch as unified
    except ImportError:
        return (pl.Callback,)
    return (pl.Callback,) if unified.Callback is pl.Callback else (pl.Callback, unified.Callback)


def _one_line(error: BaseException) -> tuple[str, str | None]:
    """(cause, hint) of a failure: the exception's type and first line, and its own HINT if it has one."""
    text = str(error)
    cause, _, hint = text.partition("HINT:")
    first = (cause.strip().splitlines() or [""])[0].rstrip(". ")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__, hint.strip() or None


class AtlasCallback(*_callback_bases()):
    """Build an activation atlas of `layer` from validation batches and write a report per epoch.

    Each analysis goes to every logger of the trainer (see `lightning/loggers.py`): scalars named
    by pair (`atlas/A→B/confused`, `confirmed_findings`, `best_flip_rate`, `confirmed_flip_rate`,
    `confirmed_margin`), `atlas/failed_epochs`, and the atlas pictures through the logger's own image API. While it
    analyses it logs the stage and the time left at INFO on the `debugatlas.lightning` logger.

    Args:
        layer: name in `pl_module.named_modules()`.
        pairs: "auto" or [(A, B), ...] class names to compare.
        every_n_epochs: analyse after every n-th validation epoch (and after `trainer.validate()`).
        dirpath: where `epoch_<n>/` folders and the run's timeline `index.html` go; by default
            `<save_dir>/<name>/<version>/atlas` of the trainer's first logger (as `ModelCheckpoint`
            places checkpoints), or `<default_root_dir>/atlas` without a logger.
        options: every option of the analysis, as one mapping (what a LightningCLI YAML config
            writes as `options: {...}`): any `AnalysisConfig` option (render, patches, grid_size, ...);
            the capture settings `sampling`, `samples_per_image`, `cap` (see
            `lightning.options.CAPTURE_DEFAULTS`: one uniformly random position per image, at most
            100,000 vectors; `sampling="guided"` captures the validation set again at analysis
            time, since a validation hook cannot take gradients); the on-disk vector store
            `store_dir`, `disk_threshold_bytes` (used when the reservoir would exceed 256 MiB by
            default; None keeps it in memory); and `analyze()`'s `normalize` ((mean, std) when the
            module expects normalised input; images stay in [0, 1]), `class_names` (when the
            validation dataset has no `.classes`) and `model_spec` ("pkg.module:factory" of the
            wrapped classifier, for the report's check command).
        seed: of the sampled positions and of every stage.
        subdir: folder under `dirpath` per analysis, formatted with `epoch` ("" writes into dirpath).
        timeline: keep `<dirpath>/index.html`, the run's epochs on one page (needs `{epoch}` in subdir).
        run_analysis: False only captures; the ActivationSet is kept in `last_activations`.
        strict: re-raise a failed analysis (on every rank) instead of logging, counting and showing it
            and training on.

    Any other keyword is refused with a hint: an analysis option names the `options=` it belongs in.
    """

    def __init__(self, layer: str, pairs: Any = "auto", every_n_epochs: int = 1, dirpath: str | Path | None = None,
                 *, options: Mapping[str, Any] | None = None, seed: int = 0, subdir: str = "epoch_{epoch}",
                 timeline: bool = True, run_analysis: bool = True, strict: bool = False, **unknown: Any) -> None:
        refuse_keywords(unknown, [name for name in inspect.signature(AtlasCallback.__init__).parameters
                                  if name not in ("self", "unknown")])
        if not isinstance(layer, str) or not layer:
            raise DebugAtlasError(f"`AtlasCallback(layer={layer!r})` must be a module name from `named_modules()`.")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise DebugAtlasError(f"`AtlasCallback(every_n_epochs={every_n_epochs!r})` must be an integer >= 1.")
        given = split_options(options, seed)
        self.layer, self.every_n_epochs = layer, every_n_epochs
        # YAML gives [[a, b]]: pairs are kept as tuples so the state key does not depend on it
        if not (pairs is None or isinstance(pairs, (str, list, tuple))):
            raise DebugAtlasError(f"`AtlasCallback(pairs={pairs!r})` must be 'auto' or a list of (A, B) class pairs.")
        self.pairs = pairs if pairs is None or isinstance(pairs, str) else tuple(
            tuple(p) if isinstance(p, list) else p for p in pairs)
        self.strict, self.timeline = bool(strict), bool(timeline)
        self._dirpath_given = Path(dirpath) if dirpath is not None else None
        self.dirpath = self._dirpath_given  # resolved in `setup` when None
        self.normalize = given.run.get("normalize")
        self.class_names = given.run.get("class_names")
        self.model_spec = given.run.get("model_spec")
        self.seed = int(seed)
        self.subdir, self.run_analysis = subdir, bool(run_analysis)
        self.last_activations = None
        self.analysis_options = given.analysis  # every AnalysisConfig option but the capture settings
        # guided sampling needs a gradient pass, which a validation hook cannot take: the hook then
        # records uniformly, and the analysis captures the validation set again with guided positions
        self.guided = given.capture.sampling == GUIDED
        self.recorder = given.capture.recorder(layer)
        self.cap = int(given.capture.cap)
        # given to analyze(): recorded in summary.json's config, and the capture of guided sampling
        self.capture_options = given.capture_options
        self.last_epoch_analyzed = -1
        self.failed_epochs = 0
        self.runs: list[dict] = []
        self.last_result = None
        self._handles: list = []
        self._offset = 0
        self._index_map: torch.Tensor | None = None
        self._batch_ids: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._active = False
        self._warned: set[str] = set()

    @property
    def state_key(self) -> str:
        """Checkpoint key: two callbacks on different layers (or pairs, or schedules) keep their own state."""
        return self._generate_state_key(layer=self.layer, pairs=self.pairs, every_n_epochs=self.every_n_epochs)

    # -- checks that need the model ----------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        try:
            resolve_layer(pl_module, self.layer)
        except DebugAtlasError as exc:
            hint = str(exc).split("HINT:")[-1].strip()
            raise DebugAtlasError(f"`AtlasCallback(layer={self.layer!r})` found no such module in "
                                  f"{type(pl_module).__name__}. HINT: {hint}") from None
        if self._dirpath_given is None:  # every rank takes rank 0's folder (logger versions may differ)
            self.dirpath = Path(trainer.strategy.broadcast(str(self._default_dirpath(trainer))))

    @staticmethod
    def _default_dirpath(trainer: pl.Trainer) -> Path:
        """`<save_dir>/<name>/<version>/atlas` of the first logger, as `ModelCheckpoint` resolves its folder."""
        if not trainer.loggers:
            return Path(trainer.default_root_dir) / "atlas"
        logger = trainer.loggers[0]
        save_dir = logger.save_dir if logger.save_dir is not None else trainer.default_root_dir
        version = logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        return Path(save_dir) / str(logger.name) / version / "atlas"

    # -- capture ------------------------------------------------------------------------------------
    def _due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self._active = self._due(trainer)
        if not self._active:
            return
        if trainer.world_size == 1:
            self._val_dataset(trainer)  # refuses a shuffled loader now, not after the epoch
        self.recorder.reset()
        self._offset = 0
        self._index_map = self._sampler_indices(trainer) if trainer.world_size > 1 else None
        self._handles.append(resolve_layer(pl_module, self.layer).register_forward_hook(self.recorder._hook))
        self._handles.append(pl_module.register_forward_hook(self._keep_logits))

    def _sampler_indices(self, trainer: pl.Trainer) -> torch.Tensor:
        """Dataset index of every position in this rank's validation stream (padding included)."""
        loader = self._val_loader(trainer)
        sampler = getattr(loader, "sampler", None)
        if sampler is None or getattr(sampler, "shuffle", False):
            raise DebugAtlasError(
                f"`AtlasCallback` under {type(trainer.strategy).__name__} needs the validation loader's "
                f"sampler to list dataset indices in order; got {type(sampler).__name__} "
                f"(shuffle={getattr(sampler, 'shuffle', None)}). HINT: use `shuffle=False` for the validation loader."
            )
        return torch.tensor(list(iter(sampler)), dtype=torch.long)

    def _ids(self, batch: Any) -> torch.Tensor:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DebugAtlasError(
                f"`AtlasCallback` needs validation batches of (images, labels); got {type(batch).__name__}. "
                "HINT: make the validation dataset yield (image, label) pairs."
            )
        n = torch.as_tensor(batch[1]).numel()
        local = torch.arange(self._offset, self._offset + n)
        if self._index_map is None:
            return local
        if self._offset + n > len(self._index_map):
            raise DebugAtlasError(
                f"`AtlasCallback` saw {self._offset + n} validation images on this rank but its sampler lists "
                f"{len(self._index_map)}. HINT: do not change the validation loader during an epoch."
            )
        return self._index_map[local]

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active or dataloader_idx != 0:
            return
        self._batch_ids = self._ids(batch)
        self.recorder.expect(self._batch_ids)

    def _keep_logits(self, module, inputs, output) -> None:
        self._logits = output.detach() if isinstance(output, torch.Tensor) and output.dim() == 2 else None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active or dataloader_idx != 0:
            return
        ids = self._batch_ids if self._batch_ids is not None else self._ids(batch)
        self._batch_ids = None
        labels = torch.as_tensor(batch[1]).reshape(-1)
        self._offset += labels.numel()
        preds = None
        if self._logits is not None and self._logits.shape[0] == labels.numel():
            preds = self._logits.argmax(-1)
        self._logits = None
        self.recorder.commit(ids, labels, preds)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        if not self._active:
            return
        self._active = False
        epoch = int(trainer.current_epoch)
        error: BaseException | None = None
        try:
            acts = self._gathered(trainer)  # a collective: every rank gets here, and fails alike
        except DebugAtlasError as exc:
            acts, error = None, exc
        if trainer.is_global_zero and error is None:
            try:
                dataset = self._val_dataset(trainer)
                self.last_activations = acts
                if self.run_analysis:
                    self._analyze(trainer, pl_module, dataset, acts, epoch)
            except Exception as exc:  # noqa: BLE001 - the callback must not stop training
                error = exc
        failure = trainer.strategy.broadcast(None if error is None else _one_line(error), src=0)
        trainer.strategy.barrier("debugatlas-analysis")
        if failure is None:
            return
        cause, hint = failure
        if self.strict:
            if error is not None:
                raise error
            raise DebugAtlasError(f"`AtlasCallback` analysis failed on rank 0: {cause}. HINT: see rank 0's traceback.")
        self.failed_epochs += 1
        if trainer.is_global_zero:
            self._record_failure(trainer, pl_module, epoch, cause, hint, error)

    def _record_failure(self, trainer, pl_module, epoch: int, cause: str, hint: str | None,
                        error: BaseException | None) -> None:
        """A failed epoch is seen: logged at ERROR (with the traceback), counted, shown in the timeline."""
        from ..report.timeline import failed_entry
        from .loggers import log_failure

        hint = hint or "pass `strict=True` to raise it where it happens"
        log.error("`AtlasCallback(layer=%r)` could not analyse epoch %d (%d failed so far), training goes on: %s. "
                  "HINT: %s", self.layer, epoch, self.failed_epochs, cause, hint,
                  exc_info=(type(error), error, error.__traceback__) if error is not None else None)
        self.runs = [r for r in self.runs if r.get("epoch") != epoch]
        self.runs.append({"dir": str(self._out(epoch)), **failed_entry(epoch, cause, hint)})
        try:
            log_failure(trainer.loggers, self.failed_epochs, step=trainer.global_step)
            self._write_timeline(pl_module)
        except Exception as exc:  # noqa: BLE001 - the failure is logged above; recording it must not stop training
            log.error("`AtlasCallback(layer=%r)` could not record the failure of epoch %d in the loggers or the "
                      "timeline: %s. HINT: the failure itself is the ERROR before this one.", self.layer, epoch,
                      _one_line(exc)[0], exc_info=(type(exc), exc, exc.__traceback__))

    def _gathered(self, trainer: pl.Trainer):
        """This rank's ActivationSet, or on several ranks the merged set (collectives on every rank)."""
        try:
            local, problem = self.recorder.result(), None
        except DebugAtlasError as exc:
            local, problem = None, str(exc)
        self.recorder.reset()
        if trainer.world_size == 1:
            if problem is not None:
                raise DebugAtlasError(problem)
            return local
        import torch.distributed as dist  # objects of different sizes: the strategy gathers tensors only

        payload = None if local is None else _plain(local)
        gathered: list = [None] * trainer.world_size
        dist.all_gather_object(gathered, (payload, problem))
        problems = [f"rank {k}: {p}" for k, (_, p) in enumerate(gathered) if p is not None]
        if len(problems) == len(gathered):
            raise DebugAtlasError("; ".join(problems))
        shards = [None if p is None else ActivationSet(**p) for p, _ in gathered]
        return merge_shards(shards, self.cap, self.seed)

    def _val_loader(self, trainer: pl.Trainer):
        loaders = trainer.val_dataloaders
        return loaders[0] if isinstance(loaders, (list, tuple)) else loaders

    def _val_dataset(self, trainer: pl.Trainer):
        loader = self._val_loader(trainer)
        sampler = getattr(loader, "sampler", None)
        if sampler is not None and not isinstance(sampler, SequentialSampler) and trainer.world_size == 1:
            raise DebugAtlasError(
                f"`AtlasCallback` maps validation batches to dataset indices in order, but the validation "
                f"loader uses {type(sampler).__name__}. HINT: use `shuffle=False` for the validation loader."
            )
        return loader.dataset

    def _out(self, epoch: int) -> Path:
        return self.dirpath / self.subdir.format(epoch=epoch) if self.subdir else self.dirpath

    def _analyze(self, trainer, pl_module, dataset, acts, epoch: int) -> None:
        from ..pipeline import analyze
        from ..report.timeline import epoch_entry
        from .loggers import log_analysis
        from .progress import AnalysisProgress

        out = self._out(epoch)
        previous = next((r["timings_s"] for r in reversed(self.runs) if r.get("timings_s")), None)
        with AnalysisProgress(f"epoch {epoch}, layer {self.layer}, {len(acts):,} vectors", previous):
            result = analyze(pl_module, dataset, self.layer, pairs=self.pairs, normalize=self.normalize,
                             out_dir=out, seed=self.seed, class_names=self.class_names,
                             activations=None if self.guided else acts,
                             title=f"{type(pl_module).__name__}, epoch {epoch}", model_spec=self.model_spec,
                             **self.capture_options, **self.analysis_options)
        self.last_result = result
        self.last_epoch_analyzed = epoch
        self.runs = [r for r in self.runs if r.get("epoch") != epoch]
        self.runs.append({"dir": str(out), "timings_s": dict(result.record.timings_s),
                          **epoch_entry(result.record, epoch, None)})
        self._write_timeline(pl_module)
        log_analysis(trainer.loggers, out, result.record, epoch=epoch, step=trainer.global_step,
                     num_samples=len(acts), failed_epochs=self.failed_epochs, warned=self._warned)

    def _write_timeline(self, pl_module) -> None:
        """`<dirpath>/index.html` over `self.runs`, failed epochs included (needs `{epoch}` in subdir)."""
        if not (self.timeline and self.subdir and "{epoch" in self.subdir):
            return
        from ..report.timeline import relative_href, write_timeline

        # links are made now: a resumed run may write into another logger version's folder; a failed
        # epoch's folder holds no report of this run, so it is not linked
        entries = [{**r, "href": None if r.get("failed") else relative_href(r["dir"], self.dirpath)}
                   for r in self.runs if "pairs" in r]
        write_timeline(self.dirpath, entries, title=f"{type(pl_module).__name__}: atlas of {self.layer}")

    # -- cleanup and state ----------------------------------------------------------------------------
    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        self._active = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch_analyzed": self.last_epoch_analyzed, "runs": list(self.runs),
                "failed_epochs": self.failed_epochs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch_analyzed = int(state_dict.get("last_epoch_analyzed", -1))
        self.runs = list(state_dict.get("runs", []))
        self.failed_epochs = int(state_dict.get("failed_epochs", 0))


def _plain(acts) -> dict[str, Any]:
    """The ActivationSet's fields as plain values and in-memory tensors, for pickling to other ranks."""
    out = {f.name: getattr(acts, f.name) for f in fields(acts)}
    out["vectors"] = torch.as_tensor(acts.vectors).clone()  # the on-disk store's memory map, read in
    return out
