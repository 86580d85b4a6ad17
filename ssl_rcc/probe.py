"""An online k-nearest-neighbour probe: how well the current embeddings separate a small labelled set.

Every ``every_n_steps`` optimiser steps, the tumour-centred crops of a labelled case table are embedded
with the encoder being trained, and each case is classified by its ``k`` nearest neighbours (cosine
similarity, leave-one-out). The balanced accuracy is logged as ``val_knn_acc`` beside the loss.
"""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from numpy.typing import ArrayLike

from .data import PreprocessConfig, preprocess_volume, read_nifti
from .data.cases import read_case_table
from .data.volume import read_mask
from .errors import InputError

__all__ = ["KnnProbe", "knn_balanced_accuracy"]


def knn_balanced_accuracy(features: torch.Tensor | ArrayLike, labels: ArrayLike, k: int = 5) -> float:
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

    metric_names = ("val_knn_acc",)

    def __init__(self, cases_csv, *, patch, spacing_mm, label="subtype", every_n_steps=50, k=5):
        from .features.image import tumour_crop

        table = read_case_table(cases_csv, require=("ct", "tumor_mask"))
        if label not in table.columns:
            raise InputError(f"{cases_csv}: the probe case table lacks the column {label!r}.")
        table = table[table[label] != ""]
        if table[label].nunique() < 2 or len(table) < 4:
            raise InputError(f"{cases_csv}: the probe needs at least 4 cases and 2 values of {label!r}.")
        config = PreprocessConfig(spacing_mm=(spacing_mm,) * 3)
        crops = []
        for _, row in table.iterrows():
            volume = read_nifti(row["ct"], case_id=row["case_id"])
            data, _, mask = preprocess_volume(volume, config, read_mask(row["tumor_mask"], volume))
            crops.append(tumour_crop(data, mask, patch))
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
