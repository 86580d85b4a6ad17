"""Separable (variable projection) least squares for the Tofts family.

In the Tofts and extended Tofts models only ``kep`` enters nonlinearly: for a given ``kep`` the
best ``Ktrans`` (and ``vp``) follow in closed form. Eliminating them leaves a one-parameter problem per
voxel, solved by damped Gauss-Newton steps with Kaufman's Jacobian of the projected residual. Each
iteration costs one exact convolution (with its derivative) and a few dot products over time, for all
voxels at once, and needs no (n_voxels, n_times, n_params) Jacobian.

References
----------
Golub, Pereyra. Inverse Problems 2003;19:R1. doi:10.1088/0266-5611/19/2/201
Kaufman. BIT 1975;15:49. doi:10.1007/BF01932995
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .convolution import exp_conv_and_derivative, to_time_major
from .linear import dot_over_time
from .models import SECONDS_PER_MINUTE

__all__ = ["fit_tofts_separable", "SeparableFit"]

_STOP_BELOW_SD = 1e-2  # a next step below this fraction of kep's standard error is not taken
_dot = partial(dot_over_time, axis=0)  # per-voxel dot products over time of time-major arrays


class SeparableFit(NamedTuple):
    """``ktrans`` (/min), ``ve``, ``vp`` (zeros without vp), each (n,); ``converged`` (n,) bool;
    ``sse`` (n,) mM^2, the squared error of the model curve at these parameters; ``no_washout`` (n,)
    bool, where the search stopped on the kep floor (the data favour kep = 0, ve without bound)."""

    ktrans: np.ndarray
    ve: np.ndarray
    vp: np.ndarray
    converged: np.ndarray
    sse: np.ndarray
    no_washout: np.ndarray


def _linear_part(f, cp, c_dot_cp, cp_dot_cp, c, with_vp):
    """Closed-form Ktrans (per s) and vp for curves ``f`` (n_times, n) at the current kep, with the
    dot products f.f, f.c and f.cp they came from."""
    ff = _dot(f, f)
    fc = _dot(f, c)
    if not with_vp:
        with np.errstate(divide="ignore", invalid="ignore"):
            return fc / ff, np.zeros_like(ff), ff, fc, None
    fcp = _dot(f, cp)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = ff * cp_dot_cp - fcp * fcp
        k = (cp_dot_cp * fc - fcp * c_dot_cp) / det
        vp = (ff * c_dot_cp - fcp * fc) / det
    return k, vp, ff, fc, fcp


def fit_tofts_separable(
    t_s: ArrayLike,
    conc_mM: ArrayLike,
    cp_mM: ArrayLike,
    kep0_per_s: ArrayLike,
    *,
    with_vp: bool,
    max_iter: int = 40,
    ftol: float = 1e-6,
    xtol: float = 1e-5,
    axis: int = -1,
    c_dot_c: np.ndarray | None = None,
) -> SeparableFit:
    """Fit Tofts (``with_vp=False``) or extended Tofts by variable projection over kep.

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
    conc_mM : (n, n_times) ndarray, mM
    cp_mM : (n_times,) or (n, n_times) ndarray, mM
    kep0_per_s : (n,) ndarray, /s
        Starting kep, for example from the linear fit; must be positive and finite.
    axis : {-1, 0}
        Time axis of ``conc_mM`` (and of a per-voxel ``cp_mM``); with 0 they are time-major,
        (n_times, n), the layout the iteration runs in, and are used without a copy.
    c_dot_c : (n,) ndarray or None
        The curves' squared norms, where the caller already has them.

    Returns
    -------
    SeparableFit
        Unbounded estimates: the caller checks them against physical bounds.

    Notes
    -----
    The squared error and the gradient come from dot products of the data, f, its derivative and
    cp (``|c - k f - vp cp|^2`` expanded), so the residual is not built. Their rounding, about 1e-16
    of ``|c|^2``, is far below any noise; only where the error falls below 1e-10 of ``|c|^2``
    (noise-free data, such as a digital reference object) is the residual built, so that such fits
    converge to full precision.

    kep is kept above ``1e-3 / (t_s[-1] - t_s[0])``: below it the curve differs from the Patlak
    limit (kep = 0) by less than 0.1% over the acquisition, so the data cannot tell the two apart.
    A voxel that keeps descending there stops and is marked ``no_washout``: its optimum has ve
    beyond any bound, whatever the ve computed at the floor.
    """
    t_s = np.asarray(t_s, dtype=float)
    n_times, n_linear = t_s.size, 2 if with_vp else 1
    c = to_time_major(conc_mM, axis)
    cp_all = to_time_major(cp_mM, axis)
    shared = cp_all.ndim == 1
    n = c.shape[1]
    floor = 1e-3 / (t_s[-1] - t_s[0])
    kep = np.array(kep0_per_s, dtype=float)
    start = np.isfinite(kep) & (kep > 0)
    kep = np.where(start, np.maximum(kep, floor), np.nan)
    c_dot_cp_all = _dot(c, cp_all)
    cp_dot_cp_all = _dot(cp_all, cp_all)
    c_dot_c_all = _dot(c, c) if c_dot_c is None else np.asarray(c_dot_c, dtype=float)
    best_sse = np.full(n, np.inf)
    best_k, best_vp = np.full(n, np.nan), np.zeros(n)
    grad, curv = np.zeros(n), np.ones(n)
    lam = np.full(n, 1e-3)
    trial = kep.copy()
    converged, no_washout = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    active = np.flatnonzero(start)
    for _ in range(max_iter):
        if active.size == 0:
            break
        rows = active
        whole = rows.size == n  # no gather while every voxel is still iterating
        cv = c if whole else c[:, rows]
        cp = cp_all if shared or whole else cp_all[:, rows]
        cp_dot_cp = cp_dot_cp_all if shared else cp_dot_cp_all[rows]
        c_dot_cp, c_dot_c = c_dot_cp_all[rows], c_dot_c_all[rows]
        f, df = exp_conv_and_derivative(t_s, cp, trial[rows], axis=0)
        k, vp, ff, fc, fcp = _linear_part(f, cp, c_dot_cp, cp_dot_cp, cv, with_vp)
        f_dot_df, df_dot_c = _dot(f, df), _dot(df, cv)
        # |c - k f - vp cp|^2 and df.(c - k f - vp cp), expanded
        sse = c_dot_c - 2.0 * k * fc + k * k * ff
        df_dot_r = df_dot_c - k * f_dot_df
        if with_vp:
            df_dot_cp = _dot(df, cp)
            sse += vp * (vp * cp_dot_cp - 2.0 * c_dot_cp + 2.0 * k * fcp)
            df_dot_r -= vp * df_dot_cp
        # where the fit is near exact (noise-free data) the expansion's rounding would set the
        # precision: there the residual is built explicitly
        exactish = np.flatnonzero(sse <= 1e-10 * c_dot_c)
        if exactish.size:
            r = cv[:, exactish] - k[exactish] * f[:, exactish]
            if with_vp:
                r -= np.multiply.outer(cp, vp[exactish]) if shared else cp[:, exactish] * vp[exactish]
            sse[exactish], df_dot_r[exactish] = _dot(r, r), _dot(df[:, exactish], r)
        sse = np.maximum(sse, 0.0)
        better = np.isfinite(sse) & (sse <= best_sse[rows])
        # Kaufman: Jacobian of the model in kep at fixed linear parameters, projected off their span
        j_dot_r = k * df_dot_r
        j_dot_j = k * k * _dot(df, df)
        f_dot_j = k * f_dot_df
        with np.errstate(divide="ignore", invalid="ignore"):
            if with_vp:
                cp_dot_j = k * df_dot_cp
                det = ff * cp_dot_cp - fcp * fcp
                proj = (cp_dot_cp * f_dot_j**2 - 2 * fcp * f_dot_j * cp_dot_j + ff * cp_dot_j**2) / det
            else:
                proj = f_dot_j**2 / ff
        h = np.maximum(j_dot_j - proj, 1e-300)
        first = ~np.isfinite(best_sse[rows])
        gain = best_sse[rows] - sse
        acc = rows[better]
        # converged when a step, taken or not, changes the error or kep by less than the tolerances:
        # near the minimum a rejected step differs from it by rounding alone, and waiting for the
        # damping to grow past its limit would take a dozen more iterations
        small_gain = ~first & (np.abs(gain) <= ftol * best_sse[rows])
        exact = better & (sse <= 1e-24 * c_dot_c)
        step_size = np.abs(trial[rows] - kep[rows])
        small_step = ~first & (step_size <= xtol * kep[rows])
        kep[acc] = trial[acc]
        best_sse[acc], best_k[acc], best_vp[acc] = sse[better], k[better], vp[better]
        grad[acc], curv[acc] = j_dot_r[better], h[better]
        lam[rows] = np.where(better, np.maximum(lam[rows] / 10.0, 1e-9), lam[rows] * 10.0)
        # next trial from the best point: damped Gauss-Newton, at most a factor 3 in kep per step
        delta = grad[rows] / (curv[rows] * (1.0 + lam[rows]))
        # still descending on the floor: the search ends there, flagged
        at_floor = better & (kep[rows] <= floor) & (delta < 0)
        # Gauss-Newton's own error estimate: after an accepted step, a next step far below kep's
        # standard error (from the noise, sse / (n_times - n_params), and the curvature), or a
        # thousand times below xtol, would not change the answer, so it need not be taken; on
        # noise-free data the standard error vanishes and the fit runs to full precision
        with np.errstate(divide="ignore", invalid="ignore"):
            sd_kep = np.sqrt(best_sse[rows] / max(n_times - n_linear - 1, 1) / curv[rows])
            newton = np.abs(grad[rows] / curv[rows])  # the undamped step: damping would hide a long one
        small_next = better & (newton <= np.maximum(_STOP_BELOW_SD * sd_kep, 1e-3 * xtol * kep[rows]))
        done = small_gain | small_step | small_next | exact | (lam[rows] > 1e8)
        converged[rows[done]] = True
        no_washout[rows[at_floor]] = True
        done |= at_floor
        keep = ~done
        active, delta = rows[keep], delta[keep]
        kep_a = kep[active]
        trial[active] = np.maximum(np.clip(kep_a + delta, kep_a / 3.0, kep_a * 3.0), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = best_k / kep
    finite = np.isfinite(best_sse)
    return SeparableFit(
        best_k * SECONDS_PER_MINUTE, ve, best_vp, converged & finite, np.where(finite, best_sse, np.nan),
        no_washout & finite,
    )
