"""Kinetic features of a lesion: tumour ROI statistics of Ktrans, ve, vp and kep.

From the case table's precomputed map columns (``ktrans``, ``ve``, ``vp``, ``kep`` on the DCE grid)
when a row gives them, used as they are; otherwise fitted here from the row's DCE signal series with
its acquisition columns (extended Tofts, nonlinear, inside ``dce_tumor_mask``), exactly as
``python -m kinetics fit --input signal`` would. The statistics are :func:`kinetics.roi_stats.roi_statistics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kinetics.aif import POPULATION_AIFS
from kinetics.io import load_image, read_scalar_or_image, read_times
from kinetics.roi_stats import roi_statistics

from ..errors import InputError

__all__ = ["kinetic_features", "MAP_COLUMNS", "FIT_COLUMNS", "kinetic_inputs", "check_kinetic_row"]

MAP_COLUMNS = ("ktrans", "ve", "vp", "kep")
FIT_COLUMNS = ("dce", "dce_times", "aif", "t10", "tr_s", "fa_deg", "r1", "baseline_frames")
MODEL = "extended_tofts"


def _given(row, column):
    value = row.get(column, "")
    return not (value is None or (isinstance(value, str) and value == "") or (isinstance(value, float) and np.isnan(value)))


def kinetic_inputs(row) -> tuple:
    """The files the kinetic features of ``row`` are made from (maps if given, else the DCE inputs)."""
    if any(_given(row, c) for c in MAP_COLUMNS):
        return ("dce_tumor_mask",) + tuple(c for c in MAP_COLUMNS if _given(row, c))
    return ("dce_tumor_mask", "dce", "dce_times", "aif", "t10")


def check_kinetic_row(row: Mapping[str, Any], where: str) -> None:
    """InputError unless ``row`` has the kinetic maps or every DCE input (``where`` names the row)."""
    if not _given(row, "dce_tumor_mask"):
        raise InputError(f"{where}: kinetic features need dce_tumor_mask (the tumour on the DCE grid).")
    if any(_given(row, c) for c in MAP_COLUMNS):
        if not (_given(row, "ktrans") and (_given(row, "ve") or _given(row, "kep"))):
            raise InputError(f"{where}: kinetic map columns need ktrans and ve (or kep).")
        return
    missing = [c for c in FIT_COLUMNS if not _given(row, c)]
    if missing:
        raise InputError(f"{where}: kinetic features need the map columns {list(MAP_COLUMNS)} or the DCE columns "
                         f"{list(FIT_COLUMNS)}; {missing} are empty.")


def _read_map(path, shape, name):
    data, _, _ = load_image(path, ndim=3, name=f"{name} map")
    if data.shape != shape:
        raise InputError(f"{path}: the {name} map has shape {data.shape}, the DCE tumour mask {shape}.")
    return np.asarray(data, dtype=float)


def _fitted_maps(row, roi):
    from kinetics.fit import fit_curves
    from kinetics.signal import concentration_from_signal
    from kinetics.workflow import resolve_aif

    series, _, _ = load_image(row["dce"], ndim=4, name="DCE series")
    if series.shape[:3] != roi.shape:
        raise InputError(f"{row['dce']}: the DCE series has the grid {series.shape[:3]}, its tumour mask {roi.shape}.")
    t_s = read_times(row["dce_times"], n_frames=series.shape[3])
    t10 = read_scalar_or_image(row["t10"], name="T10 map", shape=roi.shape, unit="s")
    t10 = t10[roi] if np.ndim(t10) else t10
    with np.errstate(invalid="ignore", divide="ignore"):
        conc = concentration_from_signal(np.asarray(series[roi], dtype=float), t10_s=np.where(t10 > 0, t10, np.nan),
                                         tr_s=float(row["tr_s"]), fa_deg=float(row["fa_deg"]),
                                         r1_per_mM_s=float(row["r1"]), baseline=int(row["baseline_frames"]), workers=1)
    aif = Path(row["aif"]).name if Path(row["aif"]).name in POPULATION_AIFS and not Path(row["aif"]).exists() else row["aif"]
    cp = resolve_aif(aif, t_s, conc=conc, mask=None)
    fit = fit_curves(conc, t_s, cp, model=MODEL, method="nlls", workers=1)
    maps = {}
    for name in MAP_COLUMNS:
        values = np.full(roi.shape, np.nan)
        values[roi] = fit.params[name] if name in fit.params else fit.params["ktrans"] / fit.params["ve"]
        maps[name] = values
    ok = np.zeros(roi.shape, bool)
    ok[roi] = fit.fit_ok
    return maps, ok


def kinetic_features(row) -> dict:
    """Tumour statistics of the kinetic maps of one case-table row (see the module docstring).

    Returns
    -------
    dict of str to float
        ``{map}_{mean,median,p10,p90,iqr}`` for ktrans (/min), ve, vp, kep (/min), and
        ``fit_ok_fraction``; a map the row does not give (vp of precomputed Tofts maps) is NaN.
    """
    where = row.get("_where", f"case {row['case_id']}")
    check_kinetic_row(row, where)
    mask, _, _ = load_image(row["dce_tumor_mask"], ndim=3, name="DCE tumour mask")
    roi = mask > 0
    if not roi.any():
        raise InputError(f"{row['dce_tumor_mask']}: the DCE tumour mask of {where} selects no voxel.")
    if any(_given(row, c) for c in MAP_COLUMNS):
        maps = {c: _read_map(row[c], roi.shape, c) if _given(row, c) else np.full(roi.shape, np.nan) for c in MAP_COLUMNS}
        if not _given(row, "kep"):
            with np.errstate(invalid="ignore", divide="ignore"):
                maps["kep"] = maps["ktrans"] / maps["ve"]
        if not _given(row, "ve"):
            with np.errstate(invalid="ignore", divide="ignore"):
                maps["ve"] = maps["ktrans"] / maps["kep"]
        ok = None
    else:
        maps, ok = _fitted_maps(row, roi)
    return roi_statistics(maps, roi, fit_ok=ok)

