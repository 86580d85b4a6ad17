"""Single-kidney function: Patlak-Rutland and the 2CFM flows times the kidney volume."""

import numpy as np
import pytest

from kinetics import KineticsInputError
from kinetics.aif import plasma_aif
from kinetics.models import patlak, two_compartment_filtration
from kinetics.renal import patlak_rutland, single_kidney_function

T = np.arange(0, 300, 2.0)
CP = plasma_aif("parker", T, delay_s=10.0)


@pytest.mark.parametrize("form", ["plot", "time"])
@pytest.mark.parametrize("window", [None, (40.0, 120.0)])
def test_patlak_rutland_is_exact_for_pure_uptake(window, form):
    """Without tubular outflow the relation is exact: either form and any window recover FT (the
    integral starts at t0)."""
    kidney = patlak(T, CP, np.array([0.30, 0.15]), np.array([0.5, 0.3]))  # FT 30 and 15 mL/100mL/min
    res = patlak_rutland(T, kidney, CP, window_s=window, form=form)
    np.testing.assert_allclose(res.ft, [30.0, 15.0], rtol=1e-6)
    np.testing.assert_allclose(res.vp, [0.5, 0.3], atol=1e-6)
    assert res.form == form


def test_patlak_rutland_plot_starts_at_the_aortic_peak_and_is_the_plot():
    """The default is the classic plot, C/cp against integral(cp)/cp from the AIF's peak to 90 s after
    the arrival; the time form starts at the arrival."""
    kidney = two_compartment_filtration(T, CP, 220.0, 0.25, 30.0, 180.0)
    plot, time = patlak_rutland(T, kidney, CP), patlak_rutland(T, kidney, CP, form="time")
    assert plot.form == "plot" and plot.window_s[0] == T[np.argmax(CP)] and time.window_s[0] < plot.window_s[0]
    assert plot.window_s[1] == time.window_s[1]
    use = (T >= plot.window_s[0]) & (T <= plot.window_s[1])
    from kinetics.convolution import cumulative_integral

    x, y = cumulative_integral(T, CP)[use] / CP[use], kidney[use] / CP[use]
    slope = np.polyfit(x, y, 1)[0] * 60 * 100  # the plot drawn by hand, in mL/100mL/min
    assert plot.ft[0] == pytest.approx(slope, rel=1e-9)
    with pytest.raises(KineticsInputError, match="form"):
        patlak_rutland(T, kidney, CP, form="graphical")
    with pytest.raises(KineticsInputError, match="window_s"):
        patlak_rutland(T, kidney, CP, window_s=(100.0, 40.0))


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
