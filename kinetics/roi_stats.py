"""Statistics of kinetic maps inside a region of interest (a tumour), as a named feature vector.

Used by ``ssl_rcc``'s kinetic feature block; kinetics users get the same numbers for their own ROIs.
"""

from __future__ import annotations

import numpy as np

from .errors import KineticsInputError

__all__ = ["roi_statistics", "STATISTICS"]

# name -> function of the finite ROI values (n,) of one map
STATISTICS = {
    "mean": np.mean,
    "median": np.median,
    "p10": lambda v: np.percentile(v, 10),
    "p90": lambda v: np.percentile(v, 90),
    "iqr": lambda v: np.subtract(*np.percentile(v, [75, 25])),
}


def roi_statistics(maps, mask, *, fit_ok=None) -> dict:
    """Mean, median, 10th/90th percentiles and interquartile range of each map inside ``mask``.

    Parameters
    ----------
    maps : dict of str to (x, y, z) ndarray
        Parameter maps in their own units (Ktrans and kep in /min, ve and vp as fractions).
    mask : (x, y, z) ndarray of bool
        The ROI; must select at least one voxel.
    fit_ok : None or (x, y, z) ndarray of bool
        Voxels whose fit succeeded. Statistics use only ROI voxels that are ``fit_ok`` and finite in
        that map; the fraction of ROI voxels that are ``fit_ok`` is returned as ``fit_ok_fraction``.

    Returns
    -------
    dict of str to float
        ``{map}_{statistic}`` for each map and each of :data:`STATISTICS` (NaN where no voxel of the
        map is usable), and ``fit_ok_fraction`` (1.0 when ``fit_ok`` is None).

    Examples
    --------
    >>> ktrans = np.full((2, 2, 1), 0.2)
    >>> roi_statistics({"ktrans": ktrans}, ktrans > 0)["ktrans_median"]
    0.2
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise KineticsInputError("mask: the ROI selects no voxel.")
    ok = mask if fit_ok is None else mask & np.asarray(fit_ok, dtype=bool)
    out = {}
    for name, values in maps.items():
        values = np.asarray(values, dtype=float)
        if values.shape != mask.shape:
            raise KineticsInputError(f"{name}: the map has shape {values.shape}, the ROI {mask.shape}.")
        usable = values[ok]
        usable = usable[np.isfinite(usable)]
        for stat, fn in STATISTICS.items():
            out[f"{name}_{stat}"] = float(fn(usable)) if usable.size else float("nan")
    out["fit_ok_fraction"] = float(ok.sum() / mask.sum())
    return out
