"""Every case of the OSIPI DCE model-fitting suite, at the suite's tolerances.

Data: OSIPI DCE-DSC-MRI_CodeCollection (commit 40984f7c), test/DCEmodels/data: the QIBA Tofts DRO v11,
the Bosca & Jackson extended-Tofts brain DRO, and Thrippleton's Patlak, 2CXM and 2CUM simulations
(with 5 s arterial-delay variants). As in the suite, the Tofts and extended-Tofts delay tests shift the
tissue curve by 10 and 5 samples (5 s) with zeros, and the delay is estimated and compared (1 s).
"""

import numpy as np
import pytest

from kinetics.fit import fit_curves
from osipi_data import DCE_TOLERANCE, array, read_rows, within

# file, model, {our parameter: csv column}, tissue column, aif column, delay shift in samples (QIBA-style)
CASES = {
    "tofts": ("dce_DRO_data_tofts.csv", "tofts", {"ktrans": "Ktrans", "ve": "ve"}, "C", "ca", 10),
    "extended_tofts": (
        "dce_DRO_data_extended_tofts.csv", "extended_tofts", {"ktrans": "Ktrans", "ve": "ve", "vp": "vp"}, "C", "ca", 5,
    ),
    "patlak": ("patlak_sd_0.02_delay_{}.csv", "patlak", {"ktrans": "ps", "vp": "vp"}, "C_t", "cp_aif", None),
    "2cxm": ("2cxm_sd_0.001_delay_{}.csv", "2cxm", {"fp": "fp", "ps": "ps", "ve": "ve", "vp": "vp"}, "C_t", "cp_aif", None),
    "2cum": ("2cum_sd_0.0025_delay_{}.csv", "2cum", {"fp": "fp", "ps": "ps", "vp": "vp"}, "C_t", "cp_aif", None),
}
# The suite's peers with a linear (LLSQ) contribution: OGJ Tofts/eTofts/2CXM, MJT Patlak.
LINEAR = ["tofts", "extended_tofts", "patlak", "2cxm"]


def load(osipi_dir, case, delayed):
    filename, model, columns, c_col, a_col, shift = CASES[case]
    name = filename.format(5 if delayed else 0)
    rows = read_rows(osipi_dir / "test" / "DCEmodels" / "data" / name)
    t = array(rows[0]["t"])
    conc = np.stack([array(r[c_col]) for r in rows])
    if a_col == "ca":  # per-row AIF sampled on its own grid
        aif = np.stack([np.interp(array(r["t"]), array(r["ta"]), array(r["ca"])) for r in rows])
    else:
        aif = np.stack([array(r[a_col]) for r in rows])
    reference = {ours: np.array([float(r[col]) for r in rows]) for ours, col in columns.items()}
    delay_col = "arterialdelay" if "arterialdelay" in rows[0] else "arterial_delay"
    reference["delay"] = np.array([float(r[delay_col]) for r in rows])
    if delayed and shift:
        conc = np.concatenate([np.zeros((conc.shape[0], shift)), conc[:, :-shift]], axis=1)
        reference["delay"] = reference["delay"] + shift * (t[1] - t[0])
    return model, t, conc, aif, reference


def check(result, reference, names):
    failures = []
    for name in names:
        atol, rtol = DCE_TOLERANCE[name]
        ok = within(result.params[name], reference[name], atol, rtol)
        if not ok.all():
            failures.append(f"{name}: {np.flatnonzero(~ok).tolist()}")
    assert not failures, failures
    assert result.fit_ok.all()


@pytest.mark.parametrize("case", list(CASES))
def test_nonlinear_fit_passes_every_case(osipi_dir, case):
    model, t, conc, aif, reference = load(osipi_dir, case, delayed=False)
    result = fit_curves(conc, t, aif, model=model, method="nlls")
    check(result, reference, [k for k in CASES[case][2]])


@pytest.mark.parametrize("case", LINEAR)
def test_linear_fit_passes_every_case(osipi_dir, case):
    model, t, conc, aif, reference = load(osipi_dir, case, delayed=False)
    result = fit_curves(conc, t, aif, model=model, method="llsq")
    check(result, reference, [k for k in CASES[case][2]])


@pytest.mark.parametrize("case", list(CASES))
def test_delay_fit_passes_every_delayed_case(osipi_dir, case):
    model, t, conc, aif, reference = load(osipi_dir, case, delayed=True)
    assert np.all(reference["delay"] == 5.0)
    result = fit_curves(conc, t, aif, model=model, method="nlls", fit_delay=True)
    check(result, reference, [k for k in CASES[case][2]] + ["delay"])
