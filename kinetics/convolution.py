"""Exact convolutions of a piecewise-linear input, the kernel of every compartment model.

An input sampled at times ``t`` is taken to be linear between samples (as a measured or population
AIF is). Its convolution with an exponential then has a closed form on each interval, so the result is
exact at any sampling and on non-uniform grids, where a rectangle rule is biased by up to half a frame.
"""

from __future__ import annotations

import numpy as np

__all__ = ["exp_conv", "cumulative_integral", "delay_input"]

_SMALL = 1e-4  # below this k*dt the closed forms lose digits and their Taylor series take over


def cumulative_integral(t_s, x):
    """Running integral of a piecewise-linear ``x`` over time, exact (trapezoids).

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
    x : (..., n_times) ndarray

    Returns
    -------
    (..., n_times) ndarray, units of x times s; zero at ``t_s[0]``.
    """
    x = np.asarray(x, dtype=float)
    dt = np.diff(t_s)
    steps = 0.5 * (x[..., 1:] + x[..., :-1]) * dt
    out = np.zeros(np.broadcast_shapes(x.shape))
    np.cumsum(steps, axis=-1, out=out[..., 1:])
    return out


def exp_conv(t_s, x, rate_per_s):
    """Convolution ``y(t) = integral_0^t x(u) exp(-k (t - u)) du`` of a piecewise-linear input.

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
        Sample times, increasing; the integral starts at ``t_s[0]``.
    x : (n_times,) or (n_voxels, n_times) ndarray
        Input, linear between samples.
    rate_per_s : float or (n_voxels,) ndarray, /s
        Decay rate ``k >= 0``; ``k = 0`` gives the running integral.

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
    x = np.asarray(x, dtype=float)
    k = np.asarray(rate_per_s, dtype=float)[..., None]
    dt = np.diff(t_s)
    a = k * dt  # (..., n_times - 1)
    small = a < _SMALL
    a_safe = np.where(small, 1.0, a)
    e = np.exp(-a)
    # c1 = (1 - E)/k and c2 = (1 - E - a E)/(k^2 dt), both in seconds, with series for small a.
    c1 = np.where(small, dt * (1.0 - a / 2.0 + a * a / 6.0), -np.expm1(-a_safe) / a_safe * dt)
    c2 = np.where(
        small,
        dt * (0.5 - a / 3.0 + a * a / 8.0),
        (-np.expm1(-a_safe) - a_safe * np.exp(-a_safe)) / (a_safe * a_safe) * dt,
    )
    b = x[..., 1:] * c1 - (x[..., 1:] - x[..., :-1]) * c2
    e, b = np.broadcast_arrays(e, b)
    y = np.zeros(b.shape[:-1] + (t_s.size,))
    acc = y[..., 0]
    for i in range(b.shape[-1]):  # recurrence over time; each step is vectorised over voxels
        acc = e[..., i] * acc + b[..., i]
        y[..., i + 1] = acc
    return y


def delay_input(t_s, x, delay_s):
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
