"""Fitting with dask through xarray: volumes larger than memory, many cases, several workers.

The same engine as :func:`kinetics.fit.fit_curves` runs on each spatial block of a (x, y, z, t)
``xarray.DataArray`` through ``xarray.apply_ufunc(..., dask="parallelized")``; time is the core
dimension and must be in one chunk. Any dask scheduler works, a ``dask.distributed`` cluster included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike

from .errors import KineticsInputError
from .fit import fit_image
from .registry import get_model

__all__ = ["open_series", "fit_dataarray"]


def open_series(
    path: str | os.PathLike, *, times_s: ArrayLike, chunks: Sequence[int] = (32, 32, 8)
) -> xr.DataArray:
    """A 4D NIfTI as a lazy, dask-backed DataArray (x, y, z, t) with ``t`` in seconds.

    Blocks are read from the file (through nibabel's array proxy) only when computed, so the series
    never has to fit in memory.

    Parameters
    ----------
    chunks : (int, int, int)
        Spatial chunk size in voxels; time is one chunk.
    """
    import dask.array as da

    try:
        img = nib.load(str(path))
    except Exception as err:  # missing, unreadable or not NIfTI
        raise KineticsInputError(f"{path}: cannot read the DCE series as NIfTI ({err}).") from None
    if len(img.shape) != 4:
        raise KineticsInputError(f"{path}: the DCE series is {len(img.shape)}D; expected 4D.")
    t = np.asarray(times_s, dtype=float)
    if t.size != img.shape[3]:
        raise KineticsInputError(f"{path}: {t.size} times for {img.shape[3]} frames.")
    data = da.from_array(img.dataobj, chunks=tuple(chunks) + (img.shape[3],), asarray=True)
    return xr.DataArray(data, dims=("x", "y", "z", "t"), coords={"t": t}, attrs={"affine": img.affine.reshape(-1)})


def fit_dataarray(conc_mM: xr.DataArray, cp_mM, *, model="extended_tofts", fit_delay=False, **options) -> xr.Dataset:
    """Fit every voxel of a (x, y, z, t) concentration DataArray; returns the maps as a Dataset.

    Parameters
    ----------
    conc_mM : xarray.DataArray, mM
        Dims including ``t`` (coordinate in seconds); numpy- or dask-backed. With dask, the result is
        lazy: call ``.compute()`` (or ``.to_netcdf``) to run it on the active scheduler.
    cp_mM : (n_times,) ndarray, mM
        Plasma AIF on the ``t`` coordinate.
    model, fit_delay, **options
        As for :func:`kinetics.fit.fit_curves`.

    Returns
    -------
    xarray.Dataset
        One variable per parameter (with ``units``), plus ``rmse``, ``r2``, ``fit_ok`` and ``fit_status``
        (:mod:`kinetics.status` codes).
    """
    spec = get_model(model)
    if "t" not in conc_mM.dims:
        raise KineticsInputError(f"conc_mM: no 't' dimension among {conc_mM.dims}.")
    t = np.asarray(conc_mM["t"].values, dtype=float)
    cp = np.asarray(cp_mM, dtype=float)
    probe = fit_image(np.zeros((1, t.size)) + np.nan, t, cp, model=spec.name, fit_delay=fit_delay, **options)
    names = list(probe.params)

    options.setdefault("engine", "serial")  # dask runs the blocks in parallel: one core inside a block

    def block(c):
        res = fit_image(c, t, cp, model=spec.name, fit_delay=fit_delay, **options)
        return tuple(res.params[n] for n in names) + (res.rmse, res.r2, res.fit_ok, res.fit_status)

    if conc_mM.chunks is not None:
        conc_mM = conc_mM.chunk({"t": -1})
    outputs = xr.apply_ufunc(
        block, conc_mM, input_core_dims=[["t"]], output_core_dims=[[]] * (len(names) + 4),
        dask="parallelized", output_dtypes=[float] * (len(names) + 2) + [bool, np.uint8],
    )
    ds = xr.Dataset({name: out for name, out in zip(names + ["rmse", "r2", "fit_ok", "fit_status"], outputs)})
    for name in names:
        ds[name].attrs["units"] = probe.units[name]
    ds["rmse"].attrs["units"] = "mM"
    ds.attrs["model"] = spec.name
    return ds
