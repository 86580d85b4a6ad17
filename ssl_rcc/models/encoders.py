"""3D encoders from MONAI: ResNet-10 (slim), ResNet-18/34/50 and a small ViT, each returning one embedding per volume.

Input tensors are (B, C, X, Y, Z) in the canonical RAS axis order of :mod:`ssl_rcc.data`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError

__all__ = ["Encoder", "build_encoder", "ARCHITECTURES", "ENCODER_FORMAT"]

ENCODER_FORMAT = "ssl-rcc-encoder/1"  # the "format" of an exported encoder.json

# name -> (kind, settings); ViT sizes chosen to train on a CPU as well as a GPU
ARCHITECTURES = {
    # one basic block per stage at a quarter of the usual widths and a 3^3 first convolution (a 7^3 one
    # at full resolution cost 5x the rest of the network on a CPU): the CPU recipe's encoder (issue 11)
    "resnet10_slim": ("resnet", {"depth": 10, "widths": (16, 32, 64, 128), "first_kernel": 3}),
    "resnet18": ("resnet", {"depth": 18}),
    "resnet34": ("resnet", {"depth": 34}),
    "resnet50": ("resnet", {"depth": 50}),
    "vit_tiny": ("vit", {"hidden_size": 192, "mlp_dim": 768, "num_layers": 6, "num_heads": 3}),
    "vit_small": ("vit", {"hidden_size": 384, "mlp_dim": 1536, "num_layers": 8, "num_heads": 6}),
}


class Encoder(nn.Module):
    """A backbone with ``out_dim`` features per volume.

    ``architecture``, ``in_channels``, ``patch`` (input size, voxels) and ``vit_patch`` (ViT token
    size) are kept so that an exported encoder can be rebuilt from its JSON sidecar.
    """

    def __init__(self, architecture: str, in_channels: int, patch, vit_patch: int = 16):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise InputError(f"architecture: unknown {architecture!r}; expected one of {sorted(ARCHITECTURES)}.")
        self.architecture, self.in_channels = architecture, int(in_channels)
        self.patch, self.vit_patch = tuple(int(p) for p in patch), int(vit_patch)
        kind, settings = ARCHITECTURES[architecture]
        self.kind = kind
        if kind == "resnet" and "widths" in settings:
            from monai.networks.nets import ResNet

            self.net = ResNet("basic", [1, 1, 1, 1], list(settings["widths"]), spatial_dims=3,
                              n_input_channels=self.in_channels, feed_forward=False, shortcut_type="B",
                              conv1_t_size=settings["first_kernel"])
            self.out_dim = settings["widths"][-1]
        elif kind == "resnet":
            from monai.networks import nets

            self.net = getattr(nets, f"resnet{settings['depth']}")(
                spatial_dims=3, n_input_channels=self.in_channels, feed_forward=False, shortcut_type="B"
            )
            self.out_dim = 2048 if settings["depth"] == 50 else 512
        else:
            from monai.networks.nets import ViT

            if any(p % self.vit_patch for p in self.patch):
                raise InputError(f"patch: {self.patch} voxels is not a multiple of the ViT token size {self.vit_patch}.")
            self.net = ViT(in_channels=self.in_channels, img_size=self.patch, patch_size=self.vit_patch,
                           classification=False, spatial_dims=3, **settings)
            self.out_dim = settings["hidden_size"]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """ViT only: (B, N, hidden) token features."""
        return self.net(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "resnet":
            return self.net(x)
        return self.tokens(x).mean(dim=1)

    def config(self) -> dict:
        return {"architecture": self.architecture, "in_channels": self.in_channels, "patch": list(self.patch),
                "vit_patch": self.vit_patch, "out_dim": self.out_dim}


def build_encoder(architecture="resnet18", *, in_channels=1, patch=(64, 64, 64), vit_patch=16) -> Encoder:
    """Build an :class:`Encoder` (see :data:`ARCHITECTURES`)."""
    return Encoder(architecture, in_channels, patch, vit_patch)
