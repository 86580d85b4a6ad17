"""ROI curves from a CSV (``python -m kinetics fit-roi``): one row of parameters per ROI, renal function."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from .errors import KineticsInputError
from .fit import fit_curves
from .io import check_output_file, table_sidecar, write_table
from .provenance import provenance
from .options import haematocrit, iterations, number, plausible
from .registry import get_model
from .renal import PATLAK_RUTLAND_FORMS, patlak_rutland, single_kidney_function
from .signal import concentration_from_signal
from .status import FIT_STATUS, INPUT_NOT_FINITE, OK, conversion_status
from .workflow import INPUTS, check_frame_times, signal_options

__all__ = ["fit_roi", "roi_parameters", "read_curves", "RENAL_MODELS"]

RENAL_MODELS = ("2cfm", "patlak_rutland")


def read_curves(path: str | os.PathLike) -> pd.DataFrame:
    """Curves CSV as a float DataFrame with a ``time_s`` column (s), checked."""
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
    t = table["time_s"].to_numpy()
    if len(t) < 3 or not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise KineticsInputError(f"{path}: the time_s column must hold at least 3 finite, increasing times.")
    check_frame_times(t, path)
    return table


def _frames(index, t_s) -> str:
    """'frames 12-14 (24-28 s)' for frame indices (0-based in, 1-based out)."""
    first, last = int(index[0]), int(index[-1])
    if first == last:
        return f"frame {first + 1} ({t_s[first]:g} s)"
    return f"frames {first + 1}-{last + 1} ({t_s[first]:g}-{t_s[last]:g} s)"


def _per_roi(value, rois, name, check):
    """One value per ROI from a number (the same for all) or a mapping ROI -> value, each passed
    through ``check(value, name)``; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        missing = sorted(set(rois) - set(value))
        if missing:
            raise KineticsInputError(f"{name}: no value for ROI(s) {missing}.")
        unknown = sorted(set(value) - set(rois))
        if unknown:
            raise KineticsInputError(f"{name}: ROI(s) {unknown} are not columns of the curves; they are {rois}.")
        return np.array([check(value[r], f"{name}[{r}]") for r in rois])
    return np.full(len(rois), check(value, name))


def _window(value):
    """``(start, end)`` seconds from a pair or a "start,end" string, checked."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        start, end = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise KineticsInputError(f"window_s: {value!r} is not two times in seconds (\"start,end\").") from None
    if not (np.isfinite(start) and np.isfinite(end) and start < end):
        raise KineticsInputError(f"window_s: ({start:g}, {end:g}) s needs finite times with start < end.")
    return start, end


def _volumes(volume_ml, rois):
    return _per_roi(volume_ml, rois, "volume_ml", lambda v, n: number(v, n, "mL", positive=True))


def fit_roi(curves: str | os.PathLike, *, aif_column: str, out: str | os.PathLike, model: str = "2cfm",
            input: str = "concentration", t10: float | dict[str, float] | None = None, t10_aif: float = 1.6,
            tr: float | None = None, fa: str | ArrayLike | None = None, r1: float = 4.5, baseline: int | None = None,
            hct: float = 0.42, method: str = "nlls", fit_delay: bool = False,
            volume_ml: float | dict[str, float] | None = None, pr_form: str = "plot",
            window_s: str | Sequence[float] | None = None, uptake_s: float = 90.0, max_iter: int = 100,
            overwrite: bool = False) -> Path:
    """Fit ROI curves from a CSV and write one row of parameters per ROI to ``out`` (CSV).

    ``curves`` has a ``time_s`` column, the AIF column ``aif_column`` and one column per ROI. With
    ``input="concentration"`` the AIF column is plasma concentration (mM); with ``input="signal"``
    every column is SPGR signal, converted with ``t10`` (tissue, s; a number, or a dict ROI -> s) and
    ``t10_aif`` (blood, s), and the
    AIF divided by ``1 - hct``. ``model`` is any of :data:`kinetics.registry.MODELS` or
    ``patlak_rutland``. With ``volume_ml`` (a number, or a dict ROI -> mL) the renal models also give
    single-kidney ``gfr_ml_min`` (and ``rpf_ml_min``, ``rbf_ml_min`` for 2CFM). ``pr_form``,
    ``window_s`` and ``uptake_s`` choose the Patlak-Rutland form and frames
    (:func:`kinetics.renal.patlak_rutland`).
    """
    out = Path(out)
    for path in (out, table_sidecar(out)):  # before the fits, not when they are done
        check_output_file(path, overwrite=overwrite)
    rows = roi_parameters(curves, aif_column=aif_column, model=model, input=input, t10=t10, t10_aif=t10_aif, tr=tr,
                          fa=fa, r1=r1, baseline=baseline, hct=hct, method=method, fit_delay=fit_delay,
                          volume_ml=volume_ml, pr_form=pr_form, window_s=window_s, uptake_s=uptake_s,
                          max_iter=max_iter)
    options = dict(model=model, input=input, aif_column=aif_column, t10=t10, t10_aif=t10_aif, tr=tr, fa=fa, r1=r1,
                   baseline=baseline, hct=hct, method=method, fit_delay=fit_delay, volume_ml=volume_ml, pr_form=pr_form,
                   window_s=window_s, uptake_s=uptake_s, max_iter=max_iter)
    return write_table(out, rows, dict(options=options, provenance=provenance("kinetics", {"curves": curves})),
                       overwrite=overwrite)


def roi_parameters(curves, *, aif_column, model="2cfm", input="concentration", t10=None, t10_aif=1.6, tr=None,
                   fa=None, r1=4.5, baseline=None, hct=0.42, method="nlls", fit_delay=False, volume_ml=None,
                   pr_form="plot", window_s=None, uptake_s=90.0, max_iter=100) -> pd.DataFrame:
    """The table :func:`fit_roi` writes (one row per ROI: parameters, quality, ``fit_status``, renal
    function), as a DataFrame; the same arguments but ``out``."""
    if model != "patlak_rutland":
        get_model(model)
        if window_s is not None or pr_form != "plot":
            raise KineticsInputError("window_s, pr_form: options of --model patlak_rutland only.")
    elif pr_form not in PATLAK_RUTLAND_FORMS:
        raise KineticsInputError(f"pr_form: unknown Patlak-Rutland form {pr_form!r}; expected one of {list(PATLAK_RUTLAND_FORMS)}.")
    if window_s is not None:
        window_s = _window(window_s)
    uptake_s = number(uptake_s, "uptake_s", "s", positive=True)
    if input not in INPUTS:
        raise KineticsInputError(f"input: unknown input {input!r}; expected one of {list(INPUTS)}.")
    if volume_ml is not None and model not in RENAL_MODELS:
        raise KineticsInputError(f"volume_ml: single-kidney function needs --model {' or '.join(RENAL_MODELS)}.")
    hct = haematocrit(hct)
    table = read_curves(curves)
    if aif_column not in table.columns:
        raise KineticsInputError(f"{curves}: no AIF column {aif_column!r}; columns are {list(table.columns)}.")
    rois = [c for c in table.columns if c not in ("time_s", aif_column)]
    if not rois:
        raise KineticsInputError(f"{curves}: no ROI column besides 'time_s' and {aif_column!r}.")
    volumes = _volumes(volume_ml, rois)
    t_s = table["time_s"].to_numpy()
    tissue = table[rois].to_numpy().T
    cp = table[aif_column].to_numpy()
    if input == "signal":
        tr, fa, r1, baseline = signal_options(tr, fa, r1, baseline, t_s.size, curves)
        convert = dict(tr_s=tr, fa_deg=fa, r1_per_mM_s=r1, baseline=baseline)
        if t10 is None:
            raise KineticsInputError("signal input: give the tissue T10 --t10 (s).")
        # one T10 for every ROI, or {roi: T10}: two kidneys with their own measured T1 in one call
        t10_rois = _per_roi(t10, rois, "t10", lambda v, n: plausible(v, n, "t10"))
        signal = tissue
        tissue = concentration_from_signal(tissue, t10_s=t10_rois, **convert)
        reason = conversion_status(signal, tissue, t10_rois)
        cp = concentration_from_signal(cp, t10_s=plausible(t10_aif, "t10_aif", "t10"), **convert) / (1.0 - hct)
        lost = np.flatnonzero(~np.isfinite(cp))
        if lost.size:  # a saturated peak: S/(S0 sin FA) above the SPGR maximum has no real R1
            raise KineticsInputError(
                f"{curves}: the AIF column {aif_column!r} has {lost.size} frame(s) with no real concentration "
                f"({_frames(lost, t_s)}): their signal exceeds the SPGR maximum for T10 {t10_aif:g} s, TR {tr:g} s, "
                f"FA {fa:g} degrees (saturation at the bolus peak, or a wrong --t10-aif); give the AIF as concentration "
                "(--input concentration) or check the acquisition values.")
    else:
        reason = np.zeros(len(rois), np.uint8)
    rows = {"roi": rois}
    if model == "patlak_rutland":
        pr = patlak_rutland(t_s, tissue, cp, form=pr_form, window_s=window_s, uptake_s=uptake_s)
        # a curve with a frame that is not finite in the window has no estimate: say why
        status = np.where(np.isfinite(pr.ft), OK, np.where(reason != 0, reason, INPUT_NOT_FINITE))
        rows.update(ft=pr.ft, vp=pr.vp, form=pr.form, window_start_s=pr.window_s[0], window_end_s=pr.window_s[1],
                    fit_status=[FIT_STATUS[c] for c in status])
        flows = dict(ft_ml_100ml_min=pr.ft)
    else:
        res = fit_curves(tissue, t_s, cp, model=model, method=method, fit_delay=bool(fit_delay),
                         max_iter=iterations(max_iter))
        rows.update(res.params)
        status = np.where((res.fit_status == INPUT_NOT_FINITE) & (reason != 0), reason, res.fit_status)
        rows.update(rmse=res.rmse, r2=res.r2, fit_ok=res.fit_ok.astype(int), fit_status=[FIT_STATUS[c] for c in status],
                    frames_excluded=res.frames_excluded)
        flows = dict(ft_ml_100ml_min=res.params["ft"], fp_ml_100ml_min=res.params["fp"]) if model == "2cfm" else {}
    if volumes is not None:
        rows["volume_ml"] = volumes
        rows.update(single_kidney_function(volume_ml=volumes, hct=hct, **flows))
    return pd.DataFrame(rows)
