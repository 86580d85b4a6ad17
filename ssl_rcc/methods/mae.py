"""MAE: mask most 3D patches, encode the visible ones with a ViT, reconstruct the masked voxels.

He et al. "Masked Autoencoders Are Scalable Vision Learners", 2021, https://arxiv.org/abs/2111.06377
The loss is the mean squared error on masked patches, whose voxels are normalised per patch (the
paper's "normalised pixel" target) or, with ``normalise_target=False`` (the recipes), left in the
window's units: on CT the absolute attenuation of each phase is the information, and a per-patch
normalised target asks the encoder to discard it. Token masking and gathering are lightly's; 3D patchify is here.
"""

from __future__ import annotations

import torch
from lightly.models import utils
from monai.networks.blocks import TransformerBlock
from torch import nn

from ..errors import InputError
from .base import SSLMethod


def token_masks(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, masked) token indices of each row of ``noise`` (B, N): the lowest ``N (1 - ratio)`` noise
    values are kept. lightly's ``random_token_mask`` does the same from the global RNG; taking the noise
    lets each sample's mask follow from its own seed, so a resumed run masks as the uninterrupted one."""
    order = torch.argsort(noise, dim=1)
    keep = int(noise.shape[1] * (1 - mask_ratio))
    return order[:, :keep], order[:, keep:]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, X, Y, Z) -> (B, N, p^3 C) patches in the token order of MONAI's ViT patch embedding."""
    b, c, X, Y, Z = x.shape
    x = x.reshape(b, c, X // p, p, Y // p, p, Z // p, p)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (X // p) * (Y // p) * (Z // p), p**3 * c)


class MAE(SSLMethod):
    """Masked autoencoder on a 3D ViT encoder (``vit_tiny`` or ``vit_small``); one view per sample."""

    n_views = 1
    min_batch_size = 1
    geometric_views = False  # masking is the task; the views only flip and change intensity

    def __init__(self, encoder: dict, *, mask_ratio=0.75, decoder_dim=128, decoder_layers=2, normalise_target=True, **kwargs):
        super().__init__(encoder, **kwargs)
        self.save_hyperparameters()
        if self.backbone.kind != "vit":
            raise InputError(f"method mae needs a ViT encoder (vit_tiny or vit_small), not {self.backbone.architecture}.")
        p, patch = self.backbone.vit_patch, self.backbone.patch
        self.n_tokens = (patch[0] // p) * (patch[1] // p) * (patch[2] // p)
        width = self.backbone.out_dim
        self.decoder_embed = nn.Linear(width, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.n_tokens, decoder_dim))
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = nn.ModuleList([TransformerBlock(decoder_dim, 4 * decoder_dim, 4) for _ in range(decoder_layers)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, p**3 * self.backbone.in_channels)

    def compute_loss(self, views: list[torch.Tensor], seeds: torch.Tensor | None = None) -> torch.Tensor:
        x = views[0]
        b = x.shape[0]
        vit = self.backbone.net
        tokens = vit.patch_embedding(x)  # (B, N, D) with position embedding
        if seeds is None:
            noise = torch.rand(b, self.n_tokens)
        else:  # seed + 2: view parameters use the seed, device noise seed + 1
            noise = torch.stack([torch.rand(self.n_tokens, generator=torch.Generator().manual_seed(int(s) + 2))
                                 for s in seeds[:, 0].tolist()])
        idx_keep, idx_mask = token_masks(noise.to(x.device), self.hparams.mask_ratio)
        h = utils.get_at_index(tokens, idx_keep)
        for block in vit.blocks:
            h = block(h)
        h = self.decoder_embed(vit.norm(h))
        full = utils.repeat_token(self.mask_token, (b, self.n_tokens))
        full = utils.set_at_index(full, idx_keep, h.to(full.dtype)) + self.decoder_pos
        for block in self.decoder:
            full = block(full)
        pred = utils.get_at_index(self.decoder_pred(self.decoder_norm(full)), idx_mask)
        target = utils.get_at_index(patchify(x, self.backbone.vit_patch), idx_mask)
        if self.hparams.normalise_target:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / torch.sqrt(var + 1e-6)
        return torch.mean((pred - target) ** 2)
