"""Augmented views made on the training device, a whole batch at a time.

On a GPU the per-sample MONAI views of :class:`~ssl_rcc.data.views.ViewTransform`, made by CPU loader
workers, are the bottleneck: 15 workers make about 44 two-view volumes/s while an H100 trains a 3D
ResNet-18 on 90-140 (benchmarks/RESULTS.md). Here the same families of augmentation are tensor
operations over the batch: flips, rotation and scaling folded into one ``affine_grid``/``grid_sample``
resampling, intensity scale and shift, gamma, Gaussian noise and Gaussian blur as one grouped
separable convolution. The loader then only cuts crops.

Each sample's augmentation is a function of its own seed (drawn by the dataset from the run seed and
the sample number), never of the other samples in the batch, so a resumed run on the same device sees
the same views.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["BatchViewTransform", "rotation_matrices", "resample_affine", "gaussian_blur"]


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians about the X, Y and Z axes -> (B, 3, 3) rotations ``Rz @ Ry @ Rx``."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def stack(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = stack([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    ry = stack([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rz = stack([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def resample_affine(x: torch.Tensor, matrices: torch.Tensor, *, padding_mode="border") -> torch.Tensor:
    """Resample each volume of ``x`` (B, C, X, Y, Z) at ``matrices @ p`` about the volume centre.

    ``matrices`` (B, 3, 3) act on voxel coordinates in (X, Y, Z) order, in voxel units, so a rotation
    stays a rotation on non-cubic crops; output voxel p takes the (trilinear) value at input
    ``centre + M (p - centre)``. An identity or a flip reproduces the input exactly.
    """
    sizes = torch.tensor(x.shape[2:], dtype=matrices.dtype, device=matrices.device)
    half = (sizes - 1) / 2  # voxel units per normalised unit (align_corners=True)
    # normalised u = (p - centre) / half, so entry (i, j) of the voxel-unit matrix scales by half_j / half_i
    m = matrices * half[None, None, :] / half[None, :, None]
    m = m.flip(-1).flip(-2)  # grid_sample orders coordinates (Z, Y, X) = (W, H, D)
    theta = torch.cat([m, torch.zeros_like(m[:, :, :1])], dim=-1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor, *, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of each volume of ``x`` (B, C, X, Y, Z) with its own (B, 3) sigmas in
    voxels (0 leaves an axis unchanged); kernels span +-``radius`` voxels, edges replicated."""
    b, c = x.shape[:2]
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    safe = sigmas.to(device=x.device, dtype=torch.float32).clamp_min(1e-3)
    kernels = torch.exp(-0.5 * (offsets[None, None, :] / safe[:, :, None]) ** 2)  # (B, 3, K)
    kernels = kernels / kernels.sum(-1, keepdim=True)
    delta = (offsets == 0).to(kernels.dtype)
    kernels = torch.where((sigmas.to(x.device) > 0)[:, :, None], kernels, delta)
    out = x.reshape(1, b * c, *x.shape[2:])
    for axis in range(3):
        k = kernels[:, axis].repeat_interleave(c, dim=0).to(x.dtype)  # (B*C, K)
        shape = [b * c, 1, 1, 1, 1]
        shape[2 + axis] = 2 * radius + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius  # F.pad lists the last axis first
        out = F.conv3d(F.pad(out, pad, mode="replicate"), k.reshape(shape), groups=b * c)
    return out.reshape(x.shape)


class BatchViewTransform:
    """Random 3D augmentations of a batch (B, C, X, Y, Z) in [0, 1], one seed per sample.

    The parameters mirror :class:`~ssl_rcc.data.views.ViewTransform` (MONAI's RandFlip, RandAffine,
    RandScaleIntensity, RandShiftIntensity, RandAdjustContrast, RandGaussianNoise with a standard
    deviation drawn in [0, ``noise_std``], RandGaussianSmooth); ``geometric=False`` keeps flips and
    intensity changes only (MAE's views).
    """

    def __init__(self, *, flip_prob=0.5, rotate_deg=10.0, scale=0.1, intensity=0.1, gamma=(0.7, 1.5),
                 noise_std=0.03, blur_sigma=(0.5, 1.0), prob=0.5, geometric=True):
        self.flip_prob, self.rotate, self.scale = float(flip_prob), math.radians(rotate_deg), float(scale)
        self.intensity, self.gamma, self.noise_std = float(intensity), tuple(gamma), float(noise_std)
        self.blur_sigma, self.prob, self.geometric = tuple(blur_sigma), float(prob), bool(geometric)

    def draw(self, seeds: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample parameters from per-sample generators: a dict of (B, ...) CPU tensors."""
        u = torch.stack([torch.rand(20, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        on = u[:, :6] < torch.tensor([self.prob] * 6)  # affine, scale, shift, gamma, noise, blur
        lo, hi = self.gamma
        return {
            "flip": u[:, 6:9] < self.flip_prob,
            "angles": torch.where(on[:, :1], (2 * u[:, 9:12] - 1) * self.rotate, 0.0),
            "zoom": torch.where(on[:, :1], 1 + (2 * u[:, 12:15] - 1) * self.scale, 1.0),
            "factor": torch.where(on[:, 1], 1 + (2 * u[:, 15] - 1) * self.intensity, 1.0),
            "offset": torch.where(on[:, 2], (2 * u[:, 16] - 1) * self.intensity, 0.0),
            "gamma": torch.where(on[:, 3], lo + (hi - lo) * u[:, 17], 1.0),
            "noise_std": torch.where(on[:, 4], u[:, 18] * self.noise_std, 0.0),
            "sigma": torch.where(on[:, 5:6], self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * u[:, 19:20], 0.0).expand(-1, 3),
        }

    def __call__(self, x: torch.Tensor, seeds) -> torch.Tensor:
        """``x``: (B, C, X, Y, Z) tensor on any device; ``seeds``: B integers. Returns float32."""
        seeds = [int(s) for s in (seeds.tolist() if torch.is_tensor(seeds) else seeds)]
        x = x.float()
        p = self.draw(seeds)
        dev = x.device
        if self.geometric:
            signs = 1.0 - 2.0 * p["flip"].double()
            matrices = rotation_matrices(p["angles"].double()) * p["zoom"].double()[:, None, :] * signs[:, None, :]
            x = resample_affine(x, matrices.to(dev, torch.float32))
        else:
            for axis in range(3):
                flip = p["flip"][:, axis].to(dev)[:, None, None, None, None]
                x = torch.where(flip, x.flip(2 + axis), x)
        view = (-1, 1, 1, 1, 1)
        x = x * p["factor"].to(dev).view(view) + p["offset"].to(dev).view(view)
        if bool((p["gamma"] != 1.0).any()):
            gamma = p["gamma"].to(dev).view(view)
            low = x.amin(dim=(1, 2, 3, 4), keepdim=True)
            span = x.amax(dim=(1, 2, 3, 4), keepdim=True) - low
            adjusted = ((x - low) / (span + 1e-7)).pow(gamma) * span + low  # MONAI's RandAdjustContrast
            x = torch.where(gamma != 1.0, adjusted, x)
        std = p["noise_std"]
        if bool((std > 0).any()):
            x = x + _noise(x, seeds) * std.to(dev).view(view)
        if self.geometric and bool((p["sigma"] > 0).any()):
            x = gaussian_blur(x, p["sigma"], radius=int(math.ceil(3 * self.blur_sigma[1])))
        return x


def _noise(x, seeds):
    """Standard normal noise shaped like ``x``, each sample's from its own generator (seed + 1), drawn
    where ``x`` lives (a CPU draw and copy would cost more than the view)."""
    out = torch.empty_like(x)
    for i, s in enumerate(seeds):
        out[i].normal_(generator=torch.Generator(device=x.device).manual_seed(s + 1))
    return out
