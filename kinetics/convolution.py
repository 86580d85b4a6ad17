"""Exact convolutions of a piecewise-linear input, the kernel of every compartment model.

An input sampled at times ``t`` is taken to be linear between samples (as a measured or population
AIF is). Its convolution with an exponential then has a closed form on each interval, so the result is
exact at any sampling and on non-uniform grids, where a rectangle rule is biased by up to half a frame.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "exp_conv",
    "exp_conv_and_derivative",
    "cumulative_integral",
    "delay_input",
    "to_time_major",
    "from_time_major",
]

_SMALL = 1e-4  # below this k*dt the closed forms lose digits and their Taylor series take over
_TRANSPOSE_STRIPE = 256  # voxels per stripe of a transposed copy: 10-25% faster than one strided copy


def cumulative_integral(t_s: ArrayLike, x: ArrayLike, *, axis: int = -1) -> np.ndarray:
    """Running integral of a piecewise-linear ``x`` over time, exact (trapezoids).

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
    x : ndarray with time on ``axis``
    axis : int
        The time axis of ``x`` and of the result.

    Returns
    -------
    ndarray of x's shape, units of x times s; zero at ``t_s[0]``.
    """
    x = np.asarray(x, dtype=float)
    half_dt = 0.5 * np.diff(t_s)
    if x.ndim == 1:
        out = np.zeros(x.shape)
        np.cumsum((x[1:] + x[:-1]) * half_dt, out=out[1:])
        return out
    xt = np.moveaxis(x, axis, 0)
    out = np.empty(xt.shape)
    out[0] = 0.0
    np.add(xt[1:], xt[:-1], out=out[1:])
    if np.all(half_dt == half_dt[0]):  # a uniform grid: a scalar, cheaper than a broadcast column
        out[1:] *= half_dt[0]
    else:
        out[1:] *= half_dt.reshape((-1,) + (1,) * (x.ndim - 1))
    for i in range(1, out.shape[0] - 1):  # running sum over time, each step a contiguous row
        out[i + 1] += out[i]
    return from_time_major(out, axis)


def to_time_major(x: ArrayLike, axis: int = -1) -> np.ndarray:
    """``x`` with its time axis (``axis``) first and contiguous: (n, n_times) -> (n_times, n).

    A 1-D curve, or a float64 array whose time axis is already first, comes back as it is (no copy);
    otherwise the cast to float64 and the transpose are one copy.
    """
    x = np.asarray(x)
    if x.ndim == 1 or axis in (0, -x.ndim):
        return np.asarray(x, dtype=float)
    if x.ndim != 2:
        return np.asarray(np.moveaxis(x, axis, 0), dtype=float, order="C")
    out = np.empty(x.shape[::-1])
    for start in range(0, x.shape[0], _TRANSPOSE_STRIPE):  # stripes that stay in cache
        stop = start + _TRANSPOSE_STRIPE
        out[:, start:stop] = x[start:stop].T
    return out


def from_time_major(y: np.ndarray, axis: int = -1) -> np.ndarray:
    """A time-major array with its time axis moved to ``axis``, contiguous: (n_times, n) -> (n, n_times).

    The inverse of :func:`to_time_major`. The dot products over time that follow are several times
    faster on contiguous rows.
    """
    if y.ndim == 1 or axis in (0, -y.ndim):
        return y
    return np.ascontiguousarray(np.moveaxis(y, 0, axis))


def _interval_terms(t_s, rate_per_s):
    """Per-interval factors of the exact recurrence, time-major: E, c1 (s), c2 (s), a = k dt, ...

    Returned with the interval axis first, (n_times - 1, ...), so that the loop over time reads
    contiguous rows. On a uniform grid the interval axis has length 1: they are computed once per
    voxel and broadcast by the caller.
    """
    dt = np.diff(t_s)
    k = np.asarray(rate_per_s, dtype=float)
    uniform = np.all(np.abs(dt - dt[0]) <= 1e-9 * dt[0])
    step = dt[:1] if uniform else dt
    a = np.multiply.outer(step, k)  # (1 or n_times - 1, ...)
    step = step.reshape((-1,) + (1,) * k.ndim)
    small = a < _SMALL
    a_safe = np.where(small, 1.0, a)
    e = np.exp(-a)
    one_minus_e = -np.expm1(-a_safe)
    c1 = np.where(small, step * (1.0 - a / 2.0 + a * a / 6.0), one_minus_e / a_safe * step)
    h = np.where(small, 0.5 - a / 3.0 + a * a / 8.0, (one_minus_e - a_safe * np.exp(-a_safe)) / (a_safe * a_safe))
    return e, c1, h * step, a, small, step, h


def _input_terms(xt, u, v, out=None):
    """``x[i] u - (x[i] - x[i-1]) v`` over the intervals, time-major, into ``out`` if given.

    For one input shared by all voxels on a uniform grid (``xt`` (n_times, 1), ``u`` and ``v``
    (1, n)) this is a rank-2 outer product, written by one matrix product instead of four passes.
    """
    x1, dx = xt[1:], xt[1:] - xt[:-1]
    if xt.ndim == 2 and xt.shape[1] == 1 and np.ndim(u) == 2 and np.shape(u)[0] == 1:
        return np.matmul(np.concatenate([x1, -dx], axis=1), np.concatenate([u, v]), out=out)
    out = np.multiply(x1, u, out=out)
    out -= dx * v
    return out


def _input_time_major(x, rate_per_s, axis):
    """Input with time first; a single curve gets trailing axes to broadcast against the rates."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        return x.reshape((-1,) + (1,) * np.ndim(rate_per_s))
    return np.moveaxis(x, axis, 0)


def exp_conv(t_s: ArrayLike, x: ArrayLike, rate_per_s: ArrayLike, *, axis: int = -1) -> np.ndarray:
    """Convolution ``y(t) = integral_0^t x(u) exp(-k (t - u)) du`` of a piecewise-linear input.

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
        Sample times, increasing; the integral starts at ``t_s[0]``.
    x : (n_times,) or (n_voxels, n_times) ndarray
        Input, linear between samples.
    rate_per_s : float or (n_voxels,) ndarray, /s
        Decay rate ``k >= 0``; ``k = 0`` gives the running integral.
    axis : {-1, 0}
        Time axis of a 2-D ``x`` and of the result: -1 for (n_voxels, n_times), 0 for
        (n_times, n_voxels), the layout the recurrence runs in (no transposed copy).

    Returns
    -------
    (n_voxels, n_times) ndarray (or (n_times,) for scalar inputs), units of x times s.

    Notes
    -----
    On each interval of length ``dt`` with ``E = exp(-k dt)``:
    ``y[i] = E y[i-1] + x[i] (1 - E)/k - (x[i] - x[i-1]) (1 - E - k dt E) / (k^2 dt)``.
    The recurrence loops over time points, vectorised over voxels.
    """
    t_s = np.asarray(t_s, dtype=float)
    e, c1, c2 = _interval_terms(t_s, rate_per_s)[:3]
    xt = _input_time_major(x, rate_per_s, axis)
    y = np.empty((t_s.size,) + np.broadcast_shapes(xt.shape[1:], c1.shape[1:]))
    y[0] = 0.0
    _input_terms(xt, c1, c2, out=y[1:])  # each interval's own term; the recurrence adds the past
    rows = y.reshape(t_s.size, -1)  # 2-D view, so that each row is an array even for one curve
    e2 = np.broadcast_to(e, y[1:].shape).reshape(t_s.size - 1, -1)  # e may be one row (uniform grid)
    decayed = np.empty(rows.shape[1])
    for i in range(1, t_s.size - 1):  # recurrence over time; each step is vectorised over voxels
        np.multiply(e2[i], rows[i], out=decayed)
        rows[i + 1] += decayed
    return from_time_major(y, axis)


def exp_conv_and_derivative(
    t_s: ArrayLike, x: ArrayLike, rate_per_s: ArrayLike, *, axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exp_conv` and its exact derivative with respect to the rate, in one pass.

    ``x``, ``rate_per_s`` and ``axis`` as for :func:`exp_conv`.

    Returns
    -------
    y : (n_voxels, n_times) ndarray, units of x times s
    dy_dk : (n_voxels, n_times) ndarray, units of x times s^2
        Derivative of ``y`` with respect to ``rate_per_s`` (the Jacobian column of a rate parameter).

    Notes
    -----
    Differentiating the recurrence of :func:`exp_conv`, with ``h(a) = (1 - E - a E)/a^2``:
    ``dy[i] = E (dy[i-1] - dt y[i-1]) - dt^2 (x[i] h(a) + (x[i] - x[i-1]) h'(a))``.
    """
    t_s = np.asarray(t_s, dtype=float)
    e, c1, c2, a, small, step, h = _interval_terms(t_s, rate_per_s)
    a_safe = np.where(small, 1.0, a)
    # h'(a) = (e^-a - 2 h(a))/a; on a uniform grid these are per-voxel arrays, broadcast for free
    dh = np.where(small, -1.0 / 3.0 + a / 4.0 - a * a / 10.0, (np.exp(-a_safe) - 2.0 * h) / a_safe)
    step2 = step * step
    xt = _input_time_major(x, rate_per_s, axis)
    b = _input_terms(xt, c1, c2)
    db = _input_terms(xt, -h * step2, dh * step2)
    e, b, db = np.broadcast_arrays(e, b, db)
    shape = (t_s.size,) + b.shape[1:]
    y, dy = np.empty(shape), np.empty(shape)
    y[0] = 0.0
    dy[0] = 0.0
    ry, rdy = y.reshape(t_s.size, -1), dy.reshape(t_s.size, -1)
    e2, b2, db2 = (v.reshape(t_s.size - 1, -1) for v in (e, b, db))
    dt = np.diff(t_s)
    tmp = np.empty_like(ry[0])
    for i in range(t_s.size - 1):  # in place: no temporaries inside the loop over time
        np.multiply(ry[i], -dt[i], out=tmp)
        tmp += rdy[i]
        np.multiply(e2[i], tmp, out=rdy[i + 1])
        rdy[i + 1] += db2[i]
        np.multiply(e2[i], ry[i], out=ry[i + 1])
        ry[i + 1] += b2[i]
    return from_time_major(y, axis), from_time_major(dy, axis)


def delay_input(t_s: ArrayLike, x: ArrayLike, delay_s: ArrayLike) -> np.ndarray:
    """Input delayed by ``delay_s``: ``x(t - delay)``, linear interpolation, ``x[0]`` before the start.

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
    x : (n_times,) or (n_voxels, n_times) ndarray
    delay_s : float or (n_voxels,) ndarray, s
        Positive values delay the input (the bolus arrives later).

    Returns
    -------
    ndarray of the broadcast shape of x and delay: (n_voxels, n_times) or (n_times,).
    """
    t_s = np.asarray(t_s, dtype=float)
    x = np.asarray(x, dtype=float)
    delay = np.asarray(delay_s, dtype=float)
    shifted = t_s - delay[..., None]  # (n_times,) or (n_voxels, n_times)
    idx = np.clip(np.searchsorted(t_s, shifted, side="right") - 1, 0, t_s.size - 2)
    t0, t1 = t_s[idx], t_s[idx + 1]
    w = np.clip((shifted - t0) / (t1 - t0), 0.0, 1.0)
    if x.ndim == 1 or shifted.ndim == 1:
        return x[..., idx] * (1 - w) + x[..., idx + 1] * w
    x = np.broadcast_to(x, shifted.shape)
    x0 = np.take_along_axis(x, idx, axis=-1)
    x1 = np.take_along_axis(x, idx + 1, axis=-1)
    return x0 * (1 - w) + x1 * w
