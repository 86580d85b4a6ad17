"""Translating the frames of a 4D series, and finding the translation that takes each frame onto a target.

The pieces :mod:`kinetics.motion` registers with: a translation per frame (breathing moves the kidneys
along the body axis), applied by cubic B-spline one axis at a time (:func:`translate_frames`), and
found by Gauss-Newton on the squared difference, coarse to fine, for every frame of the series in one
pass (:func:`frame_translations`). An axis of one voxel (a single slice) is not moved along.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from .errors import KineticsInputError

__all__ = ["translate_frames", "frame_translations", "movable_axes", "spatial_gradient", "gradient_at", "MAX_VOXELS"]

MAX_VOXELS = 65536  # a registration samples larger fields at random (a few hundred shifts need far fewer voxels),
#                     as registration packages do (elastix's random sampler); a regular stride would alias


def _cubic_translation(frame, shift_vox):
    """``frame`` at x + ``shift_vox`` by cubic B-spline, one axis at a time: what ``ndimage.shift(frame,
    -shift_vox, order=3, mode="nearest")`` gives (to float32 rounding), 6-10 times faster, because a
    translation has the same four spline weights at every voxel of an axis."""
    out = np.asarray(frame, np.float32)
    for axis, d in enumerate(shift_vox):
        if abs(d) < 1e-9:
            continue
        whole = int(np.floor(d))
        f = d - whole
        pad = 14 + abs(whole)  # edge values, for the spline's prefilter and the shift
        widths = [(0, 0)] * out.ndim
        widths[axis] = (pad, pad)
        coefficients = ndimage.spline_filter1d(np.pad(out, widths, mode="edge"), 3, axis=axis, mode="mirror",
                                               output=np.float32)
        weights = np.array(((1 - f) ** 3 / 6, (4 - 6 * f ** 2 + 3 * f ** 3) / 6, (1 + 3 * f + 3 * f ** 2 - 3 * f ** 3) / 6,
                            f ** 3 / 6), np.float32)
        first = np.arange(out.shape[axis]) + pad + whole - 1
        out = sum(w * np.take(coefficients, first + k, axis=axis) for k, w in enumerate(weights))
    return out


def translate_frames(series: ArrayLike, shifts_vox: ArrayLike, *, order: int = 3) -> np.ndarray:
    """Frame t of the result at x is frame t of ``series`` at x + ``shifts_vox[t]``: the inverse of
    moving each frame's content by its shift.

    ``series`` (x, y, z, t); ``shifts_vox`` (t, 3), voxels along the array axes. B-spline of ``order``,
    edge values repeated. A voxel that is not finite stays NaN where it lands (and does not spread:
    a spline's prefilter would carry one NaN over the whole frame).
    """
    series = np.asarray(series, np.float32)
    shifts = np.asarray(shifts_vox, float)
    bad = ~np.isfinite(series)
    filled = np.where(bad, 0.0, series).astype(np.float32) if bad.any() else series
    out = np.empty_like(series)
    for t in range(series.shape[-1]):  # per frame, not per voxel: ndimage does the voxels
        if order == 3:
            out[..., t] = _cubic_translation(filled[..., t], shifts[t])
        else:
            out[..., t] = ndimage.shift(filled[..., t], -shifts[t], order=order, mode="nearest")
        if bad[..., t].any():
            out[..., t][ndimage.shift(bad[..., t], -shifts[t], order=0, mode="nearest")] = np.nan
    return out


def movable_axes(shape):
    """The spatial axes a frame can be moved along: those of more than one voxel (a single slice moves in plane)."""
    axes = [k for k in range(3) if shape[k] > 1]
    if not axes:
        raise KineticsInputError(f"motion correction: a series of {shape[:3]} voxels has no axis to register along.")
    return axes


def spatial_gradient(volume, axes):
    """Central differences of ``volume`` along each of ``axes``, a list of arrays of its shape."""
    grads = np.gradient(volume, axis=tuple(axes))
    return grads if isinstance(grads, (list, tuple)) else [grads]


def gradient_at(series: np.ndarray, where: tuple, axes: Sequence[int]) -> np.ndarray:
    """``np.gradient`` of every frame of ``series`` (x, y, z, t) along ``axes``, at the voxels ``where``
    (a tuple of three index arrays) only: (n, t, len(axes)), central differences inside, one-sided at
    the edges, from each voxel's own neighbours (no whole-frame gradient held)."""
    columns = []
    for axis in axes:
        last = series.shape[axis] - 1
        up, down = list(where), list(where)
        up[axis] = np.minimum(where[axis] + 1, last)
        down[axis] = np.maximum(where[axis] - 1, 0)
        columns.append((series[tuple(up)] - series[tuple(down)]) / (up[axis] - down[axis])[:, None])
    return np.stack(columns, axis=-1)


def frame_translations(
    moving: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike,
    *,
    initial: ArrayLike | None = None,
    sigmas_vox: Sequence[float] = (1.0, 0.0),
    steps: int = 10,
    max_shift_vox: float = 8.0,
) -> np.ndarray:
    """Translation (t, 3) in voxels that takes each frame of ``moving`` onto the same frame of ``target``.

    Minimises, per frame t, ``sum_x weight(x) (moving_t(x + d_t) - target_t(x))^2`` by Gauss-Newton
    steps, first on both images smoothed by a Gaussian of each of ``sigmas_vox`` in turn (coarse to
    fine). A frame whose target is flat (spread under 1e-3 of the series') keeps its ``initial`` shift
    (0 without one).

    Parameters
    ----------
    moving, target : (x, y, z, t) ndarray
    weight : (x, y, z) ndarray
        Voxels that count (0 where the target means nothing). Values that are not finite count as 0.
    initial : None or (t, 3) ndarray, voxels
        Where to start (the previous round's shifts); None: no shift.
    sigmas_vox, max_shift_vox : voxels
        Smoothing of each level; shifts are held within ``max_shift_vox`` (a registration that runs
        off is stopped there).

    Returns
    -------
    (t, 3) ndarray, voxels along the array axes
    """
    moving = np.nan_to_num(np.asarray(moving, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    target = np.nan_to_num(np.asarray(target, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if moving.shape != target.shape or moving.ndim != 4:
        raise KineticsInputError(f"motion correction: series {moving.shape} and target {target.shape} must be one (x, y, z, t) shape.")
    weight = np.asarray(weight, float)
    inside = weight > 0
    shifts = np.zeros((moving.shape[-1], 3)) if initial is None else np.array(initial, float).reshape(-1, 3)
    axes = movable_axes(moving.shape)
    scale = float(target[inside].std())
    # a target frame without structure (a concentration frame before the bolus) fixes no shift
    flat = np.array([target[..., t][inside].std() <= 1e-3 * scale for t in range(target.shape[-1])])
    points = np.flatnonzero(inside.ravel())
    if points.size > MAX_VOXELS:  # a large field: a random sample of its voxels, as registration packages do
        points = np.sort(np.random.default_rng(0).choice(points, MAX_VOXELS, replace=False))
    w = weight.ravel()[points]
    where = np.array(np.unravel_index(points, inside.shape), float)  # (3, n) voxel coordinates
    for sigma in sigmas_vox:
        for t in np.flatnonzero(~flat):
            m = ndimage.gaussian_filter(moving[..., t], sigma) if sigma else moving[..., t]
            f = (ndimage.gaussian_filter(target[..., t], sigma) if sigma else target[..., t]).ravel()[points]
            # the moved frame and its gradient at the sampled voxels only (a translation commutes with the gradient)
            images = [m, *spatial_gradient(m, axes)]
            for _ in range(steps):
                at = where + shifts[t][:, None]
                warped, *grad = (ndimage.map_coordinates(image, at, order=1, mode="nearest") for image in images)
                # past an edge the sampled value is held (mode "nearest"): it does not change with the shift there
                grad = np.stack([g * ((at[k] >= 0) & (at[k] <= moving.shape[k] - 1)) for g, k in zip(grad, axes)], axis=-1)
                hessian = np.einsum("ni,nj,n->ij", grad, grad, w)
                if np.linalg.cond(hessian) > 1e8:
                    break  # no structure along some direction
                step = -np.linalg.solve(hessian, grad.T @ (w * (warped - f)))
                shifts[t, axes] = np.clip(shifts[t, axes] + np.clip(step, -1.0, 1.0), -max_shift_vox, max_shift_vox)
                if np.abs(step).max() < 1e-3:
                    break
    return shifts
