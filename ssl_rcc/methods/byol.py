"""BYOL: an online network predicts a momentum (target) network's projection of the other view.

Grill et al. "Bootstrap Your Own Latent", 2020, https://arxiv.org/abs/2006.07733
"""

import copy

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad

from .base import SSLMethod


class BYOL(SSLMethod):
    """BYOL with a 3D encoder; projections (B, 256); the target's momentum rises from 0.99 to 1."""

    def __init__(self, encoder: dict, *, momentum=0.99, **kwargs):
        super().__init__(encoder, **kwargs)
        self.save_hyperparameters()
        self.head = BYOLProjectionHead(self.backbone.out_dim, 1024, 256)
        self.predictor = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.head_momentum = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def compute_loss(self, views: list[torch.Tensor], seeds: torch.Tensor | None = None) -> torch.Tensor:
        self.update_momentum_pairs([(self.backbone, self.backbone_momentum), (self.head, self.head_momentum)])
        x0, x1 = views[:2]
        p0, p1 = (self.predictor(self.head(self.backbone(x))) for x in (x0, x1))
        z0, z1 = (self.head_momentum(self.backbone_momentum(x)).detach() for x in (x0, x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
