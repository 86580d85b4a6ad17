"""SPGR signal <-> concentration, baselines and VFA T1: planted truth and errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kinetics import KineticsInputError
from kinetics.signal import (concentration_from_signal, signal_from_concentration, spgr_signal,
                             vfa_t1_linear, vfa_t1_nonlinear)

ROOT = Path(__file__).resolve().parents[2]


def test_signal_concentration_round_trip(rng):
    conc = np.abs(rng.normal(0.5, 0.5, (10, 40)))
    conc[:, :5] = 0.0
    t10 = rng.uniform(0.8, 1.6, 10)
    signal = signal_from_concentration(conc, t10_s=t10, tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, s0=800.0)
    back = concentration_from_signal(signal, t10_s=t10, tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, baseline=5)
    np.testing.assert_allclose(back, conc, atol=1e-9)


FORKED_CONVERSION = """
import numpy as np
from kinetics import _pool as pool
from kinetics.signal import concentration_from_signal, signal_from_concentration

assert pool.fork_blocker() is None
rng = np.random.default_rng(0)
shape = (20, 30, 30)  # 18,000 voxels: several slabs
conc = np.abs(rng.normal(0.5, 0.5, shape + (30,)))
conc[..., :5] = 0.0
t10, fa = rng.uniform(0.8, 1.6, shape), rng.uniform(12.0, 18.0, shape)
s0 = rng.uniform(500.0, 1500.0, shape)
signal = signal_from_concentration(conc, t10_s=t10, tr_s=0.004, fa_deg=fa, r1_per_mM_s=4.5, s0=s0)
options = dict(t10_s=t10, tr_s=0.004, fa_deg=fa, r1_per_mM_s=4.5, baseline=5)
serial = concentration_from_signal(signal, **options, workers=1)
pool.MIN_VOXELS_FOR_PROCESSES = 0
forked = concentration_from_signal(signal, **options, workers=2)
fortran = concentration_from_signal(np.asfortranarray(signal), **options, workers=2)
single = concentration_from_signal(signal, **options, dtype=np.float32, workers=2)
np.testing.assert_array_equal(forked, serial)
np.testing.assert_allclose(fortran, serial, rtol=1e-15, atol=0)
np.testing.assert_allclose(serial, conc, atol=1e-9)
assert single.dtype == np.float32
np.testing.assert_array_equal(single, serial.astype(np.float32))
print("same")
"""


def test_conversion_in_forked_slabs_equals_one_process():
    """A volume with T10 and flip-angle maps, converted by forked workers slab by slab, gives the
    one-process result exactly (to rounding for a Fortran-ordered series, as NIfTI's are), and the
    planted concentration; float32 output is its rounding. In a fresh process: forking is refused
    where other threads run, as they may after other tests."""
    done = subprocess.run([sys.executable, "-c", FORKED_CONVERSION], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "same" in done.stdout, done.stderr


def test_conversion_options_are_checked():
    signal = np.ones((4, 5, 10))
    options = dict(tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, baseline=2)
    with pytest.raises(KineticsInputError, match="t10_s: shape"):
        concentration_from_signal(signal, t10_s=np.ones((4, 6)), **options)
    with pytest.raises(KineticsInputError, match="dtype"):
        concentration_from_signal(signal, t10_s=1.0, dtype=int, **options)
    per_row = concentration_from_signal(signal, t10_s=np.ones((1, 5)), **options)  # broadcasts
    assert per_row.shape == signal.shape


def test_baseline_range_excludes_non_steady_state_frames():
    conc = np.r_[np.zeros(6), np.ones(10)]
    signal = signal_from_concentration(conc, t10_s=1.0, tr_s=0.005, fa_deg=20.0, r1_per_mM_s=4.0, s0=1.0)
    signal[0] *= 3.0  # first frame before steady state
    back = concentration_from_signal(signal, t10_s=1.0, tr_s=0.005, fa_deg=20.0, r1_per_mM_s=4.0, baseline=(1, 6))
    np.testing.assert_allclose(back[1:], conc[1:], atol=1e-12)


def test_impossible_signal_gives_nan_not_a_crash():
    signal = np.array([1.0, 1.0, 50.0])
    conc = concentration_from_signal(signal, t10_s=1.0, tr_s=0.005, fa_deg=20.0, r1_per_mM_s=4.0, baseline=2)
    assert np.isnan(conc[2])


@pytest.mark.parametrize("fit", [vfa_t1_linear, vfa_t1_nonlinear])
def test_vfa_recovers_planted_t1_with_b1(rng, fit):
    t1 = rng.uniform(0.3, 2.5, 200)
    b1 = rng.uniform(0.8, 1.2, 200)
    fa = np.array([2.0, 5.0, 10.0, 15.0])
    s = spgr_signal(1.0 / t1[:, None], s0=1000.0, tr_s=0.004, fa_deg=fa * b1[:, None])
    res = fit(s, fa, tr_s=0.004, b1=b1)
    np.testing.assert_allclose(res.t1_s, t1, rtol=1e-6)
    assert res.fit_ok.all()
    uncorrected = fit(s, fa, tr_s=0.004)
    assert np.median(np.abs(uncorrected.t1_s / t1 - 1)) > 0.05


def test_vfa_nonlinear_is_no_worse_than_linear_with_noise(rng):
    t1 = np.full(500, 1.2)
    fa = np.array([2.0, 5.0, 10.0, 15.0])
    s = spgr_signal(1.0 / t1[:, None], s0=1000.0, tr_s=0.004, fa_deg=fa) + rng.normal(0, 2.0, (500, 4))
    err_lin = np.nanmedian(np.abs(vfa_t1_linear(s, fa, tr_s=0.004).t1_s - 1.2))
    err_nl = np.nanmedian(np.abs(vfa_t1_nonlinear(s, fa, tr_s=0.004).t1_s - 1.2))
    assert err_nl <= err_lin


def test_vfa_bad_voxels_are_flagged():
    fa = np.array([2.0, 10.0, 15.0])
    s = np.array([[0.0, 0.0, 0.0], [np.nan, 1.0, 2.0]])
    res = vfa_t1_nonlinear(s, fa, tr_s=0.004)
    assert not res.fit_ok.any() and np.all(np.isnan(res.t1_s))


def test_bad_acquisition_values_raise():
    s = np.ones((2, 10))
    with pytest.raises(KineticsInputError, match=r"outside \(0, 90\]"):
        concentration_from_signal(s, t10_s=1.0, tr_s=0.004, fa_deg=95.0, r1_per_mM_s=4.5, baseline=2)
    with pytest.raises(KineticsInputError, match="t10_s"):
        concentration_from_signal(s, t10_s=0.0, tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, baseline=2)
    with pytest.raises(KineticsInputError, match="baseline"):
        concentration_from_signal(s, t10_s=1.0, tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, baseline=11)
    with pytest.raises(KineticsInputError, match="one angle per VFA image"):
        vfa_t1_linear(np.ones((3, 4)), [2.0, 5.0, 10.0], tr_s=0.004)
