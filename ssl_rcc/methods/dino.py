"""DINO: a student matches a momentum teacher's centred, sharpened output distribution.

Caron et al. "Emerging Properties in Self-Supervised Vision Transformers", 2021,
https://arxiv.org/abs/2104.14294
"""

import copy

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad

from .base import SSLMethod


class DINO(SSLMethod):
    """DINO with a 3D encoder and two global views; output dimension ``out_dim`` (2048)."""

    def __init__(self, encoder: dict, *, out_dim=2048, momentum=0.996, teacher_temp=0.04, **kwargs):
        super().__init__(encoder, **kwargs)
        self.save_hyperparameters()
        self.head = DINOProjectionHead(self.backbone.out_dim, 512, 64, out_dim, freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(self.backbone)
        self.teacher_head = DINOProjectionHead(self.backbone.out_dim, 512, 64, out_dim)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        # the centring of the teacher's output is the loss's running state, saved with the module
        self.criterion = DINOLoss(output_dim=out_dim, warmup_teacher_temp=teacher_temp, teacher_temp=teacher_temp,
                                  warmup_teacher_temp_epochs=0)

    def compute_loss(self, views: list[torch.Tensor], seeds: torch.Tensor | None = None) -> torch.Tensor:
        self.update_momentum_pairs([(self.backbone, self.teacher_backbone), (self.head, self.teacher_head)])
        teacher = [self.teacher_head(self.teacher_backbone(v)).detach() for v in views[:2]]
        student = [self.head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student)

    def on_after_backward(self) -> None:
        # the last layer stays frozen during warm-up; counted in steps, which survive a resume exactly
        self.head.cancel_last_layer_gradients(current_epoch=0 if self.global_step < self.hparams.warmup_steps else 1)
