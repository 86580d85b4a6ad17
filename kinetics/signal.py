"""Spoiled gradient echo (SPGR) signal, R1 and concentration; variable flip angle (VFA) T1 mapping.

All functions broadcast over leading axes; time or flip angle is the last axis. Times are seconds,
relaxation rates /s, relaxivity /s/mM, concentrations mM, flip angles degrees.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .errors import KineticsInputError
from .options import worker_count
from ._pool import for_each_chunk, shared_zeros, use_processes

_CONVERSION_BLOCK = 8192  # voxels converted at a time by a worker process

__all__ = [
    "spgr_signal",
    "r1_from_signal",
    "s0_from_baseline",
    "concentration_from_signal",
    "signal_from_concentration",
    "vfa_t1_linear",
    "vfa_t1_nonlinear",
    "VfaFit",
]


def _check_flip_angle(fa_deg, name="fa_deg"):
    fa = np.asarray(fa_deg, dtype=float)
    if not np.all(np.isfinite(fa)) or np.any(fa <= 0) or np.any(fa > 90):
        raise KineticsInputError(f"{name}: flip angle {fa_deg!r} degrees is outside (0, 90].")
    return np.deg2rad(fa)


def _check_positive(value, name, unit):
    v = np.asarray(value, dtype=float)
    if np.any(~np.isfinite(v) & ~np.isnan(v)) or np.any(v <= 0):
        raise KineticsInputError(f"{name}: {_short(value)} {unit} must be positive and finite.")
    return v


def _short(value):
    v = np.asarray(value)
    return repr(v.item()) if v.size == 1 else f"array with minimum {np.nanmin(v):g}"


def _per_frame(value):
    """A per-voxel value (scalar or (...) array) as (..., 1), to broadcast against (..., n_times)."""
    return np.expand_dims(np.asarray(value, dtype=float), -1)


def spgr_signal(r1_per_s: ArrayLike, *, s0: ArrayLike, tr_s: float, fa_deg: ArrayLike) -> np.ndarray | float:
    """Steady-state SPGR signal for relaxation rate ``r1_per_s``.

    ``S = S0 sin(a) (1 - E1) / (1 - E1 cos(a))`` with ``E1 = exp(-TR R1)``.

    Parameters
    ----------
    r1_per_s : ndarray, /s
    s0 : float or ndarray
        Equilibrium magnetisation (arbitrary units), broadcast against ``r1_per_s``.
    tr_s : float, s
    fa_deg : float or ndarray, degrees
        Flip angle (the nominal angle times any B1 correction).
    """
    a = _check_flip_angle(fa_deg)
    e1 = np.exp(-np.asarray(tr_s, dtype=float) * np.asarray(r1_per_s, dtype=float))
    return np.asarray(s0) * np.sin(a) * (1.0 - e1) / (1.0 - e1 * np.cos(a))


def r1_from_signal(signal: ArrayLike, *, s0: ArrayLike, tr_s: float, fa_deg: ArrayLike) -> np.ndarray:
    """Relaxation rate R1 (/s) from SPGR signal, the exact inverse of :func:`spgr_signal`.

    Signal at or above ``S0 sin(a)``, the limit for infinite R1, has no solution and gives NaN.
    """
    return _r1_minus(signal, s0=s0, tr_s=tr_s, fa_deg=fa_deg, r10=0.0, scale=1.0)


def _r1_minus(signal, *, s0, tr_s, fa_deg, r10, scale):
    """``(R1 - r10) * scale`` from SPGR signal, in a few in-place passes over one float64 array.

    With ``x = S / (S0 sin a)``, ``R1 = log((1 - x cos a) / (1 - x)) / TR``; for a flip angle in
    (0, 90] degrees a real R1 exists exactly where ``x < 1`` (elsewhere NaN). Whole volumes go through
    here, so temporaries are kept to two arrays of the signal's size.
    """
    a = _check_flip_angle(fa_deg)
    x = np.array(signal, dtype=float)  # the one copy, in float64 for small concentrations' precision
    x *= 1.0 / (np.asarray(s0, dtype=float) * np.sin(a))
    ratio = x * -np.cos(a)
    ratio += 1.0
    np.subtract(1.0, x, out=x)
    invalid = ~(x > 0)  # x >= 1, or NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio /= x
        np.log(ratio, out=ratio)
    ratio *= scale / tr_s
    ratio -= np.asarray(r10, dtype=float) * scale
    ratio[invalid] = np.nan
    return ratio


def _baseline_frames(baseline, n_frames):
    """Frame range (start, stop) of the pre-contrast baseline from an int n (frames 0..n-1) or a pair."""
    start, stop = (0, baseline) if np.ndim(baseline) == 0 else tuple(baseline)
    start, stop = int(start), int(stop)
    if not 0 <= start < stop <= n_frames:
        raise KineticsInputError(
            f"baseline: frames {start}..{stop - 1} are not a baseline within a series of {n_frames} frames."
        )
    return start, stop


def s0_from_baseline(
    signal: ArrayLike, *, t10_s: ArrayLike, tr_s: float, fa_deg: ArrayLike, baseline: int | tuple[int, int]
) -> np.ndarray | float:
    """Equilibrium signal S0 from the mean baseline (pre-contrast) signal and T10.

    Parameters
    ----------
    signal : (..., n_times) ndarray
    t10_s : float or (...) ndarray, s
    baseline : int or (int, int)
        Number of pre-contrast frames from the first, or the (start, stop) frame range (stop
        excluded), for series whose first frames are not at steady state.

    Returns
    -------
    s0 : (...) ndarray
    """
    signal = np.asarray(signal)
    start, stop = _baseline_frames(baseline, signal.shape[-1])
    t10 = _check_positive(t10_s, "t10_s", "s")
    mean_baseline = signal[..., start:stop].mean(axis=-1, dtype=float)
    return mean_baseline / spgr_signal(1.0 / t10, s0=1.0, tr_s=tr_s, fa_deg=fa_deg)


def concentration_from_signal(
    signal, *, t10_s, tr_s, fa_deg, r1_per_mM_s, baseline, dtype=float, workers: int | None = None
):
    """Contrast agent concentration (mM) from an SPGR signal series.

    S0 comes from the baseline frames and T10; R1(t) from the exact SPGR inversion;
    ``C = (R1 - 1/T10) / r1``. Frames whose signal has no real R1 give NaN.

    Parameters
    ----------
    signal : (..., n_times) ndarray
    t10_s : float or (...) ndarray, s
        Pre-contrast T1.
    tr_s : float, s
    fa_deg : float or (...) ndarray, degrees
    r1_per_mM_s : float, /s/mM
        Longitudinal relaxivity of the agent.
    baseline : int or (int, int)
        Number of pre-contrast frames, or their (start, stop) range.
    dtype : floating-point numpy dtype
        Of the result; the arithmetic is float64 either way (float32 halves the result's memory).
    workers : int or None
        Cores converting slabs of voxels at once, as in :func:`kinetics.fit.fit_curves` (forked
        processes for large series, whose floating-point warnings the caller does not see); None
        uses every core available. It changes the result by rounding at most.

    Returns
    -------
    (..., n_times) ndarray, mM
    """
    _check_positive(r1_per_mM_s, "r1", "/s/mM")
    _check_positive(tr_s, "tr_s", "s")
    t10 = _check_positive(t10_s, "t10_s", "s")
    _check_flip_angle(fa_deg)
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise KineticsInputError(f"dtype: {np.dtype(dtype)} cannot hold NaN; give a floating-point type.")
    signal = np.asarray(signal)
    frames = _baseline_frames(baseline, signal.shape[-1])
    voxels = signal.shape[:-1]
    for name, value in (("t10_s", t10), ("fa_deg", fa_deg)):
        if np.ndim(value) and _broadcast_shape(np.shape(value), voxels) != voxels:
            raise KineticsInputError(
                f"{name}: shape {np.shape(value)} does not match the signal's voxels {voxels}; "
                "give one value, or one per voxel."
            )

    def convert(part):  # the voxels signal[part], where t10 and fa are (broadcast to) the voxels' shape
        t10_part = np.broadcast_to(np.asarray(t10, dtype=float), voxels)[part]
        fa_part = np.broadcast_to(np.asarray(fa_deg, dtype=float), voxels)[part]
        s0 = s0_from_baseline(signal[part], t10_s=t10_part, tr_s=tr_s, fa_deg=fa_part, baseline=frames)
        return _r1_minus(
            signal[part], s0=_per_frame(s0), tr_s=tr_s, fa_deg=_per_frame(fa_part), r10=1.0 / _per_frame(t10_part),
            scale=1.0 / r1_per_mM_s,
        )

    n_workers = worker_count(workers)
    if signal.ndim < 2 or not use_processes(n_workers, int(np.prod(voxels)), signal):
        # one pass over everything: in blocks, this process (whose allocator keeps glibc's defaults)
        # would fault each block's temporaries in afresh, which costs more than it saves
        return convert(...).astype(dtype, copy=False)
    # slabs along the first axis, of about _CONVERSION_BLOCK voxels each: views, whatever the
    # memory order (NIfTI series are Fortran-ordered), so the series is never copied whole
    step = max(_CONVERSION_BLOCK * voxels[0] // max(int(np.prod(voxels)), 1), 1)
    out = shared_zeros(signal.shape, dtype)  # forked workers (which inherit the caller's numpy settings)

    def convert_into_output(part):
        out[part] = convert(part)

    slabs = [slice(start, min(start + step, voxels[0])) for start in range(0, voxels[0], step)]
    for_each_chunk(convert_into_output, slabs, n_workers, processes=True)
    return out


def _broadcast_shape(*shapes):
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        return None


def signal_from_concentration(
    conc_mM: ArrayLike, *, t10_s: ArrayLike, tr_s: float, fa_deg: ArrayLike, r1_per_mM_s: float, s0: ArrayLike
) -> np.ndarray:
    """SPGR signal for a concentration series (the inverse of :func:`concentration_from_signal`).

    Parameters
    ----------
    conc_mM : (..., n_times) ndarray, mM
    t10_s : float or (...) ndarray, s
    s0 : float or (...) ndarray
    """
    t10 = _check_positive(t10_s, "t10_s", "s")
    r1 = 1.0 / _per_frame(t10) + r1_per_mM_s * np.asarray(conc_mM, dtype=float)
    return spgr_signal(r1, s0=_per_frame(s0), tr_s=tr_s, fa_deg=_per_frame(fa_deg))


class VfaFit(NamedTuple):
    """Result of a VFA T1 fit: ``t1_s`` (s), ``s0`` (a.u.), ``fit_ok`` (bool), each of the input's leading shape."""

    t1_s: np.ndarray
    s0: np.ndarray
    fit_ok: np.ndarray


def _vfa_inputs(signal, fa_deg, tr_s, b1):
    signal = np.asarray(signal, dtype=float)
    fa = np.asarray(fa_deg, dtype=float)
    if fa.ndim != 1 or fa.size < 2 or fa.size != signal.shape[-1]:
        raise KineticsInputError(
            f"fa_deg: {fa.size} flip angles for a last signal axis of {signal.shape[-1]}; "
            "give one angle per VFA image, at least two."
        )
    _check_flip_angle(fa)
    _check_positive(tr_s, "tr_s", "s")
    fa = fa * (1.0 if b1 is None else np.asarray(b1, dtype=float)[..., None])
    return signal, np.deg2rad(fa)


def vfa_t1_linear(signal: ArrayLike, fa_deg: ArrayLike, *, tr_s: float, b1: ArrayLike | None = None) -> VfaFit:
    """T1 (s) from variable flip angle SPGR signals by the linear DESPOT1 regression.

    Regresses ``S/sin(a)`` on ``S/tan(a)``; the slope is ``E1 = exp(-TR/T1)``. Vectorised over voxels.

    Parameters
    ----------
    signal : (..., n_fa) ndarray
    fa_deg : (n_fa,) ndarray, degrees
        Nominal flip angles.
    tr_s : float, s
    b1 : None or (...) ndarray
        Relative transmit field; the actual angle is ``b1 * fa``. None means 1 everywhere.

    Returns
    -------
    VfaFit
        Voxels whose slope is not in (0, 1) (T1 not positive and finite) give NaN and ``fit_ok=False``.

    References
    ----------
    Deoni, Rutt, Peters. Magn Reson Med 2003;49:515. doi:10.1002/mrm.10407
    """
    signal, a = _vfa_inputs(signal, fa_deg, tr_s, b1)
    y = signal / np.sin(a)
    x = signal / np.tan(a)
    n = signal.shape[-1]
    sx, sy = x.sum(-1), y.sum(-1)
    sxx, sxy = (x * x).sum(-1), (x * y).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
        intercept = (sy - slope * sx) / n
        t1 = -tr_s / np.log(slope)
        s0 = intercept / (1.0 - slope)
    ok = (slope > 0) & (slope < 1) & np.isfinite(t1) & (s0 > 0)
    return VfaFit(np.where(ok, t1, np.nan), np.where(ok, s0, np.nan), ok)


def vfa_t1_nonlinear(
    signal: ArrayLike, fa_deg: ArrayLike, *, tr_s: float, b1: ArrayLike | None = None, max_iter: int = 50
) -> VfaFit:
    """T1 (s) from VFA SPGR signals by nonlinear least squares on the signal, seeded by DESPOT1.

    A Gauss-Newton iteration with Levenberg damping on (S0, R1), run for all voxels at once.
    Parameters as in :func:`vfa_t1_linear`. Voxels that do not converge to a positive T1 give NaN and
    ``fit_ok=False``.
    """
    from ._optimize import levenberg_marquardt

    signal, a = _vfa_inputs(signal, fa_deg, tr_s, b1)
    lead = signal.shape[:-1]
    y = signal.reshape(-1, signal.shape[-1])
    a = np.broadcast_to(a, signal.shape).reshape(y.shape)
    seed = vfa_t1_linear(signal, fa_deg, tr_s=tr_s, b1=b1)
    r1_0 = np.where(seed.fit_ok, 1.0 / seed.t1_s, 1.0).reshape(-1)
    s0_0 = np.where(seed.fit_ok.reshape(-1), seed.s0.reshape(-1), y.max(-1) * 5)
    sin_a, cos_a = np.sin(a), np.cos(a)

    def model(p, rows):
        s0, r1 = p[:, :1], p[:, 1:]
        e1 = np.exp(-tr_s * r1)
        denom = 1.0 - e1 * cos_a[rows]
        f = sin_a[rows] * (1.0 - e1) / denom
        # d f / d r1 = d f / d e1 * d e1 / d r1
        df_de1 = sin_a[rows] * (cos_a[rows] - 1.0) / denom**2
        jac = np.stack([f, s0 * df_de1 * (-tr_s * e1)], axis=-1)
        return s0 * f, jac

    p0 = np.stack([s0_0, r1_0], axis=-1)
    lower = np.array([0.0, 1e-6])
    upper = np.array([np.inf, 1e3])
    res = levenberg_marquardt(model, p0, y, lower=lower, upper=upper, max_iter=max_iter)
    s0, r1 = res.params[:, 0], res.params[:, 1]
    ok = res.converged & np.isfinite(r1) & (r1 > 1e-6) & (s0 > 0) & np.all(np.isfinite(y), axis=-1)
    t1 = np.where(ok, 1.0 / r1, np.nan).reshape(lead)
    return VfaFit(t1, np.where(ok, s0, np.nan).reshape(lead), ok.reshape(lead))
