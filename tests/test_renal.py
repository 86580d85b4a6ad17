"""Single-kidney function: Patlak-Rutland and the 2CFM flows times the kidney volume."""

import numpy as np
import pytest

from kinetics import KineticsInputError
from kinetics.aif import plasma_aif
from kinetics.models import patlak, two_compartment_filtration
from kinetics.renal import patlak_rutland, single_kidney_function

T = np.arange(0, 300, 2.0)
CP = plasma_aif("parker", T, delay_s=10.0)


@pytest.mark.parametrize("window", [None, (40.0, 120.0)])
def test_patlak_rutland_is_exact_for_pure_uptake(window):
    """Without tubular outflow the plot is a line: any window recovers FT (the integral starts at t0)."""
    kidney = patlak(T, CP, np.array([0.30, 0.15]), np.array([0.5, 0.3]))  # FT 30 and 15 mL/100mL/min
    res = patlak_rutland(T, kidney, CP, window_s=window)
    np.testing.assert_allclose(res.ft, [30.0, 15.0], rtol=1e-6)
    np.testing.assert_allclose(res.vp, [0.5, 0.3], atol=1e-6)


def test_patlak_rutland_underestimates_once_tubules_drain():
    kidney = two_compartment_filtration(T, CP, 220.0, 0.25, 30.0, 60.0)
    res = patlak_rutland(T, kidney, CP)
    assert 0.3 * 30 < res.ft[0] < 30.0


def test_single_kidney_function_units():
    out = single_kidney_function(volume_ml=150.0, ft_ml_100ml_min=30.0, fp_ml_100ml_min=200.0, hct=0.4)
    assert out["gfr_ml_min"] == pytest.approx(45.0)
    assert out["rpf_ml_min"] == pytest.approx(300.0)
    assert out["rbf_ml_min"] == pytest.approx(500.0)
    with pytest.raises(KineticsInputError, match="volume"):
        single_kidney_function(volume_ml=-1.0, ft_ml_100ml_min=30.0)
    with pytest.raises(KineticsInputError, match="haematocrit"):
        single_kidney_function(volume_ml=100.0, ft_ml_100ml_min=30.0, hct=1.0)
