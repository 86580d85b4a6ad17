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

from typing import NamedTuple

import numpy as np

from .convolution import exp_conv_and_derivative
from .models import SECONDS_PER_MINUTE

__all__ = ["fit_tofts_separable", "SeparableFit"]


class SeparableFit(NamedTuple):
    """``ktrans`` (/min), ``ve``, ``vp`` (zeros without vp), each (n,); ``converged`` (n,) bool."""

    ktrans: np.ndarray
    ve: np.ndarray
    vp: np.ndarray
    converged: np.ndarray


def _rowdot(a, b):
    if a.ndim == 1 and b.ndim == 1:
        return a @ b
    if a.ndim == 1:
        return b @ a
    if b.ndim == 1:
        return a @ b
    return np.einsum("ij,ij->i", a, b)


def _linear_part(f, cp, c_dot_cp, cp_dot_cp, c, with_vp):
    """Closed-form Ktrans (per s) and vp for curves ``f`` (n, m) at the current kep."""
    ff = _rowdot(f, f)
    fc = _rowdot(f, c)
    if not with_vp:
        with np.errstate(divide="ignore", invalid="ignore"):
            return fc / ff, np.zeros_like(ff), ff, None
    fcp = _rowdot(f, cp)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = ff * cp_dot_cp - fcp * fcp
        k = (cp_dot_cp * fc - fcp * c_dot_cp) / det
        vp = (ff * c_dot_cp - fcp * fc) / det
    return k, vp, ff, fcp


def fit_tofts_separable(t_s, conc_mM, cp_mM, kep0_per_s, *, with_vp, max_iter=40, ftol=1e-6, xtol=1e-5):
    """Fit Tofts (``with_vp=False``) or extended Tofts by variable projection over kep.

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
    conc_mM : (n, n_times) ndarray, mM
    cp_mM : (n_times,) or (n, n_times) ndarray, mM
    kep0_per_s : (n,) ndarray, /s
        Starting kep, for example from the linear fit; must be positive and finite.

    Returns
    -------
    SeparableFit
        Unbounded estimates: the caller checks them against physical bounds.
    """
    c = np.asarray(conc_mM, dtype=float)
    cp_all = np.asarray(cp_mM, dtype=float)
    n = c.shape[0]
    kep = np.array(kep0_per_s, dtype=float)
    best_sse = np.full(n, np.inf)
    best_k, best_vp = np.full(n, np.nan), np.zeros(n)
    grad, curv = np.zeros(n), np.ones(n)
    lam = np.full(n, 1e-3)
    trial = kep.copy()
    converged = np.zeros(n, dtype=bool)
    active = np.flatnonzero(np.isfinite(kep) & (kep > 0))
    for _ in range(max_iter):
        if active.size == 0:
            break
        rows = active
        cv = c[rows]
        cp = cp_all if cp_all.ndim == 1 else cp_all[rows]
        cp_dot_cp = _rowdot(cp, cp)
        c_dot_cp = _rowdot(cv, cp)
        f, df = exp_conv_and_derivative(t_s, cp, trial[rows])
        k, vp, ff, fcp = _linear_part(f, cp, c_dot_cp, cp_dot_cp, cv, with_vp)
        r = cv - k[:, None] * f - (vp[:, None] * cp if with_vp else 0.0)
        sse = np.einsum("ij,ij->i", r, r)
        better = np.isfinite(sse) & (sse <= best_sse[rows])
        # Kaufman: Jacobian of the model in kep at fixed linear parameters, projected off their span
        j_dot_r = k * _rowdot(df, r)
        j_dot_j = k * k * _rowdot(df, df)
        f_dot_j = k * _rowdot(f, df)
        with np.errstate(divide="ignore", invalid="ignore"):
            if with_vp:
                cp_dot_j = k * _rowdot(df, cp)
                det = ff * cp_dot_cp - fcp * fcp
                proj = (cp_dot_cp * f_dot_j**2 - 2 * fcp * f_dot_j * cp_dot_j + ff * cp_dot_j**2) / det
            else:
                proj = f_dot_j**2 / ff
        h = np.maximum(j_dot_j - proj, 1e-300)
        first = ~np.isfinite(best_sse[rows])
        gain = best_sse[rows] - sse
        acc = rows[better]
        small_gain = better & ~first & (gain <= ftol * best_sse[rows])
        step_size = np.abs(trial[rows] - kep[rows])
        small_step = better & ~first & (step_size <= xtol * kep[rows])
        kep[acc] = trial[acc]
        best_sse[acc], best_k[acc], best_vp[acc] = sse[better], k[better], vp[better]
        grad[acc], curv[acc] = j_dot_r[better], h[better]
        lam[rows] = np.where(better, np.maximum(lam[rows] / 10.0, 1e-9), lam[rows] * 10.0)
        done = small_gain | small_step | (lam[rows] > 1e8)
        converged[rows[done]] = True
        active = rows[~done]
        # next trial from the best point: damped Gauss-Newton, at most a factor 3 in kep per step
        delta = grad[active] / (curv[active] * (1.0 + lam[active]))
        kep_a = kep[active]
        trial[active] = np.clip(kep_a + delta, kep_a / 3.0, kep_a * 3.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = best_k / kep
    return SeparableFit(best_k * SECONDS_PER_MINUTE, ve, best_vp, converged & np.isfinite(best_sse))
