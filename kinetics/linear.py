"""Linear least-squares (LLSQ) fits of the kinetic models, for all voxels at once.

Each model's differential equations, integrated once or twice, make the tissue curve a linear
combination of running integrals of itself and of the input; the coefficients give the parameters
in closed form. These fits are fast, need no starting values, and seed the nonlinear fits.
Each function takes ``t_s`` (n_times,) in s, ``conc_mM`` (n_voxels, n_times) and ``cp_mM`` (n_times,)
or (n_voxels, n_times), and returns a :class:`LinearFit` whose params are in the units of :mod:`kinetics.models`;
coefficients that no parameter set can produce give NaN parameters. With ``axis=0`` the curves are
time-major instead, (n_times, n_voxels), the layout in which running integrals are cheapest.
Running integrals of C enter the models with a minus sign; they are regressed as they are and the sign
is taken off their coefficients, which saves a negated copy of each.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .convolution import cumulative_integral
from .models import SECONDS_PER_MINUTE

__all__ = [
    "LinearFit",
    "solve_linear",
    "llsq_tofts",
    "llsq_extended_tofts",
    "llsq_patlak",
    "llsq_two_compartment_exchange",
    "llsq_two_compartment_uptake",
    "llsq_two_compartment_filtration",
]

_PER_100ML_MIN = 100.0 * SECONDS_PER_MINUTE


class LinearFit(NamedTuple):
    """``params`` (n_voxels, n_params), NaN where not physical; ``sse`` (n_voxels,) mM^2, the squared
    error of the linear regression (defined even where the parameters are not)."""

    params: np.ndarray
    sse: np.ndarray


def _dot(a, b, axis=-1):
    """Per-voxel dot product over time of two columns, each (n_times,) or 2-D with time on ``axis``."""
    if a.ndim == 1 and b.ndim == 1:
        return np.float64(a @ b)
    if a.ndim == 1 or b.ndim == 1:
        vector, matrix = (a, b) if a.ndim == 1 else (b, a)
        return vector @ matrix if axis == 0 else matrix @ vector
    return np.einsum("ij,ij->j" if axis == 0 else "ij,ij->i", a, b)


def solve_linear(columns, y, *, axis=-1):
    """Least-squares coefficients for ``y ~ sum_j b_j columns[j]``, per voxel.

    Parameters
    ----------
    columns : sequence of k arrays, each (n_voxels, n_times) or (n_times,)
        A column shared by all voxels (such as the AIF) may be given once, as (n_times,).
    y : (n_voxels, n_times) ndarray
    axis : {-1, 0}
        The time axis of ``y`` and of 2-D columns; 0 for time-major (n_times, n_voxels) arrays.

    Returns
    -------
    coef : (n_voxels, k) ndarray
        NaN where the normal equations are singular.
    sse : (n_voxels,) ndarray
        Squared error of the fit.

    Notes
    -----
    The normal equations are built from dot products alone (shared columns by matrix-vector
    products), never from an (n_voxels, n_times, k) design array, and are solved after scaling each
    column to unit norm, because running integrals and concentrations differ by orders of magnitude.
    """
    y = np.asarray(y, dtype=float)
    cols = [np.asarray(c, dtype=float) for c in columns]
    n, k = y.shape[1 if axis == 0 else 0], len(cols)
    gram = np.empty((n, k, k))
    rhs = np.empty((n, k))
    for i in range(k):
        rhs[:, i] = _dot(cols[i], y, axis)
        for j in range(i + 1):
            gram[:, i, j] = gram[:, j, i] = _dot(cols[i], cols[j], axis)
    norm = np.sqrt(np.diagonal(gram, axis1=1, axis2=2))
    norm = np.where(norm > 0, norm, 1.0)
    scaled = gram / (norm[:, :, None] * norm[:, None, :])
    coef = _solve_spd(scaled, rhs / norm) / norm
    sse = _dot(y, y, axis) - 2.0 * np.einsum("nk,nk->n", coef, rhs) + np.einsum("nk,nkl,nl->n", coef, gram, coef)
    return coef, np.maximum(sse, 0.0)


def _solve_spd(a, b):
    """Solve a[i] x = b[i] for small symmetric positive (semi)definite systems, vectorised over i.

    Cholesky written out over the k x k entries (k <= 4 here), each step for all systems at once;
    systems that are not numerically positive definite give NaN.
    """
    n, k = b.shape
    lower = np.zeros_like(a)
    for j in range(k):
        d = a[:, j, j] - np.einsum("nk,nk->n", lower[:, j, :j], lower[:, j, :j])
        d = np.where(d > 1e-12, d, np.nan)
        lower[:, j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            lower[:, i, j] = (a[:, i, j] - np.einsum("nk,nk->n", lower[:, i, :j], lower[:, j, :j])) / lower[:, j, j]
    z = np.empty_like(b)
    for i in range(k):
        z[:, i] = (b[:, i] - np.einsum("nk,nk->n", lower[:, i, :i], z[:, :i])) / lower[:, i, i]
    x = np.empty_like(b)
    for i in reversed(range(k)):
        x[:, i] = (z[:, i] - np.einsum("nk,nk->n", lower[:, i + 1 :, i], x[:, i + 1 :])) / lower[:, i, i]
    return x


def llsq_tofts(t_s, conc_mM, cp_mM, *, axis=-1):
    """Tofts by Murase's linear form ``C = Ktrans int(cp) - kep int(C)``: columns ktrans (/min), ve.

    References
    ----------
    Murase. Magn Reson Med 2004;51:858. doi:10.1002/mrm.20022
    """
    int_cp = cumulative_integral(t_s, cp_mM, axis=axis)
    b, sse = solve_linear([int_cp, cumulative_integral(t_s, conc_mM, axis=axis)], conc_mM, axis=axis)
    ktrans, kep = b[:, 0], -b[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = ktrans / kep
    ok = (ktrans >= 0) & (kep > 0)
    return _nan_unless(ok, sse, ktrans * SECONDS_PER_MINUTE, ve)


def llsq_extended_tofts(t_s, conc_mM, cp_mM, *, axis=-1):
    """Extended Tofts by Murase's form ``C = (Ktrans + kep vp) int(cp) - kep int(C) + vp cp``.

    Returns columns ktrans (/min), ve, vp.
    """
    cp = np.asarray(cp_mM, dtype=float)
    b, sse = solve_linear(
        [cumulative_integral(t_s, cp, axis=axis), cumulative_integral(t_s, conc_mM, axis=axis), cp],
        conc_mM, axis=axis,
    )
    kep, vp = -b[:, 1], b[:, 2]
    ktrans = b[:, 0] - kep * vp
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = ktrans / kep
    ok = (ktrans >= 0) & (kep > 0) & (vp >= 0)
    return _nan_unless(ok, sse, ktrans * SECONDS_PER_MINUTE, ve, vp)


def llsq_patlak(t_s, conc_mM, cp_mM, *, axis=-1):
    """Patlak ``C = Ktrans int(cp) + vp cp``: columns ktrans (/min), vp. Always defined (may be negative)."""
    cp = np.asarray(cp_mM, dtype=float)
    b, sse = solve_linear([cumulative_integral(t_s, cp, axis=axis), cp], conc_mM, axis=axis)
    return LinearFit(np.stack([b[:, 0] * SECONDS_PER_MINUTE, b[:, 1]], axis=-1), sse)


def _double_integrals(t_s, conc_mM, cp_mM, axis):
    int_c = cumulative_integral(t_s, conc_mM, axis=axis)
    int_cp = cumulative_integral(t_s, cp_mM, axis=axis)
    return int_cp, cumulative_integral(t_s, int_cp, axis=axis), int_c, cumulative_integral(t_s, int_c, axis=axis)


def llsq_two_compartment_exchange(t_s, conc_mM, cp_mM, *, axis=-1):
    """2CXM by linear inversion: columns fp (mL/100mL/min), ps (/min), ve, vp.

    Integrating the model's equations twice gives
    ``C = Fp int(cp) + Fp PS (1/vp + 1/ve) iint(cp) - (Fp/vp + PS/vp + PS/ve) int(C) - Fp PS/(vp ve) iint(C)``.

    References
    ----------
    Flouri, Lesnic, Sourbron. Magn Reson Med 2016;76:998. doi:10.1002/mrm.25991
    """
    b, sse = solve_linear(_double_integrals(t_s, conc_mM, cp_mM, axis), conc_mM, axis=axis)
    fp, gamma, alpha, beta = b[:, 0], b[:, 1] / b[:, 0], -b[:, 2], -b[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        fp_over_vp = alpha - gamma
        vp = fp / fp_over_vp
        ps_over_ve = beta / fp_over_vp
        ps = vp * (gamma - ps_over_ve)
        ve = ps / ps_over_ve
    ok = (fp > 0) & (vp > 0) & (ps >= 0) & (ve > 0)
    return _nan_unless(ok, sse, fp * _PER_100ML_MIN, ps * SECONDS_PER_MINUTE, ve, vp)


def llsq_two_compartment_uptake(t_s, conc_mM, cp_mM, *, axis=-1):
    """2CUM by linear inversion: columns fp (mL/100mL/min), ps (/min), vp.

    ``C = Fp int(cp) + (Fp PS/vp) iint(cp) - ((Fp + PS)/vp) int(C)``.
    """
    int_cp, iint_cp, int_c, _ = _double_integrals(t_s, conc_mM, cp_mM, axis)
    b, sse = solve_linear([int_cp, iint_cp, int_c], conc_mM, axis=axis)
    fp = b[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ps_over_vp = b[:, 1] / fp
        vp = fp / (-b[:, 2] - ps_over_vp)
        ps = ps_over_vp * vp
    ok = (fp > 0) & (vp > 0) & (ps >= 0)
    return _nan_unless(ok, sse, fp * _PER_100ML_MIN, ps * SECONDS_PER_MINUTE, vp)


def llsq_two_compartment_filtration(t_s, conc_mM, cp_mM, *, axis=-1):
    """2CFM by linear inversion: columns fp (mL/100mL/min), vp, ft (mL/100mL/min), tt (s).

    ``C = Fp int(cp) + (Fp/vp)(FT + vp/Tt) iint(cp) - (1/Tt + Fp/vp) int(C) - Fp/(vp Tt) iint(C)``.
    ``1/Tt`` and ``Fp/vp`` are the two roots of ``x^2 - a x + b``; the faster one is taken as the
    plasma rate, as the plasma transit (seconds) is shorter than the tubular one (minutes).
    """
    b, sse = solve_linear(_double_integrals(t_s, conc_mM, cp_mM, axis), conc_mM, axis=axis)
    fp, alpha, beta = b[:, 0], -b[:, 2], -b[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = np.sqrt(alpha * alpha - 4.0 * beta)
        plasma_rate = 0.5 * (alpha + disc)
        tubular_rate = beta / plasma_rate
        vp = fp / plasma_rate
        ft = b[:, 1] / plasma_rate - vp * tubular_rate
        tt = 1.0 / tubular_rate
    ok = (fp > 0) & (vp > 0) & (ft >= 0) & (tt > 0) & np.isfinite(disc)
    return _nan_unless(ok, sse, fp * _PER_100ML_MIN, vp, ft * _PER_100ML_MIN, tt)


def _nan_unless(ok, sse, *columns):
    out = np.stack(columns, axis=-1)
    out[~(ok & np.all(np.isfinite(out), axis=-1))] = np.nan
    return LinearFit(out, sse)
