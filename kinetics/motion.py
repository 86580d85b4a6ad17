"""Model-driven motion correction of a DCE series: each frame registered to the model's prediction of it.

Registering every frame to one reference (:func:`kinetics.preprocess.motion_correct`) asks a metric
to tell motion from the contrast change it must keep; on the motion phantoms it changed nothing.
Model-driven registration (the approach of the ``mdreg`` package, QIB-Sheffield) removes the
contrast change from the comparison instead:

1. fit the kinetic model to the series as it is (the linear method: seconds for a volume);
2. predict every frame from the fitted maps: the frame's contrast, without its motion;
3. register each frame to its own prediction, which now differs from it by motion and noise only, so
   a least-squares metric applies;
4. refit on the registered series and repeat (each time moving the original frames, so that they
   are interpolated once).

Registration here is a translation per frame (breathing moves the kidneys along the body axis),
estimated by Gauss-Newton on the squared difference, coarse to fine, for every frame of the series
in one pass (:func:`frame_translations`), and applied by cubic B-spline interpolation
(:func:`translate_frames`). dipy's affine registration offers only mutual information, which the
model's prediction makes unnecessary, and took minutes per series for one frame at a time.

A known limit: a parameter that only a few consecutive frames determine (vp, from the first pass)
can absorb motion those frames share, and the prediction then follows it; the corrected frames of
the first pass keep part of their motion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from . import options
from .errors import KineticsInputError

__all__ = ["frame_translations", "translate_frames", "model_driven_motion_correct", "motion_correct_series",
           "ModelDrivenCorrection", "MARGIN_MM"]

log = logging.getLogger("kinetics")

ROUNDS = 3  # of fit and registration (5 gained 0.007 of tumour voxels within tolerance on the phantoms, 10 lost 0.04)
MARGIN_MM = 20.0  # tissue around the mask that the registration compares (edges carry the motion)
SIGNAL_KEYS = ("t10_s", "tr_s", "fa_deg", "r1_per_mM_s", "baseline")  # an SPGR acquisition, as concentration_from_signal takes it


class ModelDrivenCorrection(NamedTuple):
    """``series`` (x, y, z, t) registered; ``shifts_vox`` (t, 3), the translation of each frame found
    (voxels along the array axes: frame t's content sat at x + shift); ``prediction`` (x, y, z, t), the
    model's last prediction (0 where it has none); ``valid`` (x, y, z), where it has one."""

    series: np.ndarray
    shifts_vox: np.ndarray
    prediction: np.ndarray
    valid: np.ndarray


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
        out[..., t] = ndimage.shift(filled[..., t], -shifts[t], order=order, mode="nearest")
        if bad[..., t].any():
            out[..., t][ndimage.shift(bad[..., t], -shifts[t], order=0, mode="nearest")] = np.nan
    return out


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
    w = weight[inside]
    shifts = np.zeros((moving.shape[-1], 3)) if initial is None else np.array(initial, float).reshape(-1, 3)
    scale = float(target[inside].std())
    # a target frame without structure (a concentration frame before the bolus) fixes no shift
    flat = np.array([target[..., t][inside].std() <= 1e-3 * scale for t in range(target.shape[-1])])
    for sigma in sigmas_vox:
        for t in np.flatnonzero(~flat):
            m = ndimage.gaussian_filter(moving[..., t], sigma) if sigma else moving[..., t]
            f = (ndimage.gaussian_filter(target[..., t], sigma) if sigma else target[..., t])[inside]
            for _ in range(steps):
                warped = ndimage.shift(m, -shifts[t], order=1, mode="nearest")
                grad = np.stack([g[inside] for g in np.gradient(warped)], axis=-1)  # (n, 3)
                hessian = np.einsum("ni,nj,n->ij", grad, grad, w)
                if np.linalg.cond(hessian) > 1e8:
                    break  # no structure along some direction
                step = -np.linalg.solve(hessian, grad.T @ (w * (warped[inside] - f)))
                shifts[t] = np.clip(shifts[t] + np.clip(step, -1.0, 1.0), -max_shift_vox, max_shift_vox)
                if np.abs(step).max() < 1e-3:
                    break
    return shifts


def model_driven_motion_correct(
    series: ArrayLike,
    predict: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    *,
    iterations: int = ROUNDS,
) -> ModelDrivenCorrection:
    """Register each frame of ``series`` to the model's prediction of it, refitting between rounds.

    Parameters
    ----------
    series : (x, y, z, t) ndarray
    predict : callable
        ``predict(series) -> (prediction (x, y, z, t), valid (x, y, z) bool)``: the fitted model's
        curves where it has an estimate; only ``valid`` voxels are compared.
    iterations : int
        Rounds of fit and registration; each registers the original frames again, starting from the
        previous round's shifts.

    Returns
    -------
    ModelDrivenCorrection
    """
    series = np.asarray(series, np.float32)
    if series.ndim != 4:
        raise KineticsInputError(f"motion correction: expected a 4D (x, y, z, t) series, got {series.ndim}D.")
    iterations = options.iterations(iterations, "iterations")
    shifts = np.zeros((series.shape[-1], 3))
    current = series
    for round_ in range(iterations):
        prediction, valid = predict(current)
        if not valid.any():
            raise KineticsInputError("motion correction: the model gave no estimate to register the frames to.")
        shifts = frame_translations(series, prediction, valid, initial=shifts)
        current = translate_frames(series, shifts)
        log.info("motion correction, round %d of %d: frame shifts up to %.2f voxels", round_ + 1, iterations,
                 float(np.abs(shifts).max()))
    return ModelDrivenCorrection(current, shifts, prediction, valid)


def motion_correct_series(
    series: ArrayLike,
    t_s: ArrayLike,
    cp_mM: ArrayLike,
    *,
    model: str = "extended_tofts",
    mask: ArrayLike | None = None,
    voxel_mm: ArrayLike = (1.0, 1.0, 1.0),
    signal: dict | None = None,
    engine: str = "auto",
    iterations: int = ROUNDS,
) -> ModelDrivenCorrection:
    """Model-driven correction of a whole DCE series, as ``kinetics fit --motion-correct`` does it.

    The model is fitted by the linear method over ``mask`` and :data:`MARGIN_MM` around it (the whole
    image without one), and :func:`model_driven_motion_correct` registers each frame to its
    prediction. The rounds run on the bounding box of that field (plus room for the shifts); the
    whole series is then moved once.

    Parameters
    ----------
    series : (x, y, z, t) ndarray
        Concentration (mM), or SPGR signal when ``signal`` is given.
    t_s, cp_mM : (t,) ndarray
        Frame times (s) and the plasma AIF (mM).
    model : str
        A model of :data:`kinetics.registry.MODELS` that has a linear method.
    mask : (x, y, z) bool ndarray, optional
    voxel_mm : (3,) float
        Voxel size along the array axes (for the margin).
    signal : dict, optional
        The SPGR acquisition of a signal series, :data:`SIGNAL_KEYS`: ``t10_s`` (s; a value or an
        (x, y, z) map), ``tr_s`` (s), ``fa_deg`` (one flip angle, degrees), ``r1_per_mM_s`` (/mM/s),
        ``baseline`` (pre-contrast frames).
    engine : str
        How the fits run (:func:`kinetics.fit.fit_curves`).

    Returns
    -------
    ModelDrivenCorrection
        The whole series moved; ``prediction`` and ``valid`` on the field's bounding box, not on the
        whole grid (they are what the last round registered to).
    """
    from .fit import fit_image
    from .registry import get_model
    from .signal import concentration_from_signal, s0_from_baseline, signal_from_concentration
    from .status import has_estimate

    spec = get_model(model)
    series = np.asarray(series, np.float32)
    if series.ndim != 4:
        raise KineticsInputError(f"motion correction: expected a 4D (x, y, z, t) series, got {series.ndim}D.")
    spatial = series.shape[:3]
    voxel_mm = np.broadcast_to(np.asarray(voxel_mm, float), (3,)) if np.size(voxel_mm) in (1, 3) else None
    if voxel_mm is None:
        raise KineticsInputError("motion correction: voxel_mm takes one size or three (mm along the array axes).")
    if signal is not None and set(signal) != set(SIGNAL_KEYS):
        raise KineticsInputError(f"motion correction: signal needs exactly {list(SIGNAL_KEYS)}, got {sorted(signal)}.")
    t10 = None if signal is None else signal["t10_s"]
    for name, array in (("mask", mask), ("t10_s", t10)):
        if array is not None and np.ndim(array) and np.shape(array) != spatial:
            raise KineticsInputError(f"motion correction: {name} has shape {np.shape(array)}; the series' grid is {spatial}.")
    field = np.isfinite(series).all(axis=-1)
    if mask is not None:
        roi = np.asarray(mask, bool)
        if not roi.any():
            raise KineticsInputError("motion correction: the mask selects no voxel.")
        field &= ndimage.distance_transform_edt(~roi, sampling=voxel_mm) <= MARGIN_MM
    if t10 is not None and np.ndim(t10):
        field &= np.isfinite(t10) & (t10 > 0)
    if not field.any():
        raise KineticsInputError("motion correction: no voxel with a finite series (and T10) to register.")
    pad = 10  # voxels of room for the shifts and the smoothing around the field
    lo = np.maximum(np.argwhere(field).min(axis=0) - pad, 0)
    hi = np.minimum(np.argwhere(field).max(axis=0) + pad + 1, field.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    field_box = field[box]
    t10_box = t10[box] if t10 is not None and np.ndim(t10) else t10

    def predict(current):
        conc = current
        if signal is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                conc = concentration_from_signal(current, **(signal | {"t10_s": t10_box}), dtype=np.float32)
        fit = fit_image(conc, t_s, cp_mM, mask=field_box, model=spec.name, method="llsq", engine=engine)
        valid = field_box & has_estimate(fit.fit_status)
        curves = spec.forward(t_s, cp_mM, *(fit.params[name][valid] for name in spec.params))
        if signal is not None:
            t10_valid = t10_box[valid] if np.ndim(t10_box) else t10_box
            s0 = s0_from_baseline(current[valid], t10_s=t10_valid, tr_s=signal["tr_s"], fa_deg=signal["fa_deg"],
                                  baseline=signal["baseline"])
            curves = signal_from_concentration(curves, t10_s=t10_valid, tr_s=signal["tr_s"], fa_deg=signal["fa_deg"],
                                               r1_per_mM_s=signal["r1_per_mM_s"], s0=s0)
        prediction = np.zeros(current.shape, np.float32)
        prediction[valid] = curves
        return prediction, valid

    corrected = model_driven_motion_correct(series[box], predict, iterations=iterations)
    return corrected._replace(series=translate_frames(series, corrected.shifts_vox))
