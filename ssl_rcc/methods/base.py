"""The LightningModule every method shares: encoder, optimiser, schedule, logging."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule, cosine_warmup_schedule

from ..models import Encoder

__all__ = ["SSLMethod", "learning_rate_factor"]


def learning_rate_factor(step: int, *, warmup_steps: int, max_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``max_steps``: a pure function of the step."""
    warmup = min(int(warmup_steps), max(int(max_steps) - 1, 0))
    return float(cosine_warmup_schedule(step, max(int(max_steps), 1), 1.0, 0.0, warmup, 0.0))


class SSLMethod(pl.LightningModule):
    """Base of SimCLR, BYOL, DINO and MAE. Subclasses build heads in ``__init__`` and define
    ``compute_loss(views, seeds=None) -> scalar``; ``views`` is a list of (B, C, X, Y, Z) tensors and
    ``seeds`` the (B, n_views) int64 seeds of their samples.

    Hyperparameters are saved (``save_hyperparameters``) so a checkpoint rebuilds the module.
    A batch is ``(*views, seeds)``; when ``device_transform`` is set (a
    :class:`~ssl_rcc.data.batch_views.BatchViewTransform`) the views arrive as plain crops and are
    augmented here, on the training device, from the per-view seeds.
    """

    n_views = 2
    geometric_views = True  # rotations, scaling and blur in the views
    min_batch_size = 2  # contrastive losses and BatchNorm heads need more than one sample per device
    device_transform = None  # a BatchViewTransform when the views are made on the training device

    def __init__(self, encoder: dict, *, lr=1e-3, weight_decay=0.05, warmup_steps=10, max_steps=100):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = Encoder(encoder["architecture"], encoder["in_channels"], encoder["patch"], encoder.get("vit_patch", 16))

    def update_momentum_pairs(self, pairs: Iterable[tuple[nn.Module, nn.Module]]) -> None:
        """Move each (online, momentum) module pair's momentum copy towards the online one, once per
        optimiser step (not per micro-batch); the momentum rises from ``hparams.momentum`` to 1 on a
        cosine schedule of the step."""
        if self.global_step == getattr(self, "_momentum_step", -1):
            return
        self._momentum_step = self.global_step
        m = cosine_schedule(self.global_step, max(self.hparams.max_steps, 1), self.hparams.momentum, 1.0)
        for online, momentum in pairs:
            update_momentum(online, momentum, m=m)

    def compute_loss(self, views: list[torch.Tensor], seeds: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover - every method overrides it
        raise NotImplementedError

    def make_views(self, batch: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The views of a batch ``(*views, seeds)``, augmented here if the loader left that to the device."""
        *views, seeds = batch
        if self.device_transform is not None:
            with torch.autocast(device_type=views[0].device.type, enabled=False):  # resampling and blur in fp32
                views = [self.device_transform(v, seeds[:, i]) for i, v in enumerate(views)]
        return views, seeds

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A loader worker's bad-input error arrives as the batch (:func:`ssl_rcc.training.collate_or_error`):
        raised here, in the training process, as it was raised there."""
        if isinstance(batch, BaseException):
            raise batch
        return batch

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        views, seeds = self.make_views(batch)
        loss = self.compute_loss(views, seeds)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=False)
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: learning_rate_factor(step, warmup_steps=self.hparams.warmup_steps,
                                                         max_steps=self.hparams.max_steps))
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
