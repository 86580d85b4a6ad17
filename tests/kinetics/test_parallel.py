"""Dask scale-out gives the same maps as the in-memory fit, on a dask.distributed LocalCluster."""

import numpy as np
import pytest
import xarray as xr

from kinetics.dro import make_dro, write_dro
from kinetics.fit import fit_image
from kinetics.parallel import fit_dataarray, open_series


@pytest.fixture(scope="module")
def dro():
    return make_dro(seed=7)


def test_local_cluster_matches_in_memory_fit(dro):
    distributed = pytest.importorskip("distributed")
    reference = fit_image(dro.conc_mM, dro.times_s, dro.cp_mM, model="extended_tofts")
    array = xr.DataArray(dro.conc_mM, dims=("x", "y", "z", "t"), coords={"t": dro.times_s}).chunk({"x": 10, "y": 7})
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster):
            maps = fit_dataarray(array, dro.cp_mM, model="extended_tofts").compute()
    for name in ("ktrans", "ve", "vp", "kep", "rmse"):
        np.testing.assert_allclose(maps[name].values, reference.params.get(name, reference.rmse), rtol=1e-8, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(maps["fit_ok"].values, reference.fit_ok)
    assert maps["ktrans"].attrs["units"] == "/min"


def test_lazy_series_from_nifti_is_read_block_by_block(dro, tmp_path):
    directory = write_dro(dro, tmp_path / "dro")
    series = open_series(directory / "conc.nii.gz", times_s=dro.times_s, chunks=(8, 8, 3))
    assert series.chunks is not None and series.data.numblocks[:3] == (4, 3, 1)
    maps = fit_dataarray(series, dro.cp_mM, model="tofts", method="llsq")
    assert maps["ktrans"].chunks is not None  # still lazy
    reference = fit_image(dro.conc_mM, dro.times_s, dro.cp_mM, model="tofts", method="llsq")
    np.testing.assert_allclose(maps["ktrans"].values, reference.params["ktrans"], rtol=1e-5, equal_nan=True)
