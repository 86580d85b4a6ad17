"""File-level pipelines behind the CLI: read inputs, check them all, fit, write. One function a command."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from . import aif as aif_mod
from ._block import MIN_FRAMES_KEPT
from .errors import KineticsInputError
from .fit import check_method, fit_image
from .io import load_image, maps_dataset, output_directory, read_mask, read_scalar_or_image, read_times, save_image
from .motion import MARGIN_MM as MOTION_MARGIN_MM
from .motion import ROUNDS as MOTION_ROUNDS
from .options import PLAUSIBLE, flip_angles, haematocrit, iterations, number, plausible
from ._pool import check_engine
from .provenance import provenance
from .registry import get_model
from .signal import concentration_from_signal
from .status import FIT_STATUS, INPUT_NOT_FINITE, OUTSIDE, conversion_status, has_estimate, status_counts

__all__ = ["fit_dce", "resolve_aif", "check_frame_times", "check_delay", "INPUTS"]

log = logging.getLogger("kinetics")
INPUTS = ("concentration", "signal")
AIF_NAMES = sorted(aif_mod.POPULATION_AIFS) + ["auto"]


def check_frame_times(t_s: ArrayLike, source: str | os.PathLike) -> None:
    """Reject frame times whose spacing says they are not in seconds (milliseconds, typically)."""
    if np.size(t_s) < 2:
        raise KineticsInputError(f"{source}: {np.size(t_s)} frame times; a dynamic series needs at least 2.")
    spacing = float(np.median(np.diff(t_s)))
    if spacing > 60.0:
        raise KineticsInputError(
            f"{source}: frames are {spacing:g} s apart; give the times in seconds (milliseconds are a common slip)."
        )


def check_delay(delay_s: float, t_s: np.ndarray, name: str = "delay") -> float:
    """A bolus start (s) at or after the first frame and before the last, else a KineticsInputError
    (an AIF that starts after the series is all zeros; one given in ms starts long after it)."""
    delay = number(delay_s, name, "s")
    if not t_s[0] - 60.0 <= delay < t_s[-1]:
        raise KineticsInputError(f"{name}: a bolus starting at {delay:g} s is outside the series ({t_s[0]:g}-{t_s[-1]:g} s); "
                                 "give seconds from the first frame's clock.")
    return delay


def resolve_aif(
    aif: str | os.PathLike,
    t_s: np.ndarray,
    *,
    conc: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    hct: float = 0.42,
    aif_delay_s: float | None = None,
) -> np.ndarray:
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
    hct = haematocrit(hct)
    if name in aif_mod.POPULATION_AIFS:
        if aif_delay_s is None:
            if conc is None:
                raise KineticsInputError("aif: a population AIF needs --aif-delay when no series is given.")
            mean_curve = np.nanmean(conc[mask] if mask is not None else conc.reshape(-1, t_s.size), axis=0)
            aif_delay_s = float(aif_mod.bolus_arrival_time(mean_curve, t_s))
            if not np.isfinite(aif_delay_s):
                aif_delay_s = float(t_s[0])
            log.info("population AIF placed at the bolus arrival time %.1f s", aif_delay_s)
        return aif_mod.plasma_aif(name, t_s, hct=hct, delay_s=check_delay(aif_delay_s, t_s, "aif_delay"))
    if name == "auto":
        if conc is None:
            raise KineticsInputError("aif: 'auto' needs a DCE series to search.")
        found = aif_mod.detect_aif(conc, t_s, mask=mask)
        return found.curve / (1.0 - hct)
    if not Path(name).is_file():
        raise KineticsInputError(f"{name}: no such AIF file, and not one of {AIF_NAMES}.")
    t_aif, cp = aif_mod.read_aif_csv(name)
    span = 0.5 * float(np.min(np.diff(t_s)))
    if t_aif[0] > t_s[0] + span or t_aif[-1] < t_s[-1] - span:
        raise KineticsInputError(
            f"{name}: the AIF covers {t_aif[0]:g}-{t_aif[-1]:g} s but the series runs {t_s[0]:g}-{t_s[-1]:g} s."
        )
    return np.interp(t_s, t_aif, cp)


def signal_options(
    tr: float | None,
    fa: str | ArrayLike | None,
    r1: float,
    baseline: int | None,
    n_frames: int,
    source: str | os.PathLike,
) -> tuple[float, float, float, int]:
    """Checked acquisition values of an SPGR series: (tr_s, fa_deg, r1, baseline frames)."""
    if tr is None or fa is None or baseline is None:
        raise KineticsInputError(
            "signal input: give the repetition time --tr (s), the flip angle --fa (degrees) and --baseline (frames)."
        )
    tr = plausible(tr, "tr")
    fa = flip_angles(fa)
    if len(fa) != 1:
        raise KineticsInputError(f"fa: {len(fa)} flip angles given; a DCE series has one.")
    r1 = plausible(r1, "r1")
    baseline = number(baseline, "baseline", "frames", integer=True)
    if not 1 <= baseline < n_frames:
        raise KineticsInputError(f"{source}: --baseline {baseline} pre-contrast frames for a series of {n_frames} frames.")
    return tr, fa[0], r1, baseline


def _t10(t10, spatial, roi, affine=None):
    if t10 is None:
        raise KineticsInputError("signal input: give the pre-contrast T1 --t10 as seconds or a NIfTI map.")
    value = read_scalar_or_image(t10, name="T10 map", shape=spatial, unit="s", affine=affine)
    if np.ndim(value) == 0:
        return plausible(value, "t10")
    bad = ~(value > 0) & (roi if roi is not None else True)
    if bad.all():
        raise KineticsInputError(f"{t10}: the T10 map has no positive value where the fit is asked.")
    low, high, *_ = PLAUSIBLE["t10"]
    median = float(np.median(value[~bad & (roi if roi is not None else True)]))
    if not low <= median <= high:
        raise KineticsInputError(f"{t10}: the T10 map's median is {median:g} s, not a plausible T1 ({low:g}-{high:g} s); "
                                 "a map in milliseconds?")
    if bad.any():
        log.warning("%s: %d voxels with T10 <= 0 or not finite are left unfitted", t10, int(bad.sum()))
    return np.where(value > 0, value, np.nan)


def fit_dce(
    dce: str | os.PathLike,
    times: str | os.PathLike,
    aif: str | os.PathLike,
    *,
    out: str | os.PathLike,
    model: str = "extended_tofts",
    input: str = "concentration",
    t10: float | str | os.PathLike | None = None,
    tr: float | None = None,
    fa: str | ArrayLike | None = None,
    r1: float = 4.5,
    baseline: int | None = None,
    hct: float = 0.42,
    aif_delay: float | None = None,
    mask: str | os.PathLike | None = None,
    method: str = "nlls",
    fit_delay: bool = False,
    motion_correct: bool | str = False,
    denoise: bool = False,
    max_iter: int = 100,
    quality: bool = False,
    engine: str = "auto",
    overwrite: bool = False,
    chunk_size: int | None = None,
) -> Path:
    """Fit a DCE-MRI series file and write the maps to ``out``; returns the output directory.

    Writes ``<param>.nii.gz`` for each model and derived parameter (Ktrans and kep in /min, volumes as
    fractions), ``rmse.nii.gz`` (mM), ``r2.nii.gz``, ``fit_ok.nii.gz`` (uint8), ``fit_status.nii.gz``
    (uint8 :mod:`kinetics.status` codes: why each voxel has the estimate it has), ``maps.nc`` (all of them,
    with units) and ``fit.json`` (the options, the count per status and per parameter at a bound); with
    ``quality``, ``quality.png`` (the status map and histograms of the first two parameters). Every input is checked before anything is written.
    See ``python -m kinetics fit --help`` for the options.
    """
    spec = get_model(model)
    if input not in INPUTS:
        raise KineticsInputError(f"input: unknown input {input!r}; expected one of {list(INPUTS)}.")
    check_method(method)
    hct = haematocrit(hct)
    max_iter = iterations(max_iter)
    check_engine(engine)
    motion = motion_mode(motion_correct)
    out = Path(out)
    if out.exists() and not overwrite:
        raise KineticsInputError(f"{out}: output directory exists; choose another or pass --overwrite.")
    series, affine, header = load_image(dce, ndim=4, name="DCE series")
    spatial, n_frames = series.shape[:3], series.shape[3]
    t_s = read_times(times, n_frames=n_frames)
    check_frame_times(t_s, times)
    roi = read_mask(mask, spatial, affine)
    t10_value = None
    if input == "signal":
        tr, fa, r1, baseline = signal_options(tr, fa, r1, baseline, n_frames, dce)
        t10_value = _t10(t10, spatial, roi, affine)
    if denoise:
        if input != "signal":
            raise KineticsInputError(
                "denoise: MP-PCA needs a signal series (--input signal); it clips values below zero, "
                "which would bias a concentration series."
            )
    if not np.isfinite(series[roi] if roi is not None else series).any():
        raise KineticsInputError(f"{dce}: the series has no finite value where the fit is asked.")
    signal = dict(t10_s=t10_value, tr_s=tr, fa_deg=fa, r1_per_mM_s=r1, baseline=baseline) if input == "signal" else None
    shifts_mm = None
    if motion == "mean":
        from .preprocess import motion_correct as register

        series = register(series, affine).series
    elif motion == "model":
        corrected = _model_driven(series, t_s, spec, aif=aif, hct=hct, aif_delay=aif_delay, roi=roi, affine=affine,
                                  signal=signal, engine=engine)
        series = corrected.series
        shifts_mm = corrected.shifts_vox * np.linalg.norm(affine[:3, :3], axis=0)  # along the array axes i, j, k
        log.info("model-driven motion correction: frame shifts up to %.2f mm (RMS %.2f mm)",
                 float(np.abs(shifts_mm).max()), float(np.sqrt(np.mean(np.sum(shifts_mm**2, axis=1)))))
    if denoise:
        from .preprocess import denoise_mppca

        series = denoise_mppca(series, mask=roi)
    conc, reason = (series, None) if signal is None else _concentration_and_reason(series, signal, roi)
    del series
    cp = resolve_aif(aif, t_s, conc=conc, mask=roi, hct=hct, aif_delay_s=aif_delay)
    n_voxels = int(roi.sum()) if roi is not None else int(np.prod(spatial))
    log.info("fitting %s (%s) to %d voxels", spec.name, method, n_voxels)
    result = fit_image(conc, t_s, cp, mask=roi, model=spec.name, method=method, fit_delay=bool(fit_delay),
                       chunk_size=chunk_size, max_iter=max_iter, engine=engine, progress=n_voxels >= PROGRESS_VOXELS)
    status = result.fit_status
    if reason is not None:  # the engine saw a non-finite curve; the conversion knows why
        status = np.where((status == INPUT_NOT_FINITE) & (reason != OUTSIDE), reason, status).astype(np.uint8)
    if not has_estimate(status).any():
        raise KineticsInputError(no_fit_message(conc[roi] if roi is not None else conc.reshape(-1, n_frames), cp, input,
                                                method))
    counts = status_counts(status)
    options = dict(
        dce=str(dce), times=str(times), aif=str(aif), model=spec.name, input=input, method=method,
        fit_delay=bool(fit_delay), t10=None if t10 is None else str(t10), tr=tr, fa=fa, r1=r1,
        baseline=baseline, hct=hct, mask=None if mask is None else str(mask),
        motion_correct=motion, denoise=bool(denoise), max_iter=max_iter, aif_delay=aif_delay,
        frame_shifts_mm=None if shifts_mm is None else np.round(shifts_mm, 3).tolist(),
        motion_model_driven=None if motion != "model" else {"rounds_at_most": MOTION_ROUNDS, "margin_mm": MOTION_MARGIN_MM},
        n_fitted=n_voxels, n_ok=int(result.fit_ok.sum()), fit_status=counts,
        at_bound={name: n for name, n in result.at_bound.items() if n},
        frames_excluded={"voxels": int(np.sum(result.frames_excluded > 0)), "frames": int(np.sum(result.frames_excluded))},
        status_codes={str(code): name for code, name in FIT_STATUS.items()}, engine=result.engine,
        provenance=provenance("kinetics", {"dce": dce, "times": times, "aif": aif, "t10": t10, "mask": mask}),
    )
    _write_maps(out, result, status, options, affine, header, quality=quality, overwrite=overwrite)
    log.info("wrote %s: %d of %d voxels fitted (%s)", out, options["n_ok"], n_voxels,
             ", ".join(f"{name} {n}" for name, n in counts.items()))
    if options["frames_excluded"]["voxels"]:
        log.info("%d voxels were fitted without %d frames that were not finite (a signal above the SPGR maximum)",
                 options["frames_excluded"]["voxels"], options["frames_excluded"]["frames"])
    return out



MOTION_MODES = ("model", "mean")


def motion_mode(motion_correct) -> str | None:
    """None (no correction), ``"model"`` (True: :mod:`kinetics.motion`) or ``"mean"`` (to the mean frame, dipy)."""
    if motion_correct is False or motion_correct is None:
        return None
    if motion_correct is True:
        return "model"
    if motion_correct not in MOTION_MODES:
        raise KineticsInputError(f"motion_correct: unknown {motion_correct!r}; expected one of {list(MOTION_MODES)} "
                                 "(or the bare flag, which means model).")
    return motion_correct


def _model_driven(series, t_s, spec, *, aif, hct, aif_delay, roi, affine, signal, engine):
    """:func:`kinetics.motion.motion_correct_series` with the fit's own model, and its AIF resolved from
    the series as acquired where it is found in the image (the fit resolves it again, from the
    corrected series)."""
    from .motion import motion_correct_series

    from_image = str(aif) == "auto" or (str(aif) in aif_mod.POPULATION_AIFS and aif_delay is None)
    conc = None
    if from_image:
        conc = series if signal is None else _concentration(series, signal)
    cp = resolve_aif(aif, t_s, conc=conc, mask=roi, hct=hct, aif_delay_s=aif_delay)
    return motion_correct_series(series, t_s, cp, model=spec.name, mask=roi,
                                 voxel_mm=np.linalg.norm(affine[:3, :3], axis=0), signal=signal, engine=engine)


def _concentration(series, signal):
    with np.errstate(invalid="ignore", divide="ignore"):
        return concentration_from_signal(series, **signal, dtype=np.float32)


def _concentration_and_reason(series, signal, roi):
    """Concentration of a signal series, and why a voxel's has no finite value (only inside ``roi``
    when given: over a whole series that is several passes more)."""
    conc = _concentration(series, signal)
    t10 = signal["t10_s"]
    if roi is None:
        return conc, conversion_status(series, conc, t10)
    reason = np.zeros(series.shape[:3], np.uint8)
    reason[roi] = conversion_status(series[roi], conc[roi], t10[roi] if np.ndim(t10) else t10)
    return conc, reason


def _write_maps(out, result, status, options, affine, header, *, quality, overwrite):
    """The files of :func:`fit_dce`, all at once (``out`` appears complete or not at all)."""
    maps, model = result.params, options["model"]
    with output_directory(out, overwrite=overwrite) as tmp:
        for name, values in maps.items():
            save_image(tmp / f"{name}.nii.gz", values.astype(np.float32), affine, header)
        save_image(tmp / "rmse.nii.gz", result.rmse.astype(np.float32), affine, header)
        save_image(tmp / "r2.nii.gz", result.r2.astype(np.float32), affine, header)
        save_image(tmp / "fit_ok.nii.gz", result.fit_ok.astype(np.uint8), affine, header)
        save_image(tmp / "fit_status.nii.gz", status, affine, header)
        ds = maps_dataset(maps, result.units, affine=affine, rmse=result.rmse, r2=result.r2, fit_ok=result.fit_ok,
                          fit_status=status, attrs={"model": model, "method": options["method"]})
        ds["frames_excluded"] = (("x", "y", "z"), result.frames_excluded.astype(np.int16),
                                 {"long_name": "frames left out of the fit (not finite: above the signal maximum)"})
        ds.to_netcdf(tmp / "maps.nc", engine="h5netcdf")
        if quality:
            from .quality import quality_figure

            quality_figure(tmp / "quality.png", status, {k: maps[k] for k in get_model(model).params[:2]}, result.units)
        (tmp / "fit.json").write_text(json.dumps(options, indent=2))


PROGRESS_VOXELS = 100_000  # a fit this large shows a progress bar (smaller ones take a second or two)


def no_fit_message(curves, cp, input, method="nlls") -> str:
    """The sentence of a fit in which no voxel could be fitted, naming the likely cause."""
    n = len(curves)
    finite = np.isfinite(curves).all(axis=1)
    if not np.isfinite(cp).all() or np.nanmax(np.abs(cp)) <= 0:
        cause = "the AIF is zero or not finite on the frame times (check its times and --aif-delay, in seconds)"
    elif not finite.any():
        signal = (": a signal above the SPGR maximum for this T10, TR and flip angle gives such frames (check --t10 and "
                  "--tr in seconds, --fa in degrees)") if input == "signal" else ""
        if method == "nlls" or np.isfinite(curves).mean(axis=1).max() < MIN_FRAMES_KEPT:
            cause = ("every curve misses frames (not finite), and none kept enough of them to be fitted without "
                     "them" + signal)
        else:
            cause = ("every curve has a frame that is not finite, which the linear fit cannot leave out (--method "
                     "nlls fits without them)" + signal)
    else:
        cause = ("no curve fits the model within its bounds (check the units: times and --tr in s, --t10 in s, "
                 "--r1 in /s/mM, concentrations in mM)")
    return f"no voxel could be fitted (0 of {n}): {cause}."
