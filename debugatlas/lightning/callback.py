"""`AtlasCallback`: capture activations during Lightning validation and analyse them at epoch end.

The only module that imports Lightning.

Distributed (DDP): every rank captures its shard of the validation set with global dataset
indices (read from the loader's `DistributedSampler`), the shards are gathered on every rank with
`torch.distributed.all_gather_object` (in memory, also with the on-disk store), the sampler's
padding repeats are dropped, rank 0 analyses and writes, and all ranks meet at a barrier. Random positions depend on (seed, image id), so any
number of processes samples the same vectors. `cap` applies per rank while capturing and again
to the merged set; the result equals a single-process run when no rank reaches `cap`. If rank 0's
analysis fails, it broadcasts the failure before the barrier and every rank raises.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import SequentialSampler

from ..capture import DISK_THRESHOLD_BYTES, SAMPLING, ActivationRecorder, ActivationSet, merge_shards
from ..core.errors import DebugAtlasError
from ..core.model import resolve_layer
from ..pipeline.config import AnalysisConfig

log = logging.getLogger("debugatlas")


class AtlasCallback(pl.Callback):
    """Build an activation atlas of `layer` from validation batches and write a report per epoch.

    Args:
        layer: name in `pl_module.named_modules()`.
        pairs: "auto" or [(A, B), ...] class names to compare.
        every_n_epochs: analyse after every n-th validation epoch (and after `trainer.validate()`).
        dirpath: where `epoch_<n>/` folders go (default `<trainer.default_root_dir>/atlas`).
        sampling, samples_per_image, cap, seed: capture settings (see `capture.ActivationRecorder`).
        store_dir, disk_threshold_bytes: the on-disk vector store for large captures (used when the
            reservoir would exceed 256 MiB by default; None keeps it in memory).
        normalize: (mean, std) when the module expects normalised input; images stay in [0, 1].
        class_names: names of the classes when the validation dataset has no `.classes`.
        subdir: folder under `dirpath` per analysis, formatted with `epoch` ("" writes into dirpath).
        run_analysis: False only captures; the ActivationSet is kept in `last_activations`.
        model_spec: "pkg.module:factory" of the wrapped classifier, for the report's check command.
        analysis_options: any `AnalysisConfig` option (render, patches, grid_size, ...).
    """

    def __init__(self, layer: str, pairs: Any = "auto", every_n_epochs: int = 1, dirpath: str | Path | None = None,
                 sampling: str = "random", samples_per_image: int = 1, cap: int = 100_000, seed: int = 0,
                 normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 class_names: Sequence[str] | None = None, subdir: str = "epoch_{epoch}",
                 run_analysis: bool = True, model_spec: str | None = None, store_dir: str | Path | None = None,
                 disk_threshold_bytes: int | None = DISK_THRESHOLD_BYTES, **analysis_options: Any) -> None:
        if not isinstance(layer, str) or not layer:
            raise DebugAtlasError(f"`AtlasCallback(layer={layer!r})` must be a module name from `named_modules()`.")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise DebugAtlasError(f"`AtlasCallback(every_n_epochs={every_n_epochs!r})` must be an integer >= 1.")
        if sampling not in SAMPLING:
            raise DebugAtlasError(f"`AtlasCallback(sampling={sampling!r})` is not one of {list(SAMPLING)}.")
        AnalysisConfig.from_options(dict(analysis_options))
        self.layer, self.pairs, self.every_n_epochs = layer, pairs, every_n_epochs
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.normalize, self.class_names, self.seed = normalize, class_names, int(seed)
        self.subdir, self.run_analysis = subdir, bool(run_analysis)
        self.last_activations = None
        self.model_spec = model_spec
        self.analysis_options = dict(analysis_options)
        self.recorder = ActivationRecorder(layer, sampling, samples_per_image, cap, seed, store_dir=store_dir,
                                           disk_threshold_bytes=disk_threshold_bytes)
        self.cap = int(cap)
        # recorded in summary.json's config (capture itself happens in the validation hooks)
        self.capture_options = {"sampling": sampling, "samples_per_image": int(samples_per_image), "cap": int(cap)}
        self.last_epoch_analyzed = -1
        self.runs: list[dict] = []
        self.last_result = None
        self._handles: list = []
        self._offset = 0
        self._index_map: torch.Tensor | None = None
        self._batch_ids: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._active = False

    # -- checks that need the model ----------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        try:
            resolve_layer(pl_module, self.layer)
        except DebugAtlasError as exc:
            hint = str(exc).split("HINT:")[-1].strip()
            raise DebugAtlasError(f"`AtlasCallback(layer={self.layer!r})` found no such module in "
                                  f"{type(pl_module).__name__}. HINT: {hint}") from None
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "atlas"

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
        acts = self._gathered(trainer)
        error: BaseException | None = None
        if trainer.is_global_zero:
            try:
                dataset = self._val_dataset(trainer)
                self.last_activations = acts
                if self.run_analysis:
                    self._analyze(trainer, pl_module, dataset, acts, epoch)
            except BaseException as exc:  # re-raised below, after the other ranks heard of it
                error = exc
        failure = [f"{type(error).__name__}: {error}" if error is not None else None]
        if _distributed(trainer):
            dist.broadcast_object_list(failure, src=0)
        trainer.strategy.barrier("debugatlas-analysis")
        if error is not None:
            raise error
        if failure[0] is not None:
            raise DebugAtlasError(f"`AtlasCallback` analysis failed on rank 0: {failure[0]} "
                                  "HINT: see rank 0's traceback.")

    def _gathered(self, trainer: pl.Trainer):
        """This rank's ActivationSet, or on several ranks the merged set (collectives on every rank)."""
        try:
            local, problem = self.recorder.result(), None
        except DebugAtlasError as exc:
            local, problem = None, str(exc)
        self.recorder.reset()
        if not _distributed(trainer):
            if problem is not None:
                raise DebugAtlasError(problem)
            return local
        payload = None if local is None else _plain(local)
        gathered: list = [None] * dist.get_world_size()
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

    def _analyze(self, trainer, pl_module, dataset, acts, epoch: int) -> None:
        from ..pipeline import analyze

        out = self.dirpath / self.subdir.format(epoch=epoch) if self.subdir else self.dirpath
        result = analyze(pl_module, dataset, self.layer, pairs=self.pairs, normalize=self.normalize,
                         out_dir=out, seed=self.seed, class_names=self.class_names, activations=acts,
                         title=f"{type(pl_module).__name__}, epoch {epoch}", model_spec=self.model_spec,
                         **self.capture_options, **self.analysis_options)
        self.last_result = result
        self.last_epoch_analyzed = epoch
        self.runs.append({"epoch": epoch, "dir": str(out)})
        metrics = {"atlas/accuracy": result.summary["accuracy"], "atlas/num_samples": float(len(acts))}
        for k, pair in enumerate(result.summary["pairs"][:3]):
            metrics[f"atlas/pair{k}_confused"] = float(pair["confused"])
            if pair["patches"]:
                metrics[f"atlas/pair{k}_best_flip_rate"] = max(p["flip_rate"] for p in pair["patches"])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            self._log_images(logger, out, result, trainer.global_step)

    @staticmethod
    def _log_images(logger, out: Path, result, step: int) -> None:
        """The atlas, icon atlas and each pair's comparison atlas, to loggers that take images."""
        experiment = getattr(logger, "experiment", None)
        if not hasattr(experiment, "add_image"):
            return
        import numpy as np
        from PIL import Image

        names = ["icon_atlas.png", f"atlas_{result.config.grid_size}.png"]
        for k in range(len(result.pairs)):
            names += [f"pair{k}_comparison_icons.png", f"pair{k}_comparison.png"]
        for name in names:
            path = out / name
            if path.exists():
                image = np.asarray(Image.open(path).convert("RGB"))
                experiment.add_image(f"atlas/{path.stem}", image, step, dataformats="HWC")

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
        return {"last_epoch_analyzed": self.last_epoch_analyzed, "runs": list(self.runs)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch_analyzed = int(state_dict.get("last_epoch_analyzed", -1))
        self.runs = list(state_dict.get("runs", []))


def _distributed(trainer: pl.Trainer) -> bool:
    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


def _plain(acts) -> dict[str, Any]:
    """The ActivationSet's fields as plain values and in-memory tensors, for pickling to other ranks."""
    return {"vectors": torch.as_tensor(acts.vectors).clone(), "image_ids": acts.image_ids, "labels": acts.labels,
            "preds": acts.preds, "positions": acts.positions, "layer": acts.layer,
            "spatial_shape": acts.spatial_shape, "num_offered": acts.num_offered}
