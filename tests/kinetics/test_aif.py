"""AIF helpers: detection returns the arterial voxels, bolus arrival, CSV reading, haematocrit."""

import numpy as np
import pytest

from kinetics import KineticsInputError
from kinetics.aif import (bolus_arrival_time, detect_aif, parker_aif, plasma_aif, read_aif_csv,
                          weinmann_aif, write_aif_csv)
from kinetics.models import extended_tofts


def test_plasma_aif_divides_blood_by_one_minus_hct():
    t = np.arange(0, 300, 2.0)
    np.testing.assert_allclose(plasma_aif("parker", t, hct=0.4, delay_s=10), parker_aif(t, delay_s=10) / 0.6)
    np.testing.assert_allclose(plasma_aif("weinmann", t, hct=0.4), weinmann_aif(t))
    with pytest.raises(KineticsInputError, match="unknown population AIF 'parkr'"):
        plasma_aif("parkr", t)
    with pytest.raises(KineticsInputError, match="haematocrit"):
        plasma_aif("parker", t, hct=1.2)


def test_detect_aif_finds_the_planted_artery(rng):
    t = np.arange(0, 300, 3.0)
    cp = plasma_aif("parker", t, delay_s=15.0)
    shape = (20, 20, 4)
    kt = rng.uniform(0.05, 0.3, np.prod(shape))
    conc = extended_tofts(t, cp, kt, 0.3, 0.03).reshape(shape + (t.size,))
    artery = np.zeros(shape, bool)
    artery[9:11, 9:11, :] = True  # 16 voxels of vessel
    conc[artery] = cp * 0.58  # blood concentration
    conc += rng.normal(0, 0.02, conc.shape)
    found = detect_aif(conc, t, n_voxels=10)
    assert found.voxels.shape == (10, 3)
    assert artery[tuple(found.voxels.T)].all()
    np.testing.assert_allclose(found.curve, cp * 0.58, atol=0.05)


def test_bolus_arrival_within_one_frame(rng):
    t = np.arange(0, 300, 2.0)
    curves = np.stack([plasma_aif("parker", t, delay_s=d) for d in (10.0, 20.0, 40.0)])
    curves += rng.normal(0, 0.05, curves.shape)
    bat = bolus_arrival_time(curves, t)
    np.testing.assert_allclose(bat, [10.0, 20.0, 40.0], atol=3.0)


def test_aif_csv_round_trip_and_errors(tmp_path):
    t = np.arange(0, 10, 2.0)
    write_aif_csv(tmp_path / "aif.csv", t, t * 0.5)
    t2, cp = read_aif_csv(tmp_path / "aif.csv")
    np.testing.assert_allclose(t2, t)
    np.testing.assert_allclose(cp, t * 0.5)
    (tmp_path / "bad.csv").write_text("time,conc\n0,1\n")
    with pytest.raises(KineticsInputError, match="bad.csv: an AIF file needs a header 'time_s,cp_mM'"):
        read_aif_csv(tmp_path / "bad.csv")
    with pytest.raises(KineticsInputError, match="missing.csv: cannot read"):
        read_aif_csv(tmp_path / "missing.csv")
