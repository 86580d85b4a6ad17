"""File-level pipelines behind the CLI: read inputs, convert, fit, write maps. One function a command."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import aif as aif_mod
from .errors import KineticsInputError
from .fit import fit_curves
from .io import load_image, maps_dataset, output_directory, read_scalar_or_image, read_times, save_image
from .registry import get_model
from .signal import concentration_from_signal, vfa_t1_linear, vfa_t1_nonlinear

__all__ = ["fit_dce", "resolve_aif", "t1_map", "INPUTS"]

log = logging.getLogger("kinetics")
INPUTS = ("concentration", "signal")


def resolve_aif(aif, t_s, *, conc=None, mask=None, hct=0.42, aif_delay_s=None):
    """The plasma AIF (mM) on the frame times ``t_s`` from what the user named.

    Parameters
    ----------
    aif : str or Path
        - a CSV path with ``time_s,cp_mM`` (plasma), interpolated to the frame times;
        - ``parker``, ``georgiou``, ``weinmann`` or ``mcgrath``: population AIF starting at
          ``aif_delay_s`` (None: the bolus arrival time of the mean tissue curve in ``mask``);
        - ``auto``: detected in the (blood) concentration series ``conc``, divided by ``1 - hct``.
    conc : (x, y, z, t) ndarray, mM, optional
        Needed for ``auto`` and to place a population AIF.
    """
    name = str(aif)
    if name in aif_mod.POPULATION_AIFS:
        if aif_delay_s is None:
            if conc is None:
                raise KineticsInputError("aif: a population AIF needs --aif-delay when no series is given.")
            mean_curve = np.nanmean(conc[mask] if mask is not None else conc.reshape(-1, t_s.size), axis=0)
            aif_delay_s = float(aif_mod.bolus_arrival_time(mean_curve, t_s))
            if not np.isfinite(aif_delay_s):
                aif_delay_s = float(t_s[0])
            log.info("population AIF placed at the bolus arrival time %.1f s", aif_delay_s)
        return aif_mod.plasma_aif(name, t_s, hct=hct, delay_s=aif_delay_s)
    if name == "auto":
        if conc is None:
            raise KineticsInputError("aif: 'auto' needs a DCE series to search.")
        found = aif_mod.detect_aif(conc, t_s)
        return found.curve / (1.0 - hct)
    t_aif, cp = aif_mod.read_aif_csv(name)
    span = 0.5 * float(np.min(np.diff(t_s)))
    if t_aif[0] > t_s[0] + span or t_aif[-1] < t_s[-1] - span:
        raise KineticsInputError(
            f"{name}: the AIF covers {t_aif[0]:g}-{t_aif[-1]:g} s but the series runs {t_s[0]:g}-{t_s[-1]:g} s."
        )
    return np.interp(t_s, t_aif, cp)


def _check_acquisition(tr, fa, r1, baseline, n_frames, dce):
    if tr is None or fa is None:
        raise KineticsInputError("signal input: give the repetition time --tr (s) and the flip angle --fa (degrees).")
    if not (np.isfinite(float(tr)) and float(tr) > 0):
        raise KineticsInputError(f"tr: repetition time {tr!r} s must be positive.")
    if not 0 < float(fa) <= 90:
        raise KineticsInputError(f"fa: flip angle {fa!r} degrees is outside (0, 90].")
    if not float(r1) > 0:
        raise KineticsInputError(f"r1: relaxivity {r1!r} /s/mM must be positive.")
    if baseline is None or not 1 <= int(baseline) < n_frames:
        raise KineticsInputError(f"{dce}: --baseline {baseline!r} pre-contrast frames for a series of {n_frames} frames.")


def fit_dce(
    dce,
    times,
    aif,
    *,
    out,
    model="extended_tofts",
    input="concentration",
    t10=None,
    tr=None,
    fa=None,
    r1=4.5,
    baseline=None,
    hct=0.42,
    aif_delay=None,
    mask=None,
    method="nlls",
    fit_delay=False,
    motion_correct=False,
    denoise=False,
    overwrite=False,
    chunk_size=4096,
):
    """Fit a DCE-MRI series file and write the maps to ``out``; returns the output directory.

    Writes ``<param>.nii.gz`` for each model and derived parameter (Ktrans and kep in /min, volumes as
    fractions), ``rmse.nii.gz`` (mM), ``r2.nii.gz``, ``fit_ok.nii.gz`` (uint8), ``maps.nc`` (all of them,
    with units) and ``fit.json`` (the options). Every input is checked before anything is written.
    See ``python -m kinetics fit --help`` for the options.
    """
    spec = get_model(model)
    if input not in INPUTS:
        raise KineticsInputError(f"input: unknown input {input!r}; expected one of {list(INPUTS)}.")
    out = Path(out)
    if out.exists() and not overwrite:
        raise KineticsInputError(f"{out}: output directory exists; choose another or pass --overwrite.")
    series, affine, header = load_image(dce, ndim=4, name="DCE series")
    spatial, n_frames = series.shape[:3], series.shape[3]
    t_s = read_times(times, n_frames=n_frames)
    roi = None
    if mask is not None:
        m, _, _ = load_image(mask, ndim=3, name="mask")
        if m.shape != spatial:
            raise KineticsInputError(f"{mask}: the mask has shape {m.shape}, the series {spatial}.")
        roi = m > 0
    if input == "signal":
        _check_acquisition(tr, fa, r1, baseline, n_frames, dce)
        if t10 is None:
            raise KineticsInputError("signal input: give the pre-contrast T1 --t10 as seconds or a NIfTI map.")
        t10_value = read_scalar_or_image(t10, name="T10 map", shape=spatial, unit="s")
        if np.ndim(t10_value) == 0 and not t10_value > 0:
            raise KineticsInputError(f"t10: T10 {t10_value!r} s must be positive.")
        if np.ndim(t10_value):
            bad = ~(t10_value > 0) & (roi if roi is not None else True)
            if bad.all():
                raise KineticsInputError(f"{t10}: the T10 map has no positive value where the fit is asked.")
            if bad.any():
                log.warning("%s: %d voxels with T10 <= 0 or not finite are left unfitted", t10, int(bad.sum()))
            t10_value = np.where(t10_value > 0, t10_value, np.nan)
    if motion_correct:
        from .preprocess import motion_correct as register

        series = register(series, affine).series
    if denoise:
        from .preprocess import denoise_mppca

        series = denoise_mppca(series, mask=roi)
    if input == "signal":
        with np.errstate(invalid="ignore", divide="ignore"):
            conc = concentration_from_signal(
                series, t10_s=t10_value, tr_s=float(tr), fa_deg=float(fa), r1_per_mM_s=float(r1),
                baseline=int(baseline),
            ).astype(np.float32)
        del series
    else:
        conc = series
    cp = resolve_aif(aif, t_s, conc=conc, mask=roi, hct=hct, aif_delay_s=aif_delay)
    matrix = conc.reshape(-1, n_frames)
    index = np.arange(matrix.shape[0]) if roi is None else np.flatnonzero(roi.reshape(-1))
    log.info("fitting %s (%s) to %d voxels", spec.name, method, index.size)
    result = fit_curves(
        matrix[index] if roi is not None else matrix, t_s, cp, model=spec.name, method=method,
        fit_delay=fit_delay, chunk_size=chunk_size,
    )

    def image(values, fill=np.nan):
        full = np.full(matrix.shape[0], fill, dtype=np.asarray(values).dtype)
        full[index] = values
        return full.reshape(spatial)

    maps = {name: image(v) for name, v in result.params.items()}
    options = dict(
        dce=str(dce), times=str(times), aif=str(aif), model=spec.name, input=input, method=method,
        fit_delay=bool(fit_delay), t10=None if t10 is None else str(t10), tr=tr, fa=fa, r1=r1,
        baseline=baseline, hct=hct, mask=None if mask is None else str(mask),
        motion_correct=bool(motion_correct), denoise=bool(denoise),
        n_fitted=int(index.size), n_ok=int(result.fit_ok.sum()),
    )
    with output_directory(out, overwrite=overwrite) as tmp:
        for name, values in maps.items():
            save_image(tmp / f"{name}.nii.gz", values.astype(np.float32), affine, header)
        save_image(tmp / "rmse.nii.gz", image(result.rmse).astype(np.float32), affine, header)
        save_image(tmp / "r2.nii.gz", image(result.r2).astype(np.float32), affine, header)
        save_image(tmp / "fit_ok.nii.gz", image(result.fit_ok, False).astype(np.uint8), affine, header)
        ds = maps_dataset(
            maps, result.units, affine=affine, rmse=image(result.rmse), r2=image(result.r2),
            fit_ok=image(result.fit_ok, False), attrs={"model": spec.name, "method": method},
        )
        ds.to_netcdf(tmp / "maps.nc", engine="h5netcdf")
        (tmp / "fit.json").write_text(json.dumps(options, indent=2))
    log.info("wrote %s (%d of %d voxels fitted)", out, options["n_ok"], index.size)
    return out


def t1_map(vfa, fa, *, tr, out, method="nonlinear", b1=None, mask=None, overwrite=False):
    """T1 map (s) from a variable flip angle series file (x, y, z, n_fa); writes ``out`` (NIfTI).

    Parameters
    ----------
    fa : sequence of float, degrees
        One nominal flip angle per volume of the series.
    method : {"nonlinear", "linear"}
        Nonlinear least squares seeded by DESPOT1, or DESPOT1 alone.
    b1 : None or path
        Relative B1 map (actual / nominal flip angle).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise KineticsInputError(f"{out}: output file exists; choose another or pass --overwrite.")
    if method not in ("nonlinear", "linear"):
        raise KineticsInputError(f"method: unknown method {method!r}; expected 'nonlinear' or 'linear'.")
    data, affine, header = load_image(vfa, ndim=4, name="VFA series")
    fa = np.atleast_1d(np.asarray(fa, dtype=float))
    if fa.size != data.shape[-1]:
        raise KineticsInputError(f"{vfa}: {data.shape[-1]} volumes for {fa.size} flip angles.")
    b1_map = None if b1 is None else read_scalar_or_image(b1, name="B1 map", shape=data.shape[:3], unit="1")
    roi = np.ones(data.shape[:3], bool)
    if mask is not None:
        m, _, _ = load_image(mask, ndim=3, name="mask")
        roi = m > 0
    fit_fn = vfa_t1_nonlinear if method == "nonlinear" else vfa_t1_linear
    t1 = np.full(data.shape[:3], np.nan, dtype=np.float32)
    b1_roi = None if b1_map is None else np.broadcast_to(b1_map, data.shape[:3])[roi]
    t1[roi] = fit_fn(data[roi], fa, tr_s=float(tr), b1=b1_roi).t1_s
    tmp = out.with_name(f".{out.name}.tmp.nii.gz")
    save_image(tmp, t1, affine, header)
    tmp.replace(out)
    return out


def _read_curves(path):
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise KineticsInputError(f"{path}: curves file not found.")
    try:
        table = pd.read_csv(path)
    except Exception as err:
        raise KineticsInputError(f"{path}: cannot read the curves as CSV ({err}).") from None
    if "time_s" not in table.columns:
        raise KineticsInputError(f"{path}: the curves file needs a 'time_s' column; it has {list(table.columns)}.")
    try:
        table = table.astype(float)
    except (TypeError, ValueError):
        raise KineticsInputError(f"{path}: the curves file has a value that is not a number.") from None
    return table


def _volumes(volume_ml, rois):
    if volume_ml is None:
        return None
    if isinstance(volume_ml, dict):
        missing = sorted(set(rois) - set(volume_ml))
        if missing:
            raise KineticsInputError(f"volume_ml: no volume for ROI(s) {missing}.")
        return np.array([float(volume_ml[r]) for r in rois])
    return np.full(len(rois), float(volume_ml))


def fit_roi(
    curves,
    *,
    aif_column,
    out,
    model="2cfm",
    input="concentration",
    t10=None,
    t10_aif=1.6,
    tr=None,
    fa=None,
    r1=4.5,
    baseline=None,
    hct=0.42,
    method="nlls",
    fit_delay=False,
    volume_ml=None,
    overwrite=False,
):
    """Fit ROI curves from a CSV and write one row of parameters per ROI to ``out`` (CSV).

    ``curves`` has a ``time_s`` column, the AIF column ``aif_column`` and one column per ROI. With
    ``input="concentration"`` the AIF column is plasma concentration (mM); with ``input="signal"``
    every column is SPGR signal, converted with ``t10`` (tissue) and ``t10_aif`` (blood, s), and the
    AIF divided by ``1 - hct``. ``model`` is any of :data:`kinetics.registry.MODELS` or
    ``patlak_rutland``. With ``volume_ml`` (a number, or a dict ROI -> mL) the 2CFM and Patlak-Rutland
    rows also get single-kidney ``gfr_ml_min`` (and ``rpf_ml_min``, ``rbf_ml_min`` for 2CFM).
    """
    from .renal import patlak_rutland, single_kidney_function

    out = Path(out)
    if out.exists() and not overwrite:
        raise KineticsInputError(f"{out}: output file exists; choose another or pass --overwrite.")
    if model != "patlak_rutland":
        get_model(model)
    if input not in INPUTS:
        raise KineticsInputError(f"input: unknown input {input!r}; expected one of {list(INPUTS)}.")
    table = _read_curves(curves)
    if aif_column not in table.columns:
        raise KineticsInputError(f"{curves}: no AIF column {aif_column!r}; columns are {list(table.columns)}.")
    rois = [c for c in table.columns if c not in ("time_s", aif_column)]
    if not rois:
        raise KineticsInputError(f"{curves}: no ROI column besides 'time_s' and {aif_column!r}.")
    t_s = table["time_s"].to_numpy()
    if not np.all(np.isfinite(t_s)) or np.any(np.diff(t_s) <= 0):
        raise KineticsInputError(f"{curves}: the time_s column must be finite and increasing.")
    tissue = table[rois].to_numpy().T
    cp = table[aif_column].to_numpy()
    if input == "signal":
        _check_acquisition(tr, fa, r1, baseline, t_s.size, curves)
        if t10 is None:
            raise KineticsInputError("signal input: give the tissue T10 --t10 (s).")
        convert = dict(tr_s=float(tr), fa_deg=float(fa), r1_per_mM_s=float(r1), baseline=int(baseline))
        tissue = concentration_from_signal(tissue, t10_s=float(t10), **convert)
        cp = concentration_from_signal(cp, t10_s=float(t10_aif), **convert) / (1.0 - hct)
    rows = {"roi": rois}
    if model == "patlak_rutland":
        pr = patlak_rutland(t_s, tissue, cp)
        rows.update(ft=pr.ft, vp=pr.vp, window_start_s=pr.window_s[0], window_end_s=pr.window_s[1])
        flows = dict(ft_ml_100ml_min=pr.ft)
    else:
        res = fit_curves(tissue, t_s, cp, model=model, method=method, fit_delay=fit_delay)
        rows.update(res.params)
        rows.update(rmse=res.rmse, r2=res.r2, fit_ok=res.fit_ok.astype(int))
        flows = dict(ft_ml_100ml_min=res.params["ft"], fp_ml_100ml_min=res.params["fp"]) if model == "2cfm" else {}
    volumes = _volumes(volume_ml, rois)
    if volumes is not None and flows:
        rows["volume_ml"] = volumes
        rows.update(single_kidney_function(volume_ml=volumes, hct=hct, **flows))
    import pandas as pd

    tmp = out.with_name(f".{out.name}.tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")
    tmp.replace(out)
    return out
