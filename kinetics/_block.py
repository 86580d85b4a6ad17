"""One block of voxels through the fitting engine, time-major.

:func:`kinetics.fit.fit_curves` cuts the voxels into blocks and hands each one here as a
(n_times, n_voxels) array: in that layout the running integrals and convolutions over time run as
whole contiguous rows, and the dot products over time as matrix-vector products or one ``einsum``.
The order of work is: screen the curves (non-finite, flat, not enhancing), linear fit (optionally
over trial delays), nonlinear fit, quality (rmse, r2) and the status of every voxel
(:mod:`kinetics.status`).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np

from .convolution import delay_input, exp_conv, from_time_major, to_time_major
from .linear import dot_over_time
from .models import SECONDS_PER_MINUTE
from ._optimize import levenberg_marquardt
from .registry import ModelSpec
from ._separable import fit_tofts_separable
from .status import AT_BOUND, ESTIMATE_NOT_FINITE, INPUT_NOT_FINITE, NOT_CONVERGED, NOT_ENHANCING, OK

__all__ = ["BlockOptions", "fit_block"]

_dot = partial(dot_over_time, axis=0)  # per-voxel dot products over time of time-major arrays

_SEPARABLE = {"tofts": False, "extended_tofts": True}  # model -> has vp
_FLAT = 1e-6  # a curve whose standard deviation is below this fraction of its mean counts as flat


class BlockOptions(NamedTuple):
    """The options of :func:`kinetics.fit.fit_curves` that act inside a block."""

    method: str
    fit_delay: bool
    delay_bounds_s: tuple
    delay_step_s: float
    max_iter: int
    min_enhancement_z: float


def _columns(x, rows, n):
    """Columns (voxels) of a time-major array; a shared (n_times,) input or all columns pass as they are."""
    if x.ndim == 1 or rows.size == n:
        return x
    return x[:, rows]


def _all_finite(p):
    """``np.all(np.isfinite(p), axis=-1)`` for (n, k) ``p``, a column at a time: numpy reduces over a
    short last axis several times slower."""
    out = np.isfinite(p[:, 0])
    for j in range(1, p.shape[1]):
        out &= np.isfinite(p[:, j])
    return out


def _any_beyond(p, lower, upper):
    """Rows of ``p`` (n, k) with any entry at or above ``upper`` or below ``lower``, a column at a time."""
    out = np.zeros(p.shape[0], dtype=bool)
    for j in range(p.shape[1]):
        out |= p[:, j] >= upper[j]
        out |= p[:, j] < lower[j]
    return out


def _dense(rows, n):
    """Whether to compute on every column and keep ``rows`` rather than gather them first: the gather
    is a pass over the block, which costs more than the wasted columns when most are kept."""
    return 2 * rows.size >= n


def _enhancing(ct, cpt, z, sst=None):
    """True where the mean concentration after the AIF peak is significantly above zero.

    The noise standard deviation comes from the mean absolute second difference over time
    (``E|d2| = sqrt(6) sigma sqrt(2/pi)`` for white noise), which a smooth curve barely raises and
    a single outlying frame (a motion spike) raises far less than a root-mean-square would.

    With ``sst`` (n,), the curves' sums of squares about their means, and ``z >= 0``, the second
    differences are computed only where they can change the answer: each |d2| is at most 4 values'
    distances from the mean, so ``mean |d2| <= 4 n_times / (n_times - 2) sqrt(sst / n_times)``, and a
    curve whose mean after the peak clears the test with that bound clears it with its own noise
    (most enhancing curves). The answer is the same either way.
    """
    n_times = ct.shape[0]
    post = np.arange(n_times)[:, None] >= np.argmax(cpt, axis=0)
    n_post = np.maximum(post.sum(0), 1)
    if cpt.ndim == 1:  # one input for all voxels: a matrix-vector product
        mean_post = post[:, 0].astype(float) @ ct / n_post
    else:
        mean_post = np.einsum("tn,tn->n", ct, post) / n_post
    threshold = z / (np.sqrt(n_post) * (n_times - 2) * np.sqrt(6.0) * np.sqrt(2.0 / np.pi))  # per unit sum |d2|
    if sst is None or z < 0:  # (a negative z turns the bound around)
        return mean_post > threshold * _sum_abs_second_difference(ct)
    out = mean_post > threshold * 4.0 * n_times * np.sqrt(sst / n_times)
    rest = np.flatnonzero(~out)
    if rest.size:
        if _dense(rest, out.size):
            out[rest] = (mean_post > threshold * _sum_abs_second_difference(ct))[rest]
        else:
            t_rest = threshold if threshold.size == 1 else threshold[rest]
            out[rest] = mean_post[rest] > t_rest * _sum_abs_second_difference(ct[:, rest])
    return out


def _sum_abs_second_difference(ct):
    """Per column of time-major ``ct``, the sum over time of |second difference|: two passes."""
    d1 = ct[1:] - ct[:-1]
    d2 = np.subtract(d1[1:], d1[:-1])
    del d1
    return np.abs(d2, out=d2).sum(0)


def _model_sse(spec, t, ct, cpt, params, cc):
    """Squared error of the model curves at ``params`` (m, k) against time-major data ``ct`` (n_times, m).

    ``cpt`` is (n_times,) or time-major (n_times, m); ``cc`` (m,) the data's own squared norms. For
    the Tofts family, ``C = Ktrans f + vp cp``, the error is expanded into dot products of f, cp and
    the data, which saves building the residual; its rounding (about 1e-16 of ``cc``) is far below
    any noise. Other models go through their voxel-major forward function.
    """
    if spec.name not in _SEPARABLE:
        resid = ct - spec.forward(t, from_time_major(cpt), *params.T).T
        return _dot(resid, resid)
    ktrans = params[:, 0] / SECONDS_PER_MINUTE
    with np.errstate(divide="ignore", invalid="ignore"):
        f = exp_conv(t, cpt, ktrans / params[:, 1], axis=0)
    sse = cc - 2.0 * ktrans * _dot(f, ct) + ktrans * ktrans * _dot(f, f)
    if _SEPARABLE[spec.name]:
        vp = params[:, 2]
        sse += vp * (vp * _dot(cpt, cpt) - 2.0 * _dot(ct, cpt) + 2.0 * ktrans * _dot(f, cpt))
    return np.maximum(sse, 0.0)


def _linear_with_delay(spec, t, ct, cpt, cc, delays):
    """Linear fit at each trial delay; per voxel, the parameters and delay that fit best.

    "Best" is the least squared error of the model curve where the linear parameters are physical,
    and of the linear regression for voxels where they are not at any delay.
    """
    n, k = ct.shape[1], len(spec.params)
    best = np.full((n, k + 1), np.nan)
    best_sse = np.full(n, np.inf)
    fallback_delay = np.zeros(n)
    fallback_sse = np.full(n, np.inf)
    cp_vm = from_time_major(cpt)  # delay_input works voxel-major
    for d in delays:  # a few dozen trial delays, each fitted for all voxels at once
        cpd = to_time_major(delay_input(t, cp_vm, d))
        fit = spec.linear(t, ct, cpd, axis=0, c_dot_c=cc)
        lower = fit.sse < fallback_sse
        fallback_delay[lower], fallback_sse[lower] = d, fit.sse[lower]
        good = np.flatnonzero(_all_finite(fit.params))
        if good.size == 0:
            continue
        sse = _model_sse(spec, t, _columns(ct, good, n), _columns(cpd, good, n), fit.params[good], cc[good])
        better = good[sse < best_sse[good]]
        best[better, :k] = fit.params[better]
        best[better, k] = d
        best_sse[better] = sse[sse < best_sse[good]]
    never = ~np.isfinite(best_sse)
    best[never, k] = fallback_delay[never]
    return best


def fit_block(spec: ModelSpec, t, ct, cpt, options: BlockOptions, weights=None):
    """Fit ``spec`` to every column of a time-major block.

    Parameters
    ----------
    spec : ModelSpec
    t : (n_times,) ndarray, s
    ct : (n_times, n) float64 C-contiguous ndarray, mM
    cpt : (n_times,) or (n_times, n) ndarray, mM
    options : BlockOptions
    weights : None or (n_times, n) ndarray of 0 and 1
        Frames that enter the fit (internal: a block's curves with excluded frames come back here
        with those frames filled in and weight 0).

    Returns
    -------
    params : (n, k) ndarray, the model's parameters (then the delay, when fitted); a parameter that
        ended on (or, for a linear fit, beyond) a bound is set to that bound
    quality : (rmse, r2, status, frames_excluded), each (n,); status holds :mod:`kinetics.status` codes

    With ``method="nlls"``, a curve with some frames not finite (a saturated signal converts to NaN
    there) is fitted without those frames, as long as :data:`MIN_FRAMES_KEPT` of its frames are left:
    the frames are filled in by linear interpolation for the screening and the linear seed, and left
    out of the nonlinear fit and its quality (``frames_excluded`` counts them).
    """
    n_times, n = ct.shape
    k = len(spec.params)
    # screening: non-finite values make the sums non-finite; the variance comes from two sums
    total = np.ones(n_times) @ ct
    cc = _dot(ct, ct)
    sst = cc - total * total / n_times
    mean = total / n_times
    finite_input = np.isfinite(sst)
    gapped = _with_gaps(ct, finite_input, k, options) if weights is None else np.array([], int)
    if weights is not None:  # the sums over the frames kept
        kept = weights.sum(0)
        total_w = np.einsum("tn,tn->n", ct, weights)
        sst = np.einsum("tn,tn->n", ct * ct, weights) - total_w * total_w / kept
    valid = finite_input & (sst > n_times * (_FLAT * mean) ** 2)
    with np.errstate(invalid="ignore", over="ignore"):
        valid &= _enhancing(ct, cpt, options.min_enhancement_z, np.maximum(sst, 0.0))
    lower = np.array(spec.lower + ((options.delay_bounds_s[0],) if options.fit_delay else ()))
    upper = np.array(spec.upper + ((options.delay_bounds_s[1],) if options.fit_delay else ()))
    sse = np.full(n, np.nan)  # of the final model curve, where a fit already computed it
    rows = np.flatnonzero(valid)
    if options.method == "llsq" and not options.fit_delay and _dense(rows, n):
        with np.errstate(all="ignore"):  # the columns not kept may hold NaN or inf
            p = spec.linear(t, ct, cpt, axis=0, c_dot_c=cc).params
        np.copyto(p, np.nan, where=~valid[:, None])
    else:
        p = np.full((n, len(lower)), np.nan)
        cv, cpv = _columns(ct, rows, n), _columns(cpt, rows, n)
        if options.fit_delay:
            lo, hi = options.delay_bounds_s
            step = options.delay_step_s
            grid = np.unique(np.clip(np.arange(lo, hi + step / 2, step), lo, hi))  # never past a bound
            p[rows] = _linear_with_delay(spec, t, cv, cpv, cc[rows], grid)
        else:
            p[rows] = spec.linear(t, cv, cpv, axis=0, c_dot_c=cc[rows]).params
    converged = valid.copy() if options.method == "llsq" else np.zeros(n, dtype=bool)
    if options.method == "nlls" and rows.size:
        seed = p[rows, :k]
        seed = np.where(np.isfinite(seed), seed, np.array(spec.initial))
        if options.fit_delay:  # the delay stays at its grid value; the input is shifted once per voxel
            delay = np.where(np.isfinite(p[rows, -1]), p[rows, -1], 0.0)
            cpv = to_time_major(delay_input(t, from_time_major(cpv), delay))
        p[rows, :k], converged[rows], sse[rows] = _nonlinear(
            spec, t, cv, cpv, cc[rows], seed, lower[:k], upper[:k], options.max_iter,
            weights=None if weights is None else _columns(weights, rows, n),
        )
    # on an upper bound, or beyond a bound (linear fits are unbounded): kept at the bound, flagged
    finite = converged & _all_finite(p)
    near_upper = upper - 1e-6 * (np.abs(upper) + 1.0)
    beyond = finite & _any_beyond(p, lower - 1e-9 * (np.abs(lower) + 1.0), near_upper)
    if beyond.any():
        clipped = np.clip(p[beyond], lower, upper)
        clipped = np.where(clipped >= near_upper, upper, clipped)  # onto the bound it is flagged for
        sse[beyond] = np.where(np.all(clipped == p[beyond], axis=-1), sse[beyond], np.nan)  # moved: recompute
        p[beyond] = clipped
    # quality of the final parameters
    todo = np.flatnonzero(finite & ~np.isfinite(sse))
    if todo.size:
        every = _dense(todo, n)  # compute on every column and keep those to do
        cv, cpf, q, ccv = (ct, cpt, p, cc) if every else (ct[:, todo], _columns(cpt, todo, n), p[todo], cc[todo])
        if options.fit_delay:
            cpf, q = to_time_major(delay_input(t, from_time_major(cpf), q[:, -1])), q[:, :-1]
        with np.errstate(all="ignore"):  # the columns not kept may hold NaN
            if weights is None:
                model_sse = _model_sse(spec, t, cv, cpf, q, ccv)
            else:
                resid = (cv - spec.forward(t, from_time_major(cpf), *q.T).T) * (weights if every else weights[:, todo])
                model_sse = _dot(resid, resid)
        sse[todo] = model_sse[todo] if every else model_sse
    frames = n_times if weights is None else weights.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rmse = np.where(finite, np.sqrt(sse / frames), np.nan)
        r2 = np.where(finite, 1.0 - sse / sst, np.nan)
    status = np.select(
        [~finite_input, ~valid, ~converged, ~(finite & np.isfinite(rmse)), beyond],
        [INPUT_NOT_FINITE, NOT_ENHANCING, NOT_CONVERGED, ESTIMATE_NOT_FINITE, AT_BOUND], OK,
    )
    excluded = np.zeros(n) if weights is None else n_times - frames
    if gapped.size:  # fitted again without their missing frames
        kept = np.isfinite(ct[:, gapped])
        filled = _fill_gaps(t, ct[:, gapped], kept)
        g_p, (g_rmse, g_r2, g_status, g_excluded) = fit_block(
            spec, t, filled, _columns(cpt, gapped, n), options, weights=kept.astype(float))
        p[gapped], rmse[gapped], r2[gapped], status[gapped], excluded[gapped] = g_p, g_rmse, g_r2, g_status, g_excluded
    return p, (rmse, r2, status, excluded)


MIN_FRAMES_KEPT = 0.5  # a curve with missing frames is fitted if at least this fraction of its frames is left


def _with_gaps(ct, finite_input, k, options):
    """Columns whose curves miss some frames but keep enough to fit without them (nlls only)."""
    bad = np.flatnonzero(~finite_input)
    if options.method != "nlls" or bad.size == 0:
        return np.array([], int)
    kept = np.isfinite(ct[:, bad]).sum(0)
    return bad[kept >= max(k + 2, int(np.ceil(MIN_FRAMES_KEPT * ct.shape[0])))]


def _fill_gaps(t, ct, kept):
    """``ct`` (n_times, m) with the frames not ``kept`` filled in by linear interpolation in time
    between the nearest kept frames (the nearest one at either end), all columns at once."""
    n_times = ct.shape[0]
    frame = np.arange(n_times)[:, None]
    before = np.maximum.accumulate(np.where(kept, frame, -1), axis=0)
    after = np.minimum.accumulate(np.where(kept, frame, n_times)[::-1], axis=0)[::-1]
    before = np.where(before < 0, after, before)
    after = np.where(after >= n_times, before, after)
    columns = np.arange(ct.shape[1])[None, :]
    y0, y1 = ct[before, columns], ct[after, columns]
    t0, t1 = t[before], t[after]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(t1 > t0, (t[:, None] - t0) / (t1 - t0), 0.0)
    return np.where(kept, ct, y0 + share * (y1 - y0))


def _nonlinear(spec, t, ct, cpt, cc, seed, lower, upper, max_iter, weights=None):
    """Bounded nonlinear least squares from ``seed``: params (n, k), converged (n,), sse (n,).

    The Tofts family goes through variable projection first (fast, exact for interior optima);
    voxels it leaves outside the bounds or unconverged, and all other models, go through the
    bounded Levenberg-Marquardt iteration. ``sse`` is NaN where the returned parameters are not
    the ones it was computed for (clipped onto a bound).
    """
    n = ct.shape[1]
    params = np.array(seed, dtype=float)
    converged = np.zeros(n, dtype=bool)
    sse = np.full(n, np.nan)
    todo = np.arange(n)
    if spec.name in _SEPARABLE and weights is None:  # variable projection needs every frame
        kep0 = seed[:, 0] / seed[:, 1] / SECONDS_PER_MINUTE
        with_vp = _SEPARABLE[spec.name]
        sep = fit_tofts_separable(t, ct, cpt, kep0, with_vp=with_vp, max_iter=max_iter, axis=0, c_dot_c=cc)
        estimate = np.stack([sep.ktrans, sep.ve, sep.vp][: len(spec.params)], axis=-1)
        sep_sse = sep.sse
        if with_vp:  # a negative vp puts the bounded optimum on vp = 0: the Tofts model there
            on_zero = np.flatnonzero((sep.converged | sep.no_washout) & (sep.vp < 0))
            if on_zero.size:
                kep_z = sep.ktrans[on_zero] / sep.ve[on_zero] / SECONDS_PER_MINUTE
                kep_z = np.where(np.isfinite(kep_z) & (kep_z > 0), kep_z, kep0[on_zero])
                z = fit_tofts_separable(
                    t, ct[:, on_zero], _columns(cpt, on_zero, n), kep_z, with_vp=False, max_iter=max_iter, axis=0,
                    c_dot_c=cc[on_zero],
                )
                estimate[on_zero] = np.stack([z.ktrans, z.ve, np.zeros(on_zero.size)], axis=-1)
                sep.converged[on_zero] = z.converged
                sep.no_washout[on_zero] = z.no_washout
                sep_sse[on_zero] = z.sse
        estimate[sep.no_washout, 1] = np.inf  # kep -> 0: ve beyond its bound
        sep_converged = sep.converged | sep.no_washout
        inside = sep_converged & np.all((estimate >= lower) & (estimate <= upper), axis=-1)
        # beyond an upper bound the bounded optimum lies on it, which flags the voxel (fit_ok = False)
        # whatever the other parameters: no need to iterate further
        beyond = sep_converged & ~inside & np.all(estimate >= lower, axis=-1)
        done = inside | beyond
        params[done] = np.clip(estimate[done], lower, upper)
        converged[done] = True
        sse[inside] = sep_sse[inside]
        todo = np.flatnonzero(~done)
    if todo.size:
        evaluate = spec.jacobian or spec.forward
        c_todo = np.ascontiguousarray(ct[:, todo].T)
        cp_todo = from_time_major(_columns(cpt, todo, n))
        w = None if weights is None else np.ascontiguousarray(weights[:, todo].T)

        def curve(q, r):
            out = evaluate(t, cp_todo if cp_todo.ndim == 1 else cp_todo[r], *q.T)
            if w is None:
                return out
            if isinstance(out, tuple):  # frames left out weigh 0 in the residual and its Jacobian
                return out[0] * w[r], out[1] * w[r][:, :, None]
            return out * w[r]

        if w is not None:
            c_todo = c_todo * w

        res = levenberg_marquardt(curve, params[todo], c_todo, lower=lower, upper=upper, max_iter=max_iter)
        params[todo], converged[todo], sse[todo] = res.params, res.converged, res.cost
    return params, converged, sse
