"""An online k-nearest-neighbour probe: how well the current embeddings separate a small labelled set.

Every ``every_n_steps`` optimiser steps, the tumour-centred crops of a labelled case table are embedded
with the encoder being trained, and each case is classified by its ``k`` nearest neighbours (cosine
similarity, leave-one-out). The balanced accuracy is logged as ``val_knn_acc`` beside the loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from .data import PreprocessConfig, preprocess_volume, read_nifti
from .data.crops import crop_start
from .data.volume import read_mask
from .errors import InputError

__all__ = ["KnnProbe", "knn_balanced_accuracy"]


def knn_balanced_accuracy(features, labels, k=5):
    """Leave-one-out k-NN (cosine) balanced accuracy of ``features`` (n, d) for ``labels`` (n,)."""
    z = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-float("inf"))
    labels = np.asarray(labels)
    neighbours = sim.topk(min(k, len(labels) - 1), dim=1).indices.numpy()
    classes = np.unique(labels)
    votes = np.stack([(labels[neighbours] == c).sum(1) for c in classes], axis=1)
    predicted = classes[votes.argmax(1)]
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in classes]))


class KnnProbe(pl.Callback):
    """Log ``val_knn_acc`` for ``label`` of the cases in ``cases_csv`` (needs ``ct`` and ``tumor_mask``)."""

    def __init__(self, cases_csv, *, patch, spacing_mm, label="subtype", every_n_steps=50, k=5):
        path = Path(cases_csv)
        try:
            table = pd.read_csv(path, keep_default_na=False)
        except Exception as err:
            raise InputError(f"{path}: cannot read the probe case table ({err}).") from None
        missing = {"ct", "tumor_mask", label} - set(table.columns)
        if missing:
            raise InputError(f"{path}: the probe case table lacks the column(s) {sorted(missing)}.")
        table = table[table[label] != ""]
        if table[label].nunique() < 2 or len(table) < 4:
            raise InputError(f"{path}: the probe needs at least 4 cases and 2 values of {label!r}.")
        config = PreprocessConfig(spacing_mm=(spacing_mm,) * 3)
        crops, rng = [], np.random.default_rng(0)
        for _, row in table.iterrows():
            volume = read_nifti(path.parent / row["ct"], case_id=str(row.get("case_id", "")))
            mask = read_mask(path.parent / row["tumor_mask"], volume)
            data, _, mask = preprocess_volume(volume, config, mask)
            pad = [(0, 0)] + [(0, max(p - s, 0)) for s, p in zip(data.shape[1:], patch)]
            data, mask = np.pad(data, pad, mode="edge"), np.pad(mask, pad[1:])
            centre = np.round(np.argwhere(mask).mean(0)).astype(int) if mask.any() else np.array(data.shape[1:]) // 2
            start = np.clip(centre - np.asarray(patch) // 2, 0, np.array(data.shape[1:]) - patch)
            crops.append(data[(slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))])
        self.crops = torch.from_numpy(np.stack(crops).astype(np.float32))
        self.labels = table[label].to_numpy()
        self.every, self.k, self._last = int(every_n_steps), int(k), -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._last or step % self.every or not trainer.is_global_zero:
            return
        self._last = step
        if self.crops.shape[1] != pl_module.backbone.in_channels:
            raise InputError(f"probe: the cases have {self.crops.shape[1]} channels, the encoder {pl_module.backbone.in_channels}.")
        was_training = pl_module.backbone.training
        pl_module.backbone.eval()
        with torch.no_grad():
            features = torch.cat([pl_module.backbone(self.crops[i:i + 8].to(pl_module.device)).float().cpu()
                                  for i in range(0, len(self.crops), 8)])
        pl_module.backbone.train(was_training)
        pl_module.log("val_knn_acc", knn_balanced_accuracy(features, self.labels, self.k), rank_zero_only=True)
