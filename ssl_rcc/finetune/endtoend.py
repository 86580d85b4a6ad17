"""End-to-end fine-tuning: the encoder trained with a small head on the labelled cases (Lightning).

The head sees the encoder's embedding of the tumour crop (layer-normalised) beside the tabular blocks
(standardised on the training cases, as the probe does), one linear layer over both: tabular features
are fused at the head. Training follows Lightning's ``computer_vision_fine_tuning`` example: the
encoder is frozen for the first epochs (``BaseFinetuning``) and then trained at a tenth of the head's
learning rate; batches are class-balanced (``WeightedRandomSampler``); crops are augmented (flips
along each axis, intensity scale and shift per channel); training stops early on the loss of an inner
split of the training cases (a fifth, stratified) and keeps the best epoch's weights; that split also
gives a binary task's threshold. With ``encoder`` untrained it is the usual supervised baseline
("from scratch").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..models import Encoder
from ..training import quiet_lightning
from .heads import BlockScaler, youden_threshold

__all__ = ["FinetuneHead", "FinetuneClassifier"]


class FinetuneClassifier(nn.Module):
    """logits = Linear([LayerNorm(encoder(crop)), tabular]) with dropout; ``n_tabular`` may be 0."""

    def __init__(self, encoder: Encoder, n_tabular: int, n_classes: int, dropout: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.norm = nn.LayerNorm(encoder.out_dim, elementwise_affine=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim + n_tabular, n_classes)

    def forward(self, crops: torch.Tensor, tabular: torch.Tensor) -> torch.Tensor:
        features = self.norm(self.encoder(crops))
        return self.head(self.dropout(torch.cat([features, tabular], dim=1)))


def _augment(crops, generator):
    """Random flips along each spatial axis and a per-channel intensity scale (0.9-1.1) and shift
    (+-0.05), drawn per sample from ``generator``: what a radiologist would not call another lesion."""
    b, c = crops.shape[:2]
    out = crops.clone()
    for axis in (2, 3, 4):
        flip = torch.rand(b, generator=generator) < 0.5
        if flip.any():
            out[flip] = out[flip].flip(axis)
    scale = 0.9 + 0.2 * torch.rand(b, c, 1, 1, 1, generator=generator)
    shift = 0.1 * (torch.rand(b, c, 1, 1, 1, generator=generator) - 0.5)
    return out * scale + shift


def _lightning_module(net, lr, seed):
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net, self.lr = net, lr
            self.generator = torch.Generator().manual_seed(seed)

        def training_step(self, batch, batch_idx):
            crops, tabular, y = batch
            loss = nn.functional.cross_entropy(self.net(_augment(crops, self.generator), tabular), y)
            self.log("train_loss", loss, on_epoch=True, on_step=False, batch_size=len(y))
            return loss

        def validation_step(self, batch, batch_idx):
            crops, tabular, y = batch
            loss = nn.functional.cross_entropy(self.net(crops, tabular), y)
            self.log("val_loss", loss, on_epoch=True, batch_size=len(y))

        def configure_optimizers(self):
            # the head only: the encoder joins as its own parameter group when it is unfrozen
            return torch.optim.AdamW(self.net.head.parameters(), lr=self.lr, weight_decay=1e-4)

    return Module()


def _callbacks(unfreeze_at_epoch, encoder_lr_factor, patience, has_validation):
    from pytorch_lightning.callbacks import BaseFinetuning, Callback, EarlyStopping

    class EncoderUnfreeze(BaseFinetuning):
        """The encoder frozen until ``unfreeze_at_epoch``, then trained at a lower learning rate."""

        def freeze_before_training(self, pl_module):
            self.freeze(pl_module.net.encoder)  # batch norm keeps adapting, as in Lightning's example

        def finetune_function(self, pl_module, current_epoch, optimizer):
            if current_epoch == unfreeze_at_epoch:
                self.unfreeze_and_add_param_group(pl_module.net.encoder, optimizer, lr=pl_module.lr * encoder_lr_factor)

    class KeepBest(Callback):
        """The weights of the epoch with the lowest validation loss (or the last, without validation)."""

        best, state = float("inf"), None

        def on_validation_epoch_end(self, trainer, pl_module):
            loss = trainer.callback_metrics.get("val_loss")
            if loss is not None and float(loss) < self.best and not trainer.sanity_checking:
                self.best, self.state = float(loss), copy.deepcopy(pl_module.net.state_dict())

    callbacks = [EncoderUnfreeze(), KeepBest()]
    if has_validation:
        callbacks.append(EarlyStopping("val_loss", patience=patience, mode="min"))
    return callbacks


def _inner_split(y_index, seed, fraction=0.2):
    """(train, validation) positions: a stratified fifth held out, one case of each class with at
    least 3; no validation when no class has enough."""
    rng = np.random.default_rng(seed)
    validation = []
    for c in np.unique(y_index):
        members = np.flatnonzero(y_index == c)
        if len(members) >= 3:
            validation.extend(rng.choice(members, size=max(1, int(round(fraction * len(members)))), replace=False))
    validation = np.sort(np.array(validation, int))
    if len(np.unique(y_index[validation])) < len(np.unique(y_index)):
        return np.arange(len(y_index)), np.array([], int)
    return np.setdiff1d(np.arange(len(y_index)), validation), validation


class FinetuneHead:
    """The encoder and a linear head trained end to end (see the module docstring).

    ``blocks`` hold ``image``: (n, C, X, Y, Z) tumour crops (as :func:`ssl_rcc.features.image.tumour_crop`
    makes them), and any tabular blocks (n, d).
    """

    protocol = "finetune"

    def __init__(self, classes, *, encoder_config, encoder_state=None, epochs=30, lr=1e-2, batch_size=8,
                 unfreeze_at_epoch=2, encoder_lr_factor=0.1, patience=5, seed=0, accelerator="cpu"):
        self.classes, self.encoder_config, self.encoder_state = tuple(classes), dict(encoder_config), encoder_state
        self.epochs, self.lr, self.batch_size = int(epochs), float(lr), int(batch_size)
        self.unfreeze_at_epoch, self.encoder_lr_factor, self.patience = int(unfreeze_at_epoch), float(encoder_lr_factor), int(patience)
        self.seed, self.accelerator = int(seed), accelerator

    def _net(self, n_tabular):
        cfg = self.encoder_config
        encoder = Encoder(cfg["architecture"], cfg["in_channels"], cfg["patch"], cfg.get("vit_patch", 16))
        if self.encoder_state is not None:
            encoder.load_state_dict(self.encoder_state)
        return FinetuneClassifier(encoder, n_tabular, len(self.classes))

    def _tabular(self, blocks):
        if not self.tabular_names:
            return np.zeros((len(blocks["image"]), 0), np.float32)
        return self.scaler.transform(blocks, self.tabular_names).astype(np.float32)

    def fit(self, blocks: dict, y, **_):
        import pytorch_lightning as pl
        from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

        y_index = np.array([self.classes.index(v) for v in np.asarray(y, dtype=str)])
        self.blocks_used = tuple(blocks)
        self.tabular_names = [b for b in blocks if b != "image"]
        self.scaler = BlockScaler().fit({b: blocks[b] for b in self.tabular_names})
        tabular = self._tabular(blocks)
        train, validation = _inner_split(y_index, self.seed)
        with torch.random.fork_rng(devices=[]):  # seeded, without touching the caller's generator
            torch.manual_seed(self.seed)
            self.net = self._net(tabular.shape[1])
            data = [torch.as_tensor(np.asarray(blocks["image"], np.float32)), torch.as_tensor(tabular),
                    torch.as_tensor(y_index)]
            counts = np.bincount(y_index[train], minlength=len(self.classes))
            weights = 1.0 / counts[y_index[train]]
            sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=len(train), replacement=True,
                                            generator=torch.Generator().manual_seed(self.seed))
            loader = DataLoader(TensorDataset(*(d[train] for d in data)), batch_size=self.batch_size, sampler=sampler)
            val_loader = (DataLoader(TensorDataset(*(d[validation] for d in data)), batch_size=self.batch_size)
                          if len(validation) else None)
            module = _lightning_module(self.net, self.lr, self.seed)
            callbacks = _callbacks(self.unfreeze_at_epoch, self.encoder_lr_factor, self.patience, val_loader is not None)
            with quiet_lightning():
                trainer = pl.Trainer(max_epochs=self.epochs, accelerator=self.accelerator, devices=1, logger=False,
                                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                     callbacks=callbacks, num_sanity_val_steps=0, log_every_n_steps=1)
                trainer.fit(module, loader, val_loader)
        best = callbacks[1].state
        if best is not None:
            self.net.load_state_dict(best)
        self.epochs_trained = int(trainer.current_epoch)
        self.net.eval()
        self.threshold = 0.5
        if len(self.classes) == 2 and len(validation):
            proba = self.predict_proba({b: blocks[b][validation] for b in blocks})
            self.threshold = youden_threshold(y_index[validation] == 1, proba[:, 1])
        return self

    @torch.no_grad()
    def predict_proba(self, blocks: dict) -> np.ndarray:
        self.net.eval()
        crops = torch.as_tensor(np.asarray(blocks["image"], np.float32))
        tabular = torch.as_tensor(self._tabular(blocks))
        logits = torch.cat([self.net(crops[i:i + 32], tabular[i:i + 32]) for i in range(0, len(crops), 32)])
        return torch.softmax(logits, dim=1).double().numpy()

    def state(self) -> tuple:
        meta = {"protocol": self.protocol, "classes": list(self.classes), "blocks_used": list(self.blocks_used),
                "tabular_names": self.tabular_names, "encoder_config": self.encoder_config, "threshold": self.threshold,
                "seed": self.seed, "epochs": self.epochs, "epochs_trained": self.epochs_trained, "lr": self.lr}
        arrays = dict(self.scaler.state())
        arrays.update({f"net/{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()})
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays: Mapping[str, np.ndarray]) -> FinetuneHead:
        self = cls(meta["classes"], encoder_config=meta["encoder_config"], seed=meta["seed"], epochs=meta["epochs"], lr=meta["lr"])
        self.blocks_used, self.tabular_names, self.threshold = tuple(meta["blocks_used"]), meta["tabular_names"], meta["threshold"]
        self.epochs_trained = meta["epochs_trained"]
        self.scaler = BlockScaler.from_state(self.tabular_names, arrays)
        self.net = self._net(sum(arrays[f"scaler/{b}/mean"].size for b in self.tabular_names))
        self.net.load_state_dict({k[4:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("net/")})
        self.net.eval()
        return self
