"""Optional preprocessing of a DCE series: motion correction and MP-PCA denoising (both by dipy)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .errors import KineticsInputError

__all__ = ["motion_correct", "MotionCorrection", "denoise_mppca"]

_PIPELINES = {
    "translation": ["center_of_mass", "translation"],
    "rigid": ["center_of_mass", "translation", "rigid"],
    "affine": ["center_of_mass", "translation", "rigid", "affine"],
}


class MotionCorrection(NamedTuple):
    """``series`` (x, y, z, t) registered to the reference; ``affines`` (t, 4, 4), the transform of
    each frame (identity means no motion was found); ``reference`` (x, y, z), the image registered to."""

    series: np.ndarray
    affines: np.ndarray
    reference: np.ndarray


def motion_correct(
    series: ArrayLike,
    affine: ArrayLike,
    *,
    reference: str | int = "mean",
    transform: str = "rigid",
    level_iters: Sequence[int] = (100, 50, 10),
) -> MotionCorrection:
    """Register every frame of a 4D series to a reference with mutual information (dipy).

    Mutual information copes with the contrast changing between frames, which a squared-difference
    metric would mistake for motion.

    Parameters
    ----------
    series : (x, y, z, t) ndarray
    affine : (4, 4) ndarray
        Voxel-to-world transform of the series (mm).
    reference : "mean" or int
        - ``"mean"``: the mean over frames (blurred by motion but with every frame's contrast).
        - int: that frame.
    transform : {"translation", "rigid", "affine"}
    level_iters : sequence of int
        Optimiser iterations per pyramid level, coarse to fine.

    Returns
    -------
    MotionCorrection
    """
    from dipy.align import register_series

    series = np.asarray(series, dtype=np.float32)
    if series.ndim != 4:
        raise KineticsInputError(f"motion correction: expected a 4D (x, y, z, t) series, got {series.ndim}D.")
    if transform not in _PIPELINES:
        raise KineticsInputError(f"transform: unknown {transform!r}; expected one of {sorted(_PIPELINES)}.")
    if isinstance(reference, str):
        if reference != "mean":
            raise KineticsInputError(f"reference: {reference!r} is neither 'mean' nor a frame number.")
        ref = series.mean(axis=-1)
    else:
        if not 0 <= int(reference) < series.shape[-1]:
            raise KineticsInputError(f"reference: frame {reference} is outside 0..{series.shape[-1] - 1}.")
        ref = series[..., int(reference)]
    quiet = logging.getLogger("dipy")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))  # dipy logs every frame at INFO
    try:
        moved, affines = register_series(
            series, ref, pipeline=_PIPELINES[transform], series_affine=affine, ref_affine=affine,
            level_iters=list(level_iters),
        )
    finally:
        quiet.setLevel(level)
    return MotionCorrection(np.asarray(moved, dtype=np.float32), np.moveaxis(affines, -1, 0), ref)


def denoise_mppca(series: ArrayLike, *, mask: ArrayLike | None = None, patch_radius: int = 2) -> np.ndarray:
    """Denoise a 4D series by Marchenko-Pastur PCA over local patches (dipy ``mppca``).

    Parameters
    ----------
    series : (x, y, z, t) ndarray
    mask : None or (x, y, z) bool ndarray
        Voxels to denoise; None denoises all.
    patch_radius : int, voxels
        The patch holds ``(2 r + 1)^3`` voxels, which should exceed the number of frames.

    Returns
    -------
    (x, y, z, t) ndarray, float32
        dipy clips its output to non-negative values, which a signal series is anyway.
    """
    from dipy.denoise.localpca import mppca

    series = np.asarray(series, dtype=np.float32)
    if series.ndim != 4:
        raise KineticsInputError(f"denoising: expected a 4D (x, y, z, t) series, got {series.ndim}D.")
    if min(series.shape[:3]) < 2 * patch_radius + 1:
        raise KineticsInputError(
            f"denoising: the series is {series.shape[:3]} voxels, smaller than a {2 * patch_radius + 1}-voxel patch."
        )
    if (2 * patch_radius + 1) ** 3 <= series.shape[-1]:
        raise KineticsInputError(
            f"patch_radius: {patch_radius} gives {(2 * patch_radius + 1) ** 3} voxels per patch, not more "
            f"than the {series.shape[-1]} frames; use patch_radius >= "
            f"{int(np.ceil((np.cbrt(series.shape[-1] + 1) - 1) / 2))}."
        )
    return np.asarray(mppca(series, mask=mask, patch_radius=patch_radius, suppress_warning=True), dtype=np.float32)
