"""Bounded Levenberg-Marquardt least squares for many small problems at once.

Every voxel is its own problem with a handful of parameters; the iteration is written over a
(n_problems, n_params) parameter matrix so that numpy does the work, not a Python loop over voxels.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

__all__ = ["levenberg_marquardt", "LeastSquaresResult"]


class LeastSquaresResult(NamedTuple):
    """``params`` (n, k); ``cost`` (n,) sum of squared residuals; ``converged`` (n,) bool; ``n_iter`` int."""

    params: np.ndarray
    cost: np.ndarray
    converged: np.ndarray
    n_iter: int


def finite_difference_jacobian(
    fun: Callable,
    p: np.ndarray,
    rows: np.ndarray,
    f: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    rel_step: float = 1e-6,
    abs_step: float = 1e-9,
) -> np.ndarray:
    """Forward-difference Jacobian (n, m, k) of ``fun(p, rows) -> (n, m)``, stepping inwards at upper bounds."""
    n, k = p.shape
    jac = np.empty(f.shape + (k,))
    for j in range(k):  # loop over parameters (a few), not voxels
        h = rel_step * np.maximum(np.abs(p[:, j]), 1.0) + abs_step
        h = np.where(p[:, j] + h > upper[j], -h, h)
        q = p.copy()
        q[:, j] += h
        jac[..., j] = (fun(q, rows) - f) / h[:, None]
    return jac


def levenberg_marquardt(
    model: Callable,
    p0,
    y,
    *,
    lower,
    upper,
    max_iter: int = 100,
    ftol: float = 1e-9,
    xtol: float = 1e-10,
    lambda0: float = 1e-2,
) -> LeastSquaresResult:
    """Minimise ``sum((y - f(p))**2)`` over ``lower <= p <= upper`` for every row of ``y`` at once.

    Parameters
    ----------
    model : callable
        ``model(p, rows)`` with ``p`` of shape (len(rows), k) and ``rows`` an integer index into the
        problems, returning either ``f`` of shape (len(rows), m) or a pair ``(f, jac)`` with
        ``jac`` of shape (len(rows), m, k). Without ``jac`` a forward-difference Jacobian is used.
    p0 : (n, k) ndarray
        Starting values; clipped into the bounds.
    y : (n, m) ndarray
        Data. Rows with non-finite values are not iterated and come back not converged.
    lower, upper : (k,) array_like
        Bounds; a step that leaves them is projected back (clipped) onto them.
    max_iter : int
        Iterations, each one trial step for every unconverged problem.
    ftol, xtol : float
        A problem has converged when an accepted step lowers the cost by less than ``ftol`` times the
        cost, or changes no parameter by more than ``xtol`` times its size, or when no step can lower it.

    Returns
    -------
    LeastSquaresResult
    """
    y = np.asarray(y, dtype=float)
    lower = np.broadcast_to(np.asarray(lower, dtype=float), (np.shape(p0)[1],))
    upper = np.broadcast_to(np.asarray(upper, dtype=float), (np.shape(p0)[1],))
    p = np.clip(np.array(p0, dtype=float), lower, upper)
    n, k = p.shape

    def evaluate(q, rows):
        out = model(q, rows)
        if isinstance(out, tuple):
            return out
        return out, finite_difference_jacobian(model, q, rows, out, lower, upper)

    all_rows = np.arange(n)
    valid = np.all(np.isfinite(y), axis=-1) & np.all(np.isfinite(p), axis=-1)
    f, jac = evaluate(p[valid], all_rows[valid])
    cost = np.full(n, np.nan)
    cost[valid] = np.sum((y[valid] - f) ** 2, axis=-1)
    residual = np.zeros_like(y)
    residual[valid] = y[valid] - f
    jacobian = np.zeros(y.shape + (k,))
    jacobian[valid] = jac
    lam = np.full(n, lambda0)
    converged = np.zeros(n, dtype=bool)
    active = valid & np.isfinite(cost)
    n_iter = 0
    eye = np.eye(k)
    for n_iter in range(1, max_iter + 1):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        J, r = jacobian[rows], residual[rows]
        # Parameters on a bound whose descent direction points out of the box are held there:
        # clipping their steps instead would zig-zag and stall the others.
        g = np.einsum("nmk,nm->nk", J, r)
        held = ((p[rows] <= lower) & (g < 0)) | ((p[rows] >= upper) & (g > 0))
        J = np.where(held[:, None, :], 0.0, J)
        jtj = np.einsum("nmk,nml->nkl", J, J)
        jtr = np.where(held, 0.0, g)
        diag = np.diagonal(jtj, axis1=1, axis2=2)
        scale = np.maximum(diag, 1e-12 * (diag.max(axis=1, keepdims=True) + 1e-300))
        a = jtj + lam[rows, None, None] * scale[:, :, None] * eye
        with np.errstate(all="ignore"):
            step = _solve_batched(a, jtr)
        trial = np.clip(p[rows] + step, lower, upper)
        out = model(trial, rows)
        f_new, j_new = out if isinstance(out, tuple) else (out, None)
        with np.errstate(invalid="ignore", over="ignore"):
            cost_new = np.sum((y[rows] - f_new) ** 2, axis=-1)
        better = np.isfinite(cost_new) & (cost_new <= cost[rows])
        moved = np.abs(trial - p[rows])
        small_step = np.all(moved <= xtol * (np.abs(p[rows]) + xtol), axis=-1)
        small_gain = better & (cost[rows] - cost_new <= ftol * cost[rows])
        stuck = ~better & (lam[rows] >= 1e12)
        acc = rows[better]
        if acc.size:
            p[acc] = trial[better]
            cost[acc] = cost_new[better]
            residual[acc] = y[acc] - f_new[better]
            if j_new is not None:
                jacobian[acc] = j_new[better]
            else:
                jacobian[acc] = finite_difference_jacobian(model, p[acc], acc, f_new[better], lower, upper)
        lam[rows] = np.where(better, np.maximum(lam[rows] / 10.0, 1e-12), lam[rows] * 10.0)
        done = small_gain | (better & small_step) | stuck
        converged[rows[done]] = True
        active[rows[done]] = False
    return LeastSquaresResult(p, cost, converged, n_iter)


def _solve_batched(a, b):
    """Solve a[i] x[i] = b[i] for every i; singular systems give NaN rows instead of raising."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full(b.shape, np.nan)
        det_ok = np.abs(np.linalg.det(a)) > 0
        if det_ok.any():
            out[det_ok] = np.linalg.solve(a[det_ok], b[det_ok][..., None])[..., 0]
        return out
