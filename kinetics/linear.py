"""Linear least-squares (LLSQ) fits of the kinetic models, for all voxels at once.

Each model's differential equations, integrated once or twice, make the tissue curve a linear
combination of running integrals of itself and of the input; the coefficients give the parameters
in closed form. These fits are fast, need no starting values, and seed the nonlinear fits.
Each function takes ``t_s`` (n_times,) in s, ``conc_mM`` (n_voxels, n_times) and ``cp_mM`` (n_times,)
or (n_voxels, n_times), and returns a :class:`LinearFit` whose params are in the units of :mod:`kinetics.models`;
coefficients that no parameter set can produce give NaN parameters. With ``axis=0`` the curves are
time-major instead, (n_times, n_voxels), the layout in which running integrals are cheapest;
``c_dot_c`` (n_voxels,), the curves' own squared norms, saves a pass where the caller has them.
Running integrals of C enter the models with a minus sign; they are regressed as they are and the sign
is taken off their coefficients, which saves a negated copy of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .convolution import cumulative_integral
from .models import SECONDS_PER_MINUTE

__all__ = [
    "LinearFit",
    "dot_over_time",
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


def dot_over_time(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Per-voxel dot product over time of two arrays, each (n_times,) or 2-D with time on ``axis``."""
    if a.ndim == 1 and b.ndim == 1:
        return np.float64(a @ b)
    if a.ndim == 1 or b.ndim == 1:
        vector, matrix = (a, b) if a.ndim == 1 else (b, a)
        return vector @ matrix if axis == 0 else matrix @ vector
    return np.einsum("ij,ij->j" if axis == 0 else "ij,ij->i", a, b)


def solve_linear(
    columns: Sequence[ArrayLike], y: ArrayLike, *, axis: int = -1, y_dot_y: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares coefficients for ``y ~ sum_j b_j columns[j]``, per voxel.

    Parameters
    ----------
    columns : sequence of k arrays, each (n_voxels, n_times) or (n_times,)
        A column shared by all voxels (such as the AIF) may be given once, as (n_times,).
    y : (n_voxels, n_times) ndarray
    axis : {-1, 0}
        The time axis of ``y`` and of 2-D columns; 0 for time-major (n_times, n_voxels) arrays.
    y_dot_y : (n_voxels,) ndarray, optional
        ``y``'s own squared norms, where the caller has them already.

    Returns
    -------
    coef : (n_voxels, k) ndarray
        NaN where the columns are linearly dependent (numerically).
    sse : (n_voxels,) ndarray
        Squared error of the fit.

    Notes
    -----
    The shared columns are projected out first (Frisch-Waugh): one QR decomposition of them, for all
    voxels, leaves per voxel only a system as large as its own columns (one or two for the kinetic
    models), which is solved after scaling to unit diagonal, as running integrals and concentrations
    differ by orders of magnitude. Everything per voxel comes from dot products over time (the
    projections by one matrix product), never from an (n_voxels, n_times, k) design array, and is
    kept as separate (n_voxels,) arrays: numpy is slow on (n_voxels, k, k) arrays, whose innermost
    loops are k long.
    """
    y = np.asarray(y, dtype=float)
    cols = [np.asarray(c, dtype=float) for c in columns]
    n = y.shape[1 if axis == 0 else 0]
    shared = [i for i, c in enumerate(cols) if c.ndim == 1]
    own_index = [i for i, c in enumerate(cols) if c.ndim != 1]
    own = [cols[i] for i in own_index]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN or inf curves give NaN
        yy = dot_over_time(y, y, axis) if y_dot_y is None else y_dot_y
        finite_y = np.isfinite(yy)  # curves with NaN or inf: NaN coefficients
        vy = [dot_over_time(v, y, axis) for v in own]
        vv = [[dot_over_time(v, w, axis) for w in own] for v in own]
        own_norm2 = [vv[m][m] for m in range(len(own))]
        if shared:
            basis, r = _orthonormal_basis([cols[i] for i in shared])

            def project(v):  # coordinates of every curve in the orthonormal basis, as s (n,) arrays
                return list(basis @ v if axis == 0 else (v @ basis.T).T)

            u = project(y)
            w = [project(v) for v in own]  # w[m][j]: own column m on basis vector j
            yy = yy - sum(uj * uj for uj in u)
            vy = [vy[m] - sum(wj * uj for wj, uj in zip(w[m], u)) for m in range(len(own))]
            vv = [[vv[m][l] - sum(a * b for a, b in zip(w[m], w[l])) for l in range(len(own))] for m in range(len(own))]
        b_own, sse = [], yy
        if own:  # residual system, scaled to unit diagonal
            # a column (nearly) inside the span of the shared ones leaves (almost) nothing: dependent
            norm = [np.sqrt(np.where(vv[m][m] > 1e-12 * own_norm2[m], vv[m][m], np.nan)) for m in range(len(own))]
            scaled = [[vv[m][l] / (norm[m] * norm[l]) for l in range(len(own))] for m in range(len(own))]
            z = _solve_spd(scaled, [vy[m] / norm[m] for m in range(len(own))])
            b_own = [z[m] / norm[m] for m in range(len(own))]
            sse = sse - sum(b * v for b, v in zip(b_own, vy))
        coef = [None] * len(cols)
        for i, b in zip(own_index, b_own):
            coef[i] = b
        if shared:  # back to the shared columns' own coefficients: r b = u - sum_m w[m] b_m
            rhs = [u[j] - sum(w[m][j] * b_own[m] for m in range(len(own))) for j in range(len(shared))]
            for j in reversed(range(len(shared))):
                coef[shared[j]] = (rhs[j] - sum(r[j, q] * coef[shared[q]] for q in range(j + 1, len(shared)))) / r[j, j]
            # as for the own columns: a shared column (nearly) inside the span of those before it
            if not all(r[j, j] > 1e-6 * np.linalg.norm(cols[i]) for j, i in enumerate(shared)):
                coef, sse = [np.full(n, np.nan)] * len(cols), np.full(n, np.nan)
        if not np.all(finite_y):
            coef, sse = [np.where(finite_y, c, np.nan) for c in coef], np.where(finite_y, sse, np.nan)
        return np.stack([np.broadcast_to(c, (n,)) for c in coef], axis=-1), np.maximum(sse, 0.0)


def _orthonormal_basis(columns):
    """``q`` (s, n_times), orthonormal rows, and upper-triangular ``r`` (s, s) with ``columns = q.T r``.

    Gram-Schmidt, each vector orthogonalised twice ("twice is enough"), for a handful of curves: far
    cheaper than ``numpy.linalg.qr``'s set-up for so small a matrix, which a block of voxels would
    otherwise pay every time.
    """
    s = len(columns)
    q, r = np.zeros((s, columns[0].size)), np.zeros((s, s))
    for j, column in enumerate(columns):
        v = column.copy()
        for _ in range(2):
            for i in range(j):
                coefficient = q[i] @ v
                r[i, j] += coefficient
                v -= coefficient * q[i]
        r[j, j] = np.sqrt(v @ v)
        if r[j, j] > 0:
            q[j] = v / r[j, j]
    return q, r


def _solve_spd(a, b):
    """Solve ``a x = b`` for small symmetric positive (semi)definite systems, one per voxel.

    ``a`` is a k x k nested list and ``b`` a list of k entries, each an (n,) array or a scalar;
    Cholesky is written out over the entries (k <= 4 here), each step for all voxels at once.
    Systems that are not numerically positive definite give NaN.
    """
    k = len(b)
    lower = [[None] * k for _ in range(k)]
    for j in range(k):
        d = a[j][j] - sum(lower[j][m] * lower[j][m] for m in range(j))
        lower[j][j] = np.sqrt(np.where(d > 1e-12, d, np.nan))
        for i in range(j + 1, k):
            lower[i][j] = (a[i][j] - sum(lower[i][m] * lower[j][m] for m in range(j))) / lower[j][j]
    z = [None] * k
    for i in range(k):
        z[i] = (b[i] - sum(lower[i][m] * z[m] for m in range(i))) / lower[i][i]
    x = [None] * k
    for i in reversed(range(k)):
        x[i] = (z[i] - sum(lower[m][i] * x[m] for m in range(i + 1, k))) / lower[i][i]
    return x


def llsq_tofts(
    t_s: ArrayLike, conc_mM: ArrayLike, cp_mM: ArrayLike, *, axis: int = -1, c_dot_c: np.ndarray | None = None
) -> LinearFit:
    """Tofts by Murase's linear form ``C = Ktrans int(cp) - kep int(C)``: columns ktrans (/min), ve.

    References
    ----------
    Murase. Magn Reson Med 2004;51:858. doi:10.1002/mrm.20022
    """
    int_cp = cumulative_integral(t_s, cp_mM, axis=axis)
    b, sse = solve_linear(
        [int_cp, cumulative_integral(t_s, conc_mM, axis=axis)], conc_mM, axis=axis, y_dot_y=c_dot_c
    )
    ktrans, kep = b[:, 0], -b[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = ktrans / kep
    ok = (ktrans >= 0) & (kep > 0)
    return _nan_unless(ok, sse, ktrans * SECONDS_PER_MINUTE, ve)


def llsq_extended_tofts(
    t_s: ArrayLike, conc_mM: ArrayLike, cp_mM: ArrayLike, *, axis: int = -1, c_dot_c: np.ndarray | None = None
) -> LinearFit:
    """Extended Tofts by Murase's form ``C = (Ktrans + kep vp) int(cp) - kep int(C) + vp cp``.

    Returns columns ktrans (/min), ve, vp.
    """
    cp = np.asarray(cp_mM, dtype=float)
    b, sse = solve_linear(
        [cumulative_integral(t_s, cp, axis=axis), cumulative_integral(t_s, conc_mM, axis=axis), cp],
        conc_mM, axis=axis, y_dot_y=c_dot_c,
    )
    kep, vp = -b[:, 1], b[:, 2]
    ktrans = b[:, 0] - kep * vp
    with np.errstate(divide="ignore", invalid="ignore"):
        ve = ktrans / kep
    # vp >= 0 is a bound: where the free solve puts vp below it, the constrained optimum has vp = 0,
    # which is the Tofts model (common: tissue with no measurable plasma volume)
    on_zero = np.isfinite(vp) & (vp < 0)
    if on_zero.any():
        tofts = llsq_tofts(t_s, *_voxels(on_zero, conc_mM, cp, axis=axis), axis=-1,
                           c_dot_c=None if c_dot_c is None else np.reshape(c_dot_c, -1)[on_zero])
        ktrans, ve, vp, sse = ktrans.copy(), ve.copy(), vp.copy(), sse.copy()
        ktrans[on_zero] = tofts.params[:, 0] / SECONDS_PER_MINUTE
        ve[on_zero], vp[on_zero], sse[on_zero] = tofts.params[:, 1], 0.0, tofts.sse
        kep = np.where(on_zero, 1.0, kep)  # the Tofts fit has checked its own kep
    ok = (ktrans >= 0) & (kep > 0) & (vp >= 0)
    return _nan_unless(ok, sse, ktrans * SECONDS_PER_MINUTE, ve, vp)


def _voxels(keep, conc_mM, cp_mM, *, axis):
    """The curves (voxel-major, (m, n_times)) and input of the voxels ``keep`` (flat, as the fits index
    them) of ``conc_mM`` with time along ``axis``; a shared (n_times,) input stays as it is."""
    conc = np.moveaxis(np.asarray(conc_mM, dtype=float), axis, -1)
    n_times = conc.shape[-1]
    curves = conc.reshape(-1, n_times)[keep]
    cp = np.asarray(cp_mM, dtype=float)
    if cp.ndim > 1:
        cp = np.broadcast_to(np.moveaxis(cp, axis, -1), conc.shape).reshape(-1, n_times)[keep]
    return curves, cp


def llsq_patlak(
    t_s: ArrayLike, conc_mM: ArrayLike, cp_mM: ArrayLike, *, axis: int = -1, c_dot_c: np.ndarray | None = None
) -> LinearFit:
    """Patlak ``C = Ktrans int(cp) + vp cp``: columns ktrans (/min), vp. Always defined (may be negative)."""
    cp = np.asarray(cp_mM, dtype=float)
    b, sse = solve_linear([cumulative_integral(t_s, cp, axis=axis), cp], conc_mM, axis=axis, y_dot_y=c_dot_c)
    return LinearFit(np.stack([b[:, 0] * SECONDS_PER_MINUTE, b[:, 1]], axis=-1), sse)


def _double_integrals(t_s, conc_mM, cp_mM, axis):
    int_c = cumulative_integral(t_s, conc_mM, axis=axis)
    int_cp = cumulative_integral(t_s, cp_mM, axis=axis)
    return int_cp, cumulative_integral(t_s, int_cp, axis=axis), int_c, cumulative_integral(t_s, int_c, axis=axis)


def llsq_two_compartment_exchange(
    t_s: ArrayLike, conc_mM: ArrayLike, cp_mM: ArrayLike, *, axis: int = -1, c_dot_c: np.ndarray | None = None
) -> LinearFit:
    """2CXM by linear inversion: columns fp (mL/100mL/min), ps (/min), ve, vp.

    Integrating the model's equations twice gives
    ``C = Fp int(cp) + Fp PS (1/vp + 1/ve) iint(cp) - (Fp/vp + PS/vp + PS/ve) int(C) - Fp PS/(vp ve) iint(C)``.

    References
    ----------
    Flouri, Lesnic, Sourbron. Magn Reson Med 2016;76:998. doi:10.1002/mrm.25991
    """
    b, sse = solve_linear(_double_integrals(t_s, conc_mM, cp_mM, axis), conc_mM, axis=axis, y_dot_y=c_dot_c)
    fp, gamma, alpha, beta = b[:, 0], b[:, 1] / b[:, 0], -b[:, 2], -b[:, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        fp_over_vp = alpha - gamma
        vp = fp / fp_over_vp
        ps_over_ve = beta / fp_over_vp
        ps = vp * (gamma - ps_over_ve)
        ve = ps / ps_over_ve
    ok = (fp > 0) & (vp > 0) & (ps >= 0) & (ve > 0)
    return _nan_unless(ok, sse, fp * _PER_100ML_MIN, ps * SECONDS_PER_MINUTE, ve, vp)


def llsq_two_compartment_uptake(
    t_s: ArrayLike, conc_mM: ArrayLike, cp_mM: ArrayLike, *, axis: int = -1, c_dot_c: np.ndarray | None = None
) -> LinearFit:
    """2CUM by linear inversion: columns fp (mL/100mL/min), ps (/min), vp.

    ``C = Fp int(cp) + (Fp PS/vp) iint(cp) - ((Fp + PS)/vp) int(C)``.
    """
    int_cp, iint_cp, int_c, _ = _double_integrals(t_s, conc_mM, cp_mM, axis)
    b, sse = solve_linear([int_cp, iint_cp, int_c], conc_mM, axis=axis, y_dot_y=c_dot_c)
    fp = b[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ps_over_vp = b[:, 1] / fp
        vp = fp / (-b[:, 2] - ps_over_vp)
        ps = ps_over_vp * vp
    ok = (fp > 0) & (vp > 0) & (ps >= 0)
    return _nan_unless(ok, sse, fp * _PER_100ML_MIN, ps * SECONDS_PER_MINUTE, vp)


def llsq_two_compartment_filtration(
    t_s: ArrayLike, conc_mM: ArrayLike, cp_mM: ArrayLike, *, axis: int = -1, c_dot_c: np.ndarray | None = None
) -> LinearFit:
    """2CFM by linear inversion: columns fp (mL/100mL/min), vp, ft (mL/100mL/min), tt (s).

    ``C = Fp int(cp) + (Fp/vp)(FT + vp/Tt) iint(cp) - (1/Tt + Fp/vp) int(C) - Fp/(vp Tt) iint(C)``.
    ``1/Tt`` and ``Fp/vp`` are the two roots of ``x^2 - a x + b``; the faster one is taken as the
    plasma rate, as the plasma transit (seconds) is shorter than the tubular one (minutes).
    """
    b, sse = solve_linear(_double_integrals(t_s, conc_mM, cp_mM, axis), conc_mM, axis=axis, y_dot_y=c_dot_c)
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
    keep = ok.copy()
    for c in columns:  # a column at a time: numpy reduces over a short last axis several times slower
        keep &= np.isfinite(c)
    out = np.stack(columns, axis=-1)
    np.copyto(out, np.nan, where=~keep[:, None])
    return LinearFit(out, sse)
