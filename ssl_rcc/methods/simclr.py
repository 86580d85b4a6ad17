"""SimCLR: two views, a projection head and the NT-Xent loss (lightly).

Chen et al. "A Simple Framework for Contrastive Learning of Visual Representations", 2020,
https://arxiv.org/abs/2002.05709
"""

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from .base import SSLMethod


class SimCLR(SSLMethod):
    """SimCLR with a 3D encoder; embeddings (B, out_dim), projections (B, 128)."""

    def __init__(self, encoder: dict, *, temperature=0.1, **kwargs):
        super().__init__(encoder, **kwargs)
        self.save_hyperparameters()
        self.head = SimCLRProjectionHead(self.backbone.out_dim, 512, 128)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def compute_loss(self, views: list[torch.Tensor], seeds: torch.Tensor | None = None) -> torch.Tensor:
        z0, z1 = (self.head(self.backbone(v)) for v in views[:2])
        return self.criterion(z0, z1)
