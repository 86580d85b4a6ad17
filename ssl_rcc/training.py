"""Lightning plumbing for pretraining: data module, atomic checkpoints, a continuous metrics.csv,
representation health."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from kinetics.errors import KineticsInputError
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from .data.views import PretrainDataset, StepSampler
from .errors import InputError
from .health import representation_health

__all__ = ["PretrainData", "AtomicCheckpointIO", "MetricsCSV", "RepresentationHealth", "quiet_lightning", "collate_or_error"]

log = logging.getLogger("ssl_rcc")

# Lightning's notices that say nothing about this run (hardware it will not use, advertisements)
LIGHTNING_NOTICES = ("GPU available:", "TPU available:", "HPU available:", "Tip:", "LitLogger")
# warnings raised inside Lightning about Lightning or about settings chosen on purpose
LIGHTNING_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*", ".*does not have many workers.*",
                      ".*smaller than the logging interval.*")


class _DropNotices(logging.Filter):
    def filter(self, record):
        message = record.getMessage()
        return not any(notice in message for notice in LIGHTNING_NOTICES)


@contextlib.contextmanager
def quiet_lightning(*ignore: str) -> Iterator[None]:
    """Lightning without its notices (hardware, tips) and its own deprecation warnings, plus the
    warnings matching the ``ignore`` patterns, for the duration of the block only: the filters are
    restored afterwards, so a caller's own warning settings are left as they were."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    notices = _DropNotices()
    logger.addFilter(notices)
    try:
        with warnings.catch_warnings():
            for pattern in LIGHTNING_WARNINGS + ignore:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        logger.removeFilter(notices)


class _SamplesOrErrors(Dataset):
    """A map-style dataset whose bad-input error comes back as the sample: a loader worker then sends
    the exception itself to the training process (torch sends only its type and traceback text)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except KineticsInputError as err:
            return err


class _StreamOrError(IterableDataset):
    """A stream that ends with its bad-input error as the last sample (as :class:`_SamplesOrErrors`)."""

    def __init__(self, stream):
        self.stream = stream

    def __iter__(self):
        try:
            yield from self.stream
        except KineticsInputError as err:
            yield err


def collate_or_error(samples: list) -> Any:
    """The batch of ``samples``, or the first bad-input error among them (raised again in the training
    process by :meth:`ssl_rcc.methods.base.SSLMethod.on_before_batch_transfer`)."""
    error = next((s for s in samples if isinstance(s, BaseException)), None)
    return error if error is not None else default_collate(samples)


class PretrainData(pl.LightningDataModule):
    """Batches of views; the sampler starts at the trainer's (restored) global step, on this rank."""

    def __init__(self, dataset: PretrainDataset | IterableDataset, *, batch_size, accumulate, max_steps, workers):
        super().__init__()
        self.dataset, self.batch_size, self.accumulate = dataset, int(batch_size), int(accumulate)
        self.max_steps, self.workers = int(max_steps), int(workers)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if isinstance(self.dataset, IterableDataset):  # a stream of shards: it knows its batches itself
            stream = self.dataset
            stream.total_batches = self.max_steps * self.accumulate
            # Lightning restores a resumed run's step before it asks for the loader
            stream.start_batch = trainer.global_step * self.accumulate
            stream.rank, stream.world = trainer.global_rank, trainer.world_size
            return DataLoader(_StreamOrError(stream), batch_size=self.batch_size, num_workers=self.workers,
                              persistent_workers=False, pin_memory=torch.cuda.is_available(), collate_fn=collate_or_error)
        sampler = StepSampler(self.batch_size * self.accumulate, self.max_steps, start_step=lambda: trainer.global_step,
                              rank=trainer.global_rank, world=trainer.world_size)
        return DataLoader(_SamplesOrErrors(self.dataset), batch_size=self.batch_size, sampler=sampler,
                          num_workers=self.workers, persistent_workers=False, pin_memory=torch.cuda.is_available(),
                          drop_last=False, collate_fn=collate_or_error)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a failed write (a full disk) leaves the
    previous checkpoint as it was and raises one clear error."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            tmp.unlink(missing_ok=True)
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            raise InputError(f"{path}: could not write the checkpoint ({reason}); the previous one is kept.") from None

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        # user paths are never unpickled beyond tensors and plain containers
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable checkpoint (truncated or another format: {type(err).__name__}).") from None


class StepProgressBar(pl.callbacks.TQDMProgressBar):
    """The run's steps (a run is one pass of its step sampler, so "Epoch 0" says nothing), with the
    time left and the volumes per second; a resumed run's bar starts at its restored step."""

    def __init__(self, volumes_per_batch: int):
        super().__init__()
        self.volumes_per_batch = int(volumes_per_batch)

    @property
    def train_description(self):
        return "pretraining batches"

    def on_train_epoch_start(self, trainer, *args):
        # Lightning's reset, without its "Epoch 0" description
        bar = self.train_progress_bar
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        total = self.total_train_batches
        bar.reset(total=(None if total == float("inf") else int(total)) if total is not None else None)
        bar.total = (bar.total or 0) + done  # the sampler yields only the batches left
        bar.initial = bar.n = done
        bar.refresh()

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        rate = self.train_progress_bar.format_dict.get("rate") if self.train_progress_bar is not None else None
        if rate:
            items["volumes/s"] = f"{rate * self.volumes_per_batch:.1f}"
        return items


class CheckpointOnSigterm(pl.Callback):
    """Save ``path`` (the run's last.ckpt) when the job is sent SIGTERM, what SLURM and Kubernetes send
    before killing it: Lightning then stops at the end of the step by raising ``SIGTERMException``, and
    this hook runs before its teardown, on every process (saving is collective under DDP)."""

    def __init__(self, path):
        self.path = Path(path)
        self.saved_step = None

    def on_exception(self, trainer, pl_module, exception):
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = int(trainer.global_step)


class MetricsCSV(pl.Callback):
    """Append one row per optimiser step (step, train_loss, lr) to ``path``; on resume, drop rows past
    the restored step so that the curve stays continuous."""

    fields = ("step", "epoch", "train_loss", "lr", "val_knn_acc", "rankme", "dead_fraction", "dim_std", "collapsed")

    def __init__(self, path):
        self.path = Path(path)
        self._last_step = -1

    @staticmethod
    def _measured(trainer):
        """Names of the metrics a callback (probe, health) measured at this step: their last values
        otherwise linger in callback_metrics."""
        return {name for cb in trainer.callbacks if getattr(cb, "_last", None) == trainer.global_step
                for name in getattr(cb, "metric_names", ())}

    def on_train_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [{k: r.get(k, "") for k in self.fields} for r in csv.DictReader(fh) if int(r["step"]) <= trainer.global_step]
        with open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)
        self._last_step = trainer.global_step
        for cb in trainer.checkpoint_callbacks:
            # ModelCheckpoint does not restore the step it last saved: after a resume at a checkpoint step it
            # would save again after the first micro-batch, mid-accumulation. The restored step was saved.
            cb._last_global_step_saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or trainer.global_step == self._last_step:
            return  # only after an optimiser step (gradient accumulation)
        self._last_step = trainer.global_step
        metrics = trainer.callback_metrics
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch,
               "train_loss": float(metrics.get("train_loss", float("nan"))), "lr": float(metrics.get("lr", float("nan")))}
        measured = self._measured(trainer)
        for name in self.fields[4:]:
            value = float(metrics[name]) if name in metrics and name in measured else ""
            row[name] = int(value) if name == "collapsed" and value != "" else value
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow(row)


class RepresentationHealth(pl.Callback):
    """Every ``every_n_steps`` optimiser steps (and after the last), embed ``crops`` (n, C, X, Y, Z), a
    fixed set of training crops, with the backbone in eval mode and log :func:`representation_health`;
    warn once per collapse."""

    metric_names = ("rankme", "dead_fraction", "dim_std", "collapsed")

    def __init__(self, crops, *, every_n_steps=50, max_steps=None):
        self.crops = torch.as_tensor(np.asarray(crops, np.float32))
        self.every, self.max_steps = int(every_n_steps), max_steps
        self._last, self._warned, self.history = -1, False, []

    def measure(self, backbone) -> dict:
        was_training = backbone.training
        backbone.eval()
        param = next(backbone.parameters())
        with torch.no_grad():
            z = torch.cat([backbone(self.crops[i:i + 16].to(param.device, param.dtype)).float().cpu()
                           for i in range(0, len(self.crops), 16)])
        backbone.train(was_training)
        return representation_health(z.numpy())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        last = self.max_steps is not None and step >= self.max_steps
        if step == self._last or not trainer.is_global_zero or (step % self.every and not last):
            return
        self._last = step
        health = self.measure(pl_module.backbone)
        self.history.append(dict(step=step, **health))
        for name, value in health.items():
            pl_module.log(name, float(value), rank_zero_only=True)
        if health["collapsed"] and not self._warned:
            self._warned = True
            log.warning("step %d: the representation is collapsing (effective rank %.1f, %.0f%% dead dimensions); "
                        "lower the learning rate, raise the temperature or check the views", step, health["rankme"],
                        100 * health["dead_fraction"])
        elif not health["collapsed"]:
            self._warned = False
