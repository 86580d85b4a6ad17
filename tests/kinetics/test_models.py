"""Invariants and limits of the forward models."""

import numpy as np
import pytest

from kinetics import models
from kinetics.aif import plasma_aif

T = np.arange(0, 300, 2.0)
CP = plasma_aif("parker", T, delay_s=20.0)


def test_zero_transfer_gives_zero_concentration():
    np.testing.assert_array_equal(models.tofts(T, CP, 0.0, 0.3), 0.0)
    np.testing.assert_allclose(models.extended_tofts(T, CP, 0.0, 0.3, 0.05), 0.05 * CP)
    np.testing.assert_allclose(models.patlak(T, CP, 0.0, 0.1), 0.1 * CP)


def test_tofts_reaches_ve_cp_at_equilibrium():
    """With a constant input and fast exchange, the interstitium fills to ve * cp."""
    t = np.linspace(0, 600, 301)
    c = models.tofts(t, np.ones_like(t), 3.0, 0.25)
    assert c[-1] == pytest.approx(0.25, rel=1e-6)


def test_two_compartment_exchange_tends_to_extended_tofts_at_high_flow():
    ktrans = 0.2
    c_2cxm = models.two_compartment_exchange(T, CP, 1e6, ktrans, 0.3, 0.05)
    c_etofts = models.extended_tofts(T, CP, ktrans, 0.3, 0.05)
    np.testing.assert_allclose(c_2cxm, c_etofts, atol=1e-4 * c_etofts.max())


def test_two_compartment_exchange_tends_to_uptake_for_large_ve():
    c_2cxm = models.two_compartment_exchange(T, CP, 30.0, 0.05, 1e5, 0.05)
    c_2cum = models.two_compartment_uptake(T, CP, 30.0, 0.05, 0.05)
    np.testing.assert_allclose(c_2cxm, c_2cum, atol=1e-4 * c_2cum.max())


def test_two_compartment_exchange_conserves_tracer():
    """For a bolus that has passed, the area of the impulse response is vp + ve: a step input
    of 1 mM brings the tissue to vp + ve."""
    t = np.linspace(0, 3000, 3001)
    c = models.two_compartment_exchange(t, np.ones_like(t), 40.0, 0.3, 0.2, 0.05)
    assert c[-1] == pytest.approx(0.25, rel=1e-4)


def test_filtration_without_tubular_flow_is_a_plasma_compartment():
    c = models.two_compartment_filtration(T, CP, 200.0, 0.2, 0.0, 120.0)
    np.testing.assert_allclose(c, models.two_compartment_uptake(T, CP, 200.0, 0.0, 0.2), atol=1e-12)


def test_filtration_tracer_accumulates_in_tubules():
    t = np.linspace(0, 3000, 3001)
    step = np.ones_like(t)
    # steady state of a step input: plasma vp, tubules FT * Tt per unit plasma concentration
    c = models.two_compartment_filtration(t, step, 200.0, 0.2, 30.0, 60.0)
    assert c[-1] == pytest.approx(0.2 + 30.0 / 6000.0 * 60.0, rel=1e-3)


@pytest.mark.parametrize("name", ["tofts_jacobian", "extended_tofts_jacobian", "patlak_jacobian"])
def test_exact_jacobians_match_central_differences(name):
    jac_fn = getattr(models, name)
    forward = getattr(models, name.replace("_jacobian", ""))
    p = {"tofts_jacobian": [[0.2, 0.3], [0.02, 0.6]], "extended_tofts_jacobian": [[0.2, 0.3, 0.05], [0.02, 0.6, 0.0]],
         "patlak_jacobian": [[0.05, 0.1], [0.0, 0.02]]}[name]
    p = np.array(p)
    f, jac = jac_fn(T, CP, *p.T)
    np.testing.assert_allclose(f, forward(T, CP, *p.T), rtol=1e-12)
    for j in range(p.shape[1]):
        h = 1e-6
        up, down = p.copy(), p.copy()
        up[:, j] += h
        down[:, j] -= h
        numeric = (forward(T, CP, *up.T) - forward(T, CP, *down.T)) / (2 * h)
        np.testing.assert_allclose(jac[..., j], numeric, atol=1e-6 * np.abs(numeric).max() + 1e-9)
