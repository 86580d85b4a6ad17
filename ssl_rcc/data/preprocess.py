"""Canonical orientation, resampling and intensity normalisation of a :class:`Volume`.

All three are recorded in a :class:`PreprocessConfig`, saved with every run, so an encoder's inputs can
be reproduced exactly at inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import InputError
from .volume import Volume

__all__ = ["PreprocessConfig", "to_canonical", "resample", "normalise", "preprocess_volume"]


@dataclass(frozen=True)
class PreprocessConfig:
    """``spacing_mm`` target voxel size; ``ct_window`` HU range clipped and scaled to [0, 1];
    ``mr_percentiles`` robust range of an MR image mapped to [0, 1] (values outside are clipped)."""

    spacing_mm: tuple = (1.5, 1.5, 1.5)
    ct_window: tuple = (-200.0, 300.0)
    mr_percentiles: tuple = (1.0, 99.0)
    axis_order: str = "RAS"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def to_canonical(volume: Volume, mask=None):
    """Reorder and flip the axes so that they point to R, A, S (a permutation: no interpolation)."""
    ornt = nib.orientations.io_orientation(volume.affine)
    data = np.stack([nib.orientations.apply_orientation(c, ornt) for c in volume.data])
    affine = volume.affine @ nib.orientations.inv_ornt_aff(ornt, volume.data.shape[1:])
    if mask is not None:
        mask = nib.orientations.apply_orientation(mask, ornt)
    out = Volume(np.ascontiguousarray(data), affine, volume.modality, volume.case_id, volume.source)
    return out, mask


def resample(volume: Volume, spacing_mm, mask=None, *, order=1):
    """Resample to ``spacing_mm`` (trilinear; the mask by nearest neighbour), keeping the field of view.

    Voxel edges stay aligned (``grid_mode``), so the world position of the image does not drift.
    """
    old = np.array(volume.spacing_mm)
    new = np.asarray(spacing_mm, dtype=float)
    shape = np.array(volume.data.shape[1:])
    new_shape = np.maximum(np.round(shape * old / new).astype(int), 1)
    zoom = new_shape / shape
    data = np.stack([ndimage.zoom(c, zoom, order=order, mode="nearest", grid_mode=True) for c in volume.data])
    scale = shape / new_shape  # new voxel size in old voxels
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0  # centre of new voxel 0, in old voxel coordinates
    affine = volume.affine @ step
    if mask is not None:
        mask = ndimage.zoom(mask.astype(np.uint8), zoom, order=0, mode="nearest", grid_mode=True)
    return Volume(data.astype(np.float32), affine, volume.modality, volume.case_id, volume.source), mask


def normalise(volume: Volume, config: PreprocessConfig):
    """Intensities to [0, 1]: CT by a HU window, MR by robust percentiles of the image (per channel)."""
    data = volume.data
    if volume.modality == "CT":
        lo, hi = config.ct_window
        return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    out = np.empty_like(data, dtype=np.float32)
    for c, channel in enumerate(data):
        lo, hi = np.nanpercentile(channel, config.mr_percentiles)
        if not hi > lo:
            raise InputError(f"{volume.source}: MR channel {c} is flat (percentiles {lo:g} and {hi:g}); nothing to learn from.")
        out[c] = np.clip((channel - lo) / (hi - lo), 0.0, 1.0)
    return out


def preprocess_volume(volume: Volume, config: PreprocessConfig, mask=None):
    """Canonical orientation, resampling and normalisation.

    Returns
    -------
    data : (C, X, Y, Z) float32 in [0, 1]
    affine : (4, 4) ndarray
    mask : (X, Y, Z) uint8 or None
    """
    if mask is not None and mask.shape != volume.data.shape[1:]:
        raise InputError(f"{volume.source}: the mask has shape {mask.shape}, the image {volume.data.shape[1:]}.")
    volume, mask = to_canonical(volume, mask)
    volume, mask = resample(volume, config.spacing_mm, mask)
    return normalise(volume, config), volume.affine, mask
