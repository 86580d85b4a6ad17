"""Training samples for self-supervised pretraining: random 3D crops and augmented views.

Sample ``i`` of a run is a pure function of (seed, i): which volume, where to crop (the lesion's cube or
kidney-centred when masks exist), which augmentations. A run resumed at step s therefore sees exactly the samples an
uninterrupted run would, and each DDP rank takes its own share of every step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.utils.data import Dataset, Sampler

from ..errors import InputError
from .cache import LESION, CachedArchive
from .crops import box_crop, crop_start, lesion_box

VIEW_SCALE_JITTER = 0.1  # the views of one sample differ in scale by at most this fraction
LESION_VIEW_ZOOM = (0.8, 1.0)  # a lesion view: this fraction of the lesion's cube (most keep its ring)
LESION_PROB = 0.8  # of a lesion sample, when the volume's mask labels a lesion

__all__ = ["ViewTransform", "IntensityViewTransform", "PretrainDataset", "StepSampler", "make_views", "check_patch_fits",
           "tissue_centre", "lesion_views"]


class ViewTransform:
    """Random 3D augmentations of a (C, X, Y, Z) tensor with values in [0, 1] (MONAI array transforms):
    flips, small rotations and scaling, intensity scale and shift, gamma, Gaussian noise and blur.
    ``geometric=False`` keeps flips and intensity changes only (the masked-image methods' views)."""

    def __init__(self, *, flip_prob=0.5, rotate_deg=10.0, scale=0.1, intensity=0.1, gamma=(0.7, 1.5),
                 noise_std=0.03, blur_sigma=(0.5, 1.0), prob=0.5, geometric=True):
        from monai import transforms as T

        rad = np.deg2rad(rotate_deg)
        steps = [T.RandFlip(prob=flip_prob, spatial_axis=a) for a in range(3)]
        if geometric:  # interpolation and blur are the costly ones; MAE does without them
            steps.append(T.RandAffine(prob=prob, rotate_range=(rad, rad, rad), scale_range=(scale,) * 3, padding_mode="border"))
        steps += [
            T.RandScaleIntensity(factors=intensity, prob=prob),
            T.RandShiftIntensity(offsets=intensity, prob=prob),
            T.RandAdjustContrast(prob=prob, gamma=gamma),
            T.RandGaussianNoise(prob=prob, std=noise_std),
        ]
        if geometric:
            steps.append(T.RandGaussianSmooth(sigma_x=blur_sigma, sigma_y=blur_sigma, sigma_z=blur_sigma, prob=prob))
        self.compose = T.Compose(steps)

    def __call__(self, x, seed):
        """``x``: (C, X, Y, Z) array (any float dtype); returns a float32 tensor."""
        self.compose.set_random_state(seed=int(seed))
        out = self.compose(torch.from_numpy(np.asarray(x, dtype=np.float32)))
        return torch.as_tensor(out, dtype=torch.float32)


class IntensityViewTransform:
    """Flips, intensity scale and shift, gamma (``None``: none) and noise of a (C, X, Y, Z) array in
    [0, 1], written directly in torch (no resampling): the light views of the masked-image methods and
    of the CPU recipe, cheap enough that the input pipeline outpaces the training step."""

    def __init__(self, *, flip_prob=0.5, intensity=0.1, gamma=(0.7, 1.5), noise_std=0.03, prob=0.5):
        self.flip_prob, self.intensity, self.gamma = flip_prob, intensity, gamma
        self.noise_std, self.prob = noise_std, prob

    def __call__(self, x, seed):
        g = torch.Generator().manual_seed(int(seed))
        u = torch.rand(9, generator=g).tolist()
        flips = (slice(None),) + tuple(slice(None, None, -1) if u[d] < self.flip_prob else slice(None) for d in range(3))
        # one copy: flipped while converted to float32; every op below works in place on it
        x = torch.from_numpy(np.array(np.asarray(x)[flips], dtype=np.float32))
        scale = 1.0 + self.intensity * (2 * u[6] - 1) if u[3] < self.prob else 1.0
        shift = self.intensity * (2 * u[7] - 1) if u[4] < self.prob else 0.0
        if scale != 1.0 or shift != 0.0:
            x.mul_(scale).add_(shift)
        if u[5] < self.prob and self.gamma is not None:
            lo, hi = self.gamma
            x.clamp_(0.0, 1.0).pow_(lo + (hi - lo) * u[8])
        if torch.rand(1, generator=g).item() < self.prob:
            # zero-mean uniform noise of the same SD: several times cheaper to draw than Gaussian
            noise = torch.rand(x.shape, generator=g)
            x.add_(noise.sub_(0.5).mul_(self.noise_std * 12**0.5))
        return x


class PretrainDataset(Dataset):
    """Views of random crops of a cached archive, indexed by the run's global sample number.

    Parameters
    ----------
    archive : CachedArchive
    patch : (3,) int, voxels
    n_views : int
        2 for the contrastive methods (two overlapping crops), 1 for MAE.
    kidney_prob : float
        Probability of a kidney-centred crop when the volume has a mask.
    lesion_prob : float
        With ``scale``: probability that a sample is the lesion's cube (the crop the heads embed) when
        the volume has a lesion mask.
    transform : callable(crop, seed) or None
        Makes a view of a crop in the loader (default :class:`ViewTransform`).
    device_views : bool
        Return the crops untransformed (float16): the views are made on the training device, a batch
        at a time (:class:`~ssl_rcc.data.batch_views.BatchViewTransform`, from the same seeds).
    scale : None or (lo, hi)
        Each view a cube of ``patch`` times a factor drawn in [lo, hi], resampled to ``patch``: views
        at the scales of the tumour crops that will be embedded (:func:`ssl_rcc.features.image.lesion_crop`);
        None: crops of exactly ``patch`` voxels.

    An item is ``(view_0, ..., view_{n-1}, seeds)``: (C, X, Y, Z) tensors and the int64 seed of each view.
    """

    def __init__(self, archive: CachedArchive, patch, *, n_views=2, seed=0, kidney_prob=0.8, transform=None,
                 device_views=False, scale=None, lesion_prob=LESION_PROB):
        self.archive, self.patch, self.n_views = archive, np.asarray(patch, int), int(n_views)
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.device_views = bool(device_views)
        self.seed, self.kidney_prob, self.lesion_prob = int(seed), float(kidney_prob), float(lesion_prob)
        self.transform = transform or ViewTransform()
        check_patch_fits(self.patch, np.max([shape[1:] for shape in archive.shapes], axis=0))
        self.channels = archive.channels

    def __len__(self):
        return 2**62  # indexed by global sample number; the sampler decides how many

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, int(index)])
        data, mask = self.archive.load(int(rng.integers(len(self.archive))))
        return make_views(data, mask, rng, self.patch, n_views=self.n_views, kidney_prob=self.kidney_prob,
                          transform=None if self.device_views else self.transform, scale=self.scale,
                          lesion_prob=self.lesion_prob)


def check_patch_fits(patch: ArrayLike, largest: ArrayLike) -> None:
    """InputError unless the crop ``patch`` (3,) voxels fits the ``largest`` (3,) extent of the volumes
    on every axis (smaller volumes are padded)."""
    if any(int(p) > int(s) for p, s in zip(patch, largest)):
        raise InputError(f"patch: a crop of {tuple(int(p) for p in patch)} voxels is larger than every preprocessed "
                         f"volume (largest {tuple(int(s) for s in largest)}); choose a smaller --patch.")


def tissue_centre(data: np.ndarray, rng: np.random.Generator, *, candidates: int = 256,
                  tries: int = 4) -> np.ndarray | None:
    """A voxel (3,) of enhancing soft tissue in a preprocessed (C, X, Y, Z) volume, or None.

    Unlabeled archives have no kidney masks, and uniform crops are mostly air, table, bone and fat.
    Candidates are drawn uniformly; a candidate qualifies when the mean of its channels is inside
    (0.25, 0.9) (on the default CT window, -75 to 250 HU: neither air nor fat nor bone or excreted
    contrast; on MR, neither background nor the brightest percent) and, with several phases, when a
    later phase exceeds the first by 0.04 (20 HU on CT: it enhances). Costs ``candidates`` voxel reads,
    not a pass over the volume.
    """
    shape = np.array(data.shape[1:])
    for _ in range(int(tries)):
        points = rng.integers(0, shape, size=(int(candidates), 3))
        values = np.asarray(data[(slice(None), points[:, 0], points[:, 1], points[:, 2])], np.float32)
        level = values.mean(axis=0)
        ok = (level > 0.25) & (level < 0.9)
        if len(values) > 1:
            ok &= values[1:].max(axis=0) - values[0] > 0.04
        hits = np.flatnonzero(ok)
        if hits.size:
            return points[hits[rng.integers(hits.size)]]
    return None


def lesion_views(lesion: ArrayLike, rng: np.random.Generator, n_views: int) -> list[tuple[np.ndarray, float]]:
    """Centres and sides (voxels) of ``n_views`` views of a lesion: each a cube of :data:`LESION_VIEW_ZOOM`
    times the lesion's cube (:func:`~ssl_rcc.data.crops.lesion_box`, the crop the heads embed), shifted
    by at most half the difference of the sides: a smaller view lies inside the cube, a larger one holds
    it. The views share the lesion's scale, so size stays visible to the network, and most keep the
    ring of tissue around the lesion, where invasion shows."""
    centre, side0 = lesion_box(lesion)
    out = []
    for _ in range(int(n_views)):
        zoom = rng.uniform(*LESION_VIEW_ZOOM)
        out.append((centre + rng.uniform(-1, 1, size=3) * (1 - zoom) * side0 / 2, side0 * zoom))
    return out


def make_views(data: np.ndarray, mask: ArrayLike | None, rng: np.random.Generator, patch: ArrayLike, *, n_views: int,
               kidney_prob: float, transform: Callable[[np.ndarray, int], torch.Tensor] | None,
               scale: tuple[float, float] | None = None, lesion_prob: float = 0.0) -> tuple[torch.Tensor, ...]:
    """``(view_0, ..., seeds)`` of one volume (C, X, Y, Z), every choice drawn from ``rng``: a crop
    (kidney-centred with probability ``kidney_prob`` when ``mask`` is given), overlapping crops for the
    other views, and a seed per view. ``transform=None`` leaves the crops as float16 for the device.

    With ``scale=(lo, hi)``, a sample is a cube of side ``patch`` times a factor drawn in [lo, hi],
    centred on kidney (mask) or enhancing tissue (:func:`tissue_centre`); its views are cubes of that
    side +-:data:`VIEW_SCALE_JITTER`, the first at the centre and the others within a quarter side of
    it, each resampled to ``patch``. With probability ``lesion_prob``, when ``mask`` labels a lesion
    (:data:`~ssl_rcc.data.cache.LESION`), the views are :func:`lesion_views` instead."""
    patch = np.asarray(patch, int)
    if scale is not None and lesion_prob > 0 and mask is not None:
        lesion = np.asarray(mask) == LESION
        if lesion.any() and rng.random() < lesion_prob:
            views, seeds = [], []
            for at, side in lesion_views(lesion, rng, n_views):
                seeds.append(int(rng.integers(2**31)))
                crop = box_crop(data, at, side, patch)
                views.append(torch.from_numpy(crop.astype(np.float16)) if transform is None else transform(crop, seeds[-1]))
            return (*views, torch.tensor(seeds, dtype=torch.int64))
    if scale is not None:
        use_mask = mask is not None and np.any(mask) and rng.random() < kidney_prob
        if use_mask:
            inside = np.argwhere(np.asarray(mask) > 0)
            centre = inside[rng.integers(len(inside))].astype(float)
        else:
            found = tissue_centre(data, rng)
            centre = (rng.uniform(0, data.shape[1:]) if found is None else found).astype(float)
        views, seeds = [], []
        # one scale per sample, shared by its views (+-10%): scale is what separates a small tumour's crop
        # from a large one's once both are resampled to the patch, so the views must not teach invariance to it
        side0 = float(patch.max()) * rng.uniform(*scale)
        for v in range(n_views):
            side = side0 * rng.uniform(1 - VIEW_SCALE_JITTER, 1 + VIEW_SCALE_JITTER)
            at = centre if v == 0 else centre + rng.uniform(-side / 4, side / 4, size=3)
            seeds.append(int(rng.integers(2**31)))
            crop = box_crop(data, at, side, patch)
            views.append(torch.from_numpy(crop.astype(np.float16)) if transform is None else transform(crop, seeds[-1]))
        return (*views, torch.tensor(seeds, dtype=torch.int64))
    shape = np.array(data.shape[1:])
    if np.any(shape < patch):  # pad volumes smaller than the patch (edge values)
        pad = [(0, 0)] + [(0, int(max(p - s, 0))) for s, p in zip(shape, patch)]
        data = np.pad(np.asarray(data, np.float32), pad, mode="edge")
        mask = None if mask is None else np.pad(np.asarray(mask), pad[1:])
        shape = np.array(data.shape[1:])
    use_mask = mask if (mask is not None and rng.random() < kidney_prob) else None
    start = crop_start(shape, patch, rng, mask=use_mask)
    views, seeds = [], []
    for v in range(n_views):
        offset = 0 if v == 0 else rng.integers(-(patch // 4), patch // 4 + 1)  # overlapping crops
        s = np.clip(start + offset, 0, shape - patch)
        seeds.append(int(rng.integers(2**31)))
        crop = data[(slice(None),) + tuple(slice(int(a), int(a) + int(p)) for a, p in zip(s, patch))]
        views.append(torch.from_numpy(np.array(crop, dtype=np.float16)) if transform is None else transform(crop, seeds[-1]))
    return (*views, torch.tensor(seeds, dtype=torch.int64))


class StepSampler(Sampler):
    """Global sample numbers of the steps ``start_step() .. total_steps - 1`` for one rank.

    Step ``s`` uses samples ``(s * world + rank) * per_step + k``, ``k < per_step``, where ``per_step`` is
    the batch size times gradient accumulation. ``start_step`` is read when iteration starts, so after a
    checkpoint is restored the sampler continues where the interrupted run stopped.
    """

    def __init__(self, per_step, total_steps, *, start_step=lambda: 0, rank=0, world=1):
        self.per_step, self.total_steps, self.start_step = int(per_step), int(total_steps), start_step
        self.rank, self.world = int(rank), int(world)

    def __len__(self):
        return max(self.total_steps - int(self.start_step()), 0) * self.per_step

    def __iter__(self):
        for step in range(int(self.start_step()), self.total_steps):
            base = (step * self.world + self.rank) * self.per_step
            yield from range(base, base + self.per_step)
