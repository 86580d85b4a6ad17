"""OSIPI signal-to-concentration and VFA T1 cases, at the suite's tolerances.

Data: OSIPI DCE-DSC-MRI_CodeCollection (commit 40984f7c). SI_to_Conc: Edinburgh patient curves; as in
the suite, the baseline is frames 1..numbaselinepts-1 and ``conc[1:]`` is compared (atol = rtol = 1e-5).
T1_mapping: brain (Edinburgh), QIBA T1 DRO v3 (R1 in /ms) and NKI prostate (TR in ms, reference the
nonlinear T1 without B1 correction); R1 tolerance atol 0.05 /s, rtol 0.05.
"""

import numpy as np

from kinetics.signal import concentration_from_signal, vfa_t1_linear, vfa_t1_nonlinear
from osipi_data import array, read_rows, within


def test_signal_to_concentration_every_voxel(osipi_dir):
    rows = read_rows(osipi_dir / "test" / "SI_to_Conc" / "data" / "SI2Conc_data.csv")
    assert len(rows) >= 4
    for r in rows:
        conc = concentration_from_signal(
            array(r["s"]), t10_s=float(r["T1base"]), tr_s=float(r["TR"]), fa_deg=float(r["FA"]),
            r1_per_mM_s=float(r["r1"]), baseline=(1, int(r["numbaselinepts"])),
        )
        reference = array(r["conc"])
        assert np.all(within(conc[1:], reference[1:], 1e-5, 1e-5)), r["label"]


def t1_cases(osipi_dir):
    data = osipi_dir / "test" / "T1_mapping" / "data"
    cases = []
    for r in read_rows(data / "t1_brain_data.csv"):
        cases.append((r["label"], array(r["FA"]), array(r["TR"])[0], array(r["s"]), float(r["R1"])))
    for r in read_rows(data / "t1_quiba_data.csv"):
        cases.append((r["label"], array(r["FA"]), array(r["TR"])[0], array(r["s"]), float(r["R1"]) * 1000.0))
    for r in read_rows(data / "t1_prostate_data.csv"):
        cases.append((r["label"], array(r["FA"]), array(r["TR"])[0] / 1000.0, array(r["s"]), 1000.0 / float(r[" T1 nonlinear"])))
    return cases


def test_vfa_nonlinear_passes_every_case(osipi_dir):
    cases = t1_cases(osipi_dir)
    assert len(cases) == 171
    failed = []
    for label, fa, tr, s, r1_ref in cases:
        fit = vfa_t1_nonlinear(s[None], fa, tr_s=tr)
        if not (fit.fit_ok[0] and within(1.0 / fit.t1_s[0], r1_ref, 0.05, 0.05)):
            failed.append(label)
    assert not failed


def test_vfa_linear_passes_all_but_the_suites_expected_failure(osipi_dir):
    """DESPOT1 passes every case except Pat5_voxel5_prostaat, which the suite marks xfail for linear fits."""
    failed = []
    for label, fa, tr, s, r1_ref in t1_cases(osipi_dir):
        fit = vfa_t1_linear(s[None], fa, tr_s=tr)
        if not within(1.0 / fit.t1_s[0], r1_ref, 0.05, 0.05):
            failed.append(label)
    assert failed == ["Pat5_voxel5_prostaat"]


def test_vfa_fits_are_vectorised_over_voxels(osipi_dir):
    cases = [c for c in t1_cases(osipi_dir) if c[0].startswith("brain")]
    fa, tr = cases[0][1], cases[0][2]
    signals = np.stack([c[3] for c in cases]).reshape(4, 19, 3)
    fit = vfa_t1_nonlinear(signals, fa, tr_s=tr)
    assert fit.t1_s.shape == (4, 19)
    one_by_one = np.array([vfa_t1_nonlinear(c[3][None], fa, tr_s=tr).t1_s[0] for c in cases])
    np.testing.assert_allclose(fit.t1_s.reshape(-1), one_by_one, rtol=1e-6)
