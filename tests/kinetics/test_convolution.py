"""Exact convolution of a piecewise-linear input: against fine quadrature, its derivative, delays."""

import numpy as np
import pytest

from kinetics.convolution import cumulative_integral, delay_input, exp_conv, exp_conv_and_derivative


def piecewise_linear_input(t):
    return np.interp(t, [0, 20, 30, 300], [0, 0, 5, 1])


def quadrature(t, x, k, n_fine=200_001):
    """Reference: the same integral by the trapezoid rule on a grid 2000x finer."""
    fine = np.linspace(t[0], t[-1], n_fine)
    xf = np.interp(fine, t, x)
    out = []
    for ti in t:
        sel = fine <= ti + 1e-9
        out.append(np.trapezoid(xf[sel] * np.exp(-k * (ti - fine[sel])), fine[sel]))
    return np.array(out)


@pytest.mark.parametrize("k", [0.0, 1e-7, 1e-3, 0.05, 1.0])
@pytest.mark.parametrize("grid", ["uniform", "irregular"])
def test_matches_fine_quadrature(k, grid):
    t = np.linspace(0, 300, 61) if grid == "uniform" else np.sort(np.r_[0.0, 300.0, np.random.default_rng(1).uniform(0, 300, 40)])
    x = piecewise_linear_input(t)
    np.testing.assert_allclose(exp_conv(t, x, k), quadrature(t, x, k), atol=2e-5 * x.max() * 300)


def test_zero_rate_is_the_running_integral():
    t = np.linspace(0, 100, 41)
    x = piecewise_linear_input(t)
    np.testing.assert_allclose(exp_conv(t, x, 0.0), cumulative_integral(t, x), atol=1e-12)


def test_vectorised_over_voxels_equals_one_at_a_time():
    t = np.linspace(0, 300, 61)
    x = piecewise_linear_input(t)
    k = np.array([0.0, 0.01, 0.2])
    stacked = exp_conv(t, np.stack([x, 2 * x, x]), k)
    for i, (xi, ki) in enumerate(zip([x, 2 * x, x], k)):
        np.testing.assert_allclose(stacked[i], exp_conv(t, xi, ki), rtol=1e-12)


def test_derivative_matches_central_difference():
    t = np.linspace(0, 300, 61)
    x = piecewise_linear_input(t)
    k = np.array([1e-6, 1e-3, 0.02, 0.3])
    y, dy = exp_conv_and_derivative(t, x, k)
    h = 1e-6 * np.maximum(k, 1e-3)
    numeric = (exp_conv(t, x, k + h) - exp_conv(t, x, k - h)) / (2 * h[:, None])
    np.testing.assert_allclose(y, exp_conv(t, x, k), rtol=1e-12)
    np.testing.assert_allclose(dy, numeric, rtol=1e-5, atol=1e-6 * np.abs(numeric).max())


def test_delay_shifts_and_fills_with_the_first_value():
    t = np.arange(0, 60, 2.0)
    x = piecewise_linear_input(t)
    shifted = delay_input(t, x, 4.0)
    np.testing.assert_allclose(shifted[2:], x[:-2])
    np.testing.assert_allclose(shifted[:2], x[0])
    per_voxel = delay_input(t, np.stack([x, x]), np.array([4.0, 0.0]))
    np.testing.assert_allclose(per_voxel[0], shifted)
    np.testing.assert_allclose(per_voxel[1], x)
    np.testing.assert_allclose(delay_input(t, x, 1.0)[11], 0.5 * (x[10] + x[11]))


@pytest.mark.parametrize("grid", ["uniform", "irregular"])
def test_time_major_layout_gives_the_same_curves(grid):
    """axis=0 takes and returns (n_times, n_voxels): the layout the fitting engine runs in."""
    t = np.linspace(0, 300, 61) if grid == "uniform" else np.sort(np.r_[0.0, 300.0, np.random.default_rng(2).uniform(0, 300, 40)])
    x = piecewise_linear_input(t)
    per_voxel = np.stack([x, 2 * x, 0.5 * x])
    k = np.array([1e-7, 0.01, 0.3])
    np.testing.assert_allclose(exp_conv(t, x, k, axis=0), exp_conv(t, x, k).T, rtol=1e-13)
    np.testing.assert_allclose(exp_conv(t, per_voxel.T, k, axis=0), exp_conv(t, per_voxel, k).T, rtol=1e-13)
    y0, dy0 = exp_conv_and_derivative(t, x, k, axis=0)
    y1, dy1 = exp_conv_and_derivative(t, x, k)
    np.testing.assert_allclose(y0, y1.T, rtol=1e-13)
    np.testing.assert_allclose(dy0, dy1.T, rtol=1e-13)
    np.testing.assert_allclose(cumulative_integral(t, per_voxel.T, axis=0), cumulative_integral(t, per_voxel).T, rtol=1e-13)
    trapezoid = np.array([np.trapezoid(x[: i + 1], t[: i + 1]) for i in range(t.size)])
    np.testing.assert_allclose(cumulative_integral(t, per_voxel)[0], trapezoid, rtol=1e-12, atol=1e-12)
