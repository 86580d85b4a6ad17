"""Linear fits: time-major input gives the voxel-major answer, and solve_linear equals numpy's lstsq."""

import numpy as np
import pytest

from kinetics import linear
from kinetics.aif import plasma_aif
from kinetics.models import extended_tofts

T = np.arange(60) * 5.0
CP = plasma_aif("parker", T, delay_s=25.0)


def test_solve_linear_equals_lstsq_for_shared_and_per_voxel_columns(rng):
    y = rng.normal(size=(5, T.size)) + CP
    per_voxel = rng.normal(size=(5, T.size))
    coef, sse = linear.solve_linear([CP, per_voxel, np.ones(T.size)], y)
    for i in range(5):
        design = np.stack([CP, per_voxel[i], np.ones(T.size)], axis=1)
        expected, residual, *_ = np.linalg.lstsq(design, y[i], rcond=None)
        np.testing.assert_allclose(coef[i], expected, rtol=1e-9)
        np.testing.assert_allclose(sse[i], residual[0], rtol=1e-8)
    coef_t, sse_t = linear.solve_linear([CP, per_voxel.T, np.ones(T.size)], y.T, axis=0)
    np.testing.assert_allclose(coef_t, coef, rtol=1e-12)
    np.testing.assert_allclose(sse_t, sse, rtol=1e-12)


def test_solve_linear_equals_lstsq_with_two_per_voxel_columns_and_given_norms(rng):
    """The 2CXM layout: two shared and two per-voxel columns; y's norms given or not, the same answer."""
    y = rng.normal(size=(4, T.size)) + CP
    own = [rng.normal(size=(4, T.size)), rng.normal(size=(4, T.size))]
    shared = [CP, np.cumsum(CP)]
    coef, sse = linear.solve_linear([shared[0], own[0], shared[1], own[1]], y)
    given, sse_given = linear.solve_linear([shared[0], own[0], shared[1], own[1]], y, y_dot_y=np.sum(y * y, axis=1))
    for i in range(4):
        design = np.stack([shared[0], own[0][i], shared[1], own[1][i]], axis=1)
        expected, residual, *_ = np.linalg.lstsq(design, y[i], rcond=None)
        np.testing.assert_allclose(coef[i], expected, rtol=1e-8)
        np.testing.assert_allclose(sse[i], residual[0], rtol=1e-8)
    np.testing.assert_array_equal(given, coef)
    np.testing.assert_allclose(sse_given, sse, rtol=1e-12)


def test_singular_systems_give_nan_not_an_error(rng):
    coef, _ = linear.solve_linear([CP, 2 * CP], np.stack([CP, CP]))
    assert np.all(np.isnan(coef))
    # a voxel's own column inside the span of the shared ones: that voxel alone gets NaN
    own = np.stack([3 * CP - np.ones(T.size), rng.normal(size=T.size)])
    coef, _ = linear.solve_linear([CP, np.ones(T.size), own], np.stack([CP, CP]) + rng.normal(size=(2, T.size)))
    assert np.all(np.isnan(coef[0])) and np.all(np.isfinite(coef[1]))
    # a curve with inf or NaN, with shared columns only (Patlak): NaN, not inf
    y = np.stack([CP, CP, CP])
    y[1, 5], y[2, 7] = np.inf, np.nan
    coef, sse = linear.solve_linear([CP, np.ones(T.size)], y)
    assert np.all(np.isfinite(coef[0])) and np.all(np.isnan(coef[1:])) and np.all(np.isnan(sse[1:]))


@pytest.mark.parametrize("name", ["llsq_tofts", "llsq_extended_tofts", "llsq_patlak", "llsq_two_compartment_exchange",
                                  "llsq_two_compartment_uptake", "llsq_two_compartment_filtration"])
def test_time_major_layout_gives_the_same_fit(rng, name):
    conc = extended_tofts(T, CP, rng.uniform(0.05, 0.4, 50), rng.uniform(0.1, 0.5, 50), rng.uniform(0, 0.08, 50))
    conc += rng.normal(0, 0.01, conc.shape)
    fit = getattr(linear, name)
    voxel_major = fit(T, conc, CP)
    time_major = fit(T, np.ascontiguousarray(conc.T), CP, axis=0)
    # the layouts sum in different orders; the two-compartment systems (condition number near 1e8)
    # turn that rounding into differences near 1e-8
    np.testing.assert_allclose(time_major.params, voxel_major.params, rtol=1e-6, equal_nan=True)
    per_voxel_aif = fit(T, np.ascontiguousarray(conc.T), np.tile(CP, (50, 1)).T, axis=0)
    np.testing.assert_allclose(per_voxel_aif.params, voxel_major.params, rtol=1e-6, equal_nan=True)
    assert np.isfinite(voxel_major.params).all(axis=1).sum() >= 10  # the comparison is not between NaNs
