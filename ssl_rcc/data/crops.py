"""Where to crop: random patch positions, centred in the kidney when a mask is given."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ..errors import InputError

__all__ = ["crop_start", "centred_crop", "centred_crop_start", "lesion_box", "box_crop", "LESION_MARGIN"]

LESION_MARGIN = 0.2  # of the lesion's largest extent, on each side of its bounding cube


def crop_start(shape: ArrayLike, patch: ArrayLike, rng: np.random.Generator, *,
               mask: ArrayLike | None = None) -> np.ndarray:
    """Start index of a ``patch``-sized crop inside an image of spatial ``shape``.

    With ``mask``, the crop is centred on a random mask voxel around which a whole crop fits (if the
    mask has none, on any mask voxel, shifted to stay inside the image); without, the position is
    uniform. Raises when the patch is larger than the image.

    Parameters
    ----------
    shape, patch : (3,) ints, voxels
    rng : numpy Generator
    mask : None or (X, Y, Z) array, nonzero inside the kidney
    """
    shape, patch = np.asarray(shape), np.asarray(patch)
    if np.any(patch > shape):
        raise InputError(f"patch: a crop of {tuple(patch)} voxels is larger than the image {tuple(shape)}.")
    if mask is not None:
        mask = np.asarray(mask) > 0
        half = patch // 2
        # mask voxels around which a whole crop fits; only if there are none is a crop shifted
        fits = np.zeros_like(mask)
        fits[tuple(slice(h, s - p + h + 1) for h, s, p in zip(half, shape, patch))] = True
        for candidates in (np.flatnonzero((mask & fits).reshape(-1)), np.flatnonzero(mask.reshape(-1))):
            if candidates.size:
                centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], tuple(shape)))
                return np.clip(centre - half, 0, shape - patch)
    return np.array([rng.integers(0, s - p + 1) for s, p in zip(shape, patch)])


def centred_crop(data: np.ndarray, patch: ArrayLike, *, mask: ArrayLike | None = None) -> np.ndarray:
    """The ``patch``-sized crop of ``data`` centred on the centroid of ``mask`` (the image centre when
    ``mask`` is None or empty), shifted to stay inside the image; an image smaller than ``patch`` is
    padded by repeating its edge first.

    Parameters
    ----------
    data : (C, X, Y, Z) ndarray
    patch : (3,) ints, voxels
    mask : None or (X, Y, Z) array, nonzero inside the lesion

    Returns
    -------
    (C, *patch) ndarray, the dtype of ``data``
    """
    patch = np.asarray(patch, dtype=int)
    pad = [(0, 0)] + [(0, int(max(p - s, 0))) for s, p in zip(data.shape[1:], patch)]
    start = centred_crop_start(data.shape[1:], patch, mask=mask)
    data = np.pad(data, pad, mode="edge")
    return data[(slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))]


def centred_crop_start(shape, patch, *, mask=None) -> np.ndarray:
    """Start index (3,) of :func:`centred_crop` in an image of spatial ``shape`` (edge-padded to at
    least ``patch`` at its far end first)."""
    patch = np.asarray(patch, dtype=int)
    padded = np.maximum(np.asarray(shape, dtype=int), patch)
    inside = None if mask is None else np.argwhere(np.asarray(mask) > 0)
    centre = padded // 2 if inside is None or not len(inside) else np.round(inside.mean(axis=0)).astype(int)
    return np.clip(centre - patch // 2, 0, padded - patch)


def lesion_box(mask: ArrayLike, *, margin: float = LESION_MARGIN, min_side: float = 8.0) -> tuple[np.ndarray, float]:
    """The cube around a lesion that its crop shows: centre (3,) in voxel coordinates and side in voxels,
    the largest extent of the mask's bounding box times ``1 + 2 * margin`` (a ring of surrounding tissue
    on every side), at least ``min_side``.

    Scaling every lesion to the same crop size makes the encoder see the lesion and its border at a
    fixed scale whatever its size (a 20 mm and an 80 mm tumour both fill the crop); the size itself is
    then lost from the image and is reported beside the embedding.
    """
    inside = np.argwhere(np.asarray(mask) > 0)
    if not len(inside):
        raise InputError("the lesion mask is empty.")
    lo, hi = inside.min(axis=0), inside.max(axis=0) + 1
    side = max(float((hi - lo).max()) * (1.0 + 2.0 * float(margin)), float(min_side))
    return (lo + hi - 1) / 2.0, side


def box_crop(data: ArrayLike, centre: ArrayLike, side: float, patch: ArrayLike, *, order: int = 1) -> np.ndarray:
    """The cube of edge ``side`` voxels centred at ``centre`` (voxel coordinates) of ``data`` (C, X, Y, Z),
    resampled to ``patch`` (3,) voxels (linear for ``order=1``, nearest for 0); outside the image, the
    nearest edge value. Returns a float32 (C, *patch) array."""
    from scipy import ndimage

    patch = np.asarray(patch, dtype=int)
    step = float(side) / patch  # voxel centres of the output, in input coordinates
    axes = [c - side / 2.0 + (np.arange(p) + 0.5) * s for c, p, s in zip(np.asarray(centre, float), patch, step)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    data = np.asarray(data)
    return np.stack([ndimage.map_coordinates(np.asarray(c, np.float32), grid, order=order, mode="nearest", prefilter=False)
                     for c in data]).astype(np.float32)
