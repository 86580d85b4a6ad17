"""OSIPI population AIF references, at the suite's tolerances.

Data: OSIPI DCE-DSC-MRI_CodeCollection (commit 40984f7c), test/PopulationAIF_DCE/data. Parker (time in
min, whole blood, atol 1e-4, rtol 0.01; with delay atol = rtol = 0.1), Georgiou (atol 1e-4, rtol 0.01)
and McGrath preclinical model B (time in s, atol 1e-4, rtol 0.01, delay variants too).
"""

import numpy as np
import pytest

from kinetics.aif import georgiou_aif, mcgrath_aif, parker_aif
from osipi_data import read_rows, within

CASES = [
    ("ParkerAIF_ref.csv", parker_aif, 60.0, 1e-4, 0.01),
    ("ParkerAIF_ref_with_delay.csv", parker_aif, 60.0, 0.1, 0.1),
    ("GeorgiouAIF_ref.csv", georgiou_aif, 60.0, 1e-4, 0.01),
    ("preclinicalAIF_ref.csv", mcgrath_aif, 1.0, 1e-4, 0.01),
    ("preclinicalAIF_ref_delay.csv", mcgrath_aif, 1.0, 1e-4, 0.01),
]


@pytest.mark.parametrize("filename, function, seconds_per_unit, atol, rtol", CASES)
def test_population_aif_matches_reference(osipi_dir, filename, function, seconds_per_unit, atol, rtol):
    groups = {}
    for r in read_rows(osipi_dir / "test" / "PopulationAIF_DCE" / "data" / filename):
        groups.setdefault(r["label"], []).append((float(r["time"]), float(r["Cb"]), float(r.get("delay") or 0.0)))
    assert len(groups) >= 7
    for label, values in groups.items():
        t, cb, delay = np.array(values).T
        curve = function(t * seconds_per_unit, delay_s=delay[0])
        assert np.all(within(curve, cb, atol, rtol)), label
