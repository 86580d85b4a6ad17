"""Command line: ``python -m kinetics fit | fit-roi | t1map | aif | dro`` (``--help`` on each)."""

from __future__ import annotations

import sys

from .cli import run_cli
from .errors import KineticsInputError


def fit(dce, times, aif, out, model="extended_tofts", input="concentration", t10=None, tr=None, fa=None,
        r1=4.5, baseline=None, hct=0.42, aif_delay=None, mask=None, method="nlls", fit_delay=False,
        motion_correct=False, denoise=False, max_iter=100, quality=False, engine="auto", overwrite=False) -> str:
    """Fit a pharmacokinetic model to every voxel of a DCE-MRI series and write maps.

    Args:
        dce: 4D NIfTI series (x, y, z, t): concentration (mM) or SPGR signal.
        times: text file, frame times in seconds, one a line.
        aif: CSV with header time_s,cp_mM (plasma, mM), or parker | georgiou | weinmann | mcgrath | auto.
        out: output directory (must not exist unless --overwrite).
        model: tofts | extended_tofts | patlak | 2cxm | 2cum | 2cfm.
        input: concentration | signal.
        t10: pre-contrast T1, seconds or a NIfTI map (signal input).
        tr: repetition time, s (signal input).
        fa: flip angle, degrees (signal input).
        r1: relaxivity, /s/mM.
        baseline: number of pre-contrast frames (signal input).
        hct: haematocrit, to turn blood AIFs into plasma.
        aif_delay: bolus start of a population AIF, s (default: estimated from the series).
        mask: 3D NIfTI; voxels > 0 are fitted.
        method: nlls (bounded Levenberg-Marquardt seeded by llsq) | llsq (linear only).
        fit_delay: also estimate the arterial delay per voxel (s).
        motion_correct: register the frames first. The bare flag or "model": each frame to the model's
            prediction of it, then all frames' shifts refined with the model's parameters projected
            out, refitting between rounds (kinetics.motion; fit.json lists the frame shifts, mm along
            the array axes);
            "mean": every frame to the mean frame (dipy, mutual information).
        denoise: MP-PCA denoising of the series first (dipy).
        max_iter: iterations of the nonlinear fit (voxels that need more get the status not_converged).
        quality: also write quality.png: the fit_status map and histograms of the first two parameters.
        engine: auto (forked processes where safe and worth it, else threads) | processes | threads |
            serial (one core; for debugging). fit.json records which ran and why.
        overwrite: replace an existing output directory.
    """
    from .workflow import fit_dce

    return str(fit_dce(dce, times, aif, out=out, model=model, input=input, t10=t10, tr=tr, fa=fa, r1=r1,
                       baseline=baseline, hct=hct, aif_delay=aif_delay, mask=mask, method=method,
                       fit_delay=fit_delay, motion_correct=motion_correct, denoise=denoise, max_iter=max_iter,
                       quality=quality, engine=engine, overwrite=overwrite))


def fit_roi(curves=None, aif_column=None, out=None, model="2cfm", input="concentration", t10=None, t10_aif=1.6,
            tr=None, fa=None, r1=4.5, baseline=None, hct=0.42, method="nlls", fit_delay=False, volume_ml=None,
            pr_form="plot", window_s=None, uptake_s=90.0, max_iter=100, study=None, overwrite=False) -> str:
    """Fit ROI curves (CSV: time_s, the AIF column, one column per ROI); one row of parameters per ROI.

    Args:
        curves: CSV with time_s (s), the AIF column and one column per ROI.
        aif_column: name of the AIF column (plasma mM, or signal with --input signal).
        out: output CSV.
        model: 2cfm | patlak_rutland | tofts | extended_tofts | patlak | 2cxm | 2cum.
        volume_ml: kidney volume (mL), a number or {roi: mL}; adds single-kidney GFR/RPF (mL/min).
        t10: tissue T10 (s) for signal input, a number or {roi: s} (e.g. "{LK: 1.3, RK: 1.4}").
        t10_aif: blood T10 (s) for a signal AIF.
        pr_form: patlak_rutland only: plot (C/cp against integral(cp)/cp, the default) | time (C against cp
            and integral(cp)).
        window_s: patlak_rutland only: frames used, "start,end" in s; default from the AIF peak (plot) or
            the bolus arrival (time) to uptake_s after the arrival.
        uptake_s: patlak_rutland only: length of the uptake phase after the bolus arrival (s).
        max_iter: iterations of the nonlinear fit (an ROI that needs more gets the status not_converged).
        study: instead of --curves, a CSV with one row per scan (curves, and optionally scan_id, t10 or
            t10_<ROI>, volume_ml or volume_ml_<ROI>, tr, fa, r1, baseline, hct, t10_aif, aif_column,
            input, uptake_s); every scan is fitted in this process into one --out table.
        Other options as for fit.
    """
    options = dict(aif_column=aif_column, model=model, input=input, t10=t10, t10_aif=t10_aif, tr=tr, fa=fa, r1=r1,
                   baseline=baseline, hct=hct, method=method, fit_delay=fit_delay, volume_ml=volume_ml,
                   pr_form=pr_form, window_s=window_s, uptake_s=uptake_s, max_iter=max_iter)
    if out is None:
        raise KineticsInputError("fit-roi: give --out, the output CSV.")
    if study is not None:
        if curves is not None:
            raise KineticsInputError("fit-roi: give --curves (one scan) or --study (a table of scans), not both.")
        from .study import fit_study

        return str(fit_study(study, out=out, overwrite=overwrite, **options))
    if curves is None or aif_column is None:
        raise KineticsInputError("fit-roi: give --curves and --aif-column (or --study).")
    from .roi import fit_roi as run

    return str(run(curves, out=out, overwrite=overwrite, **options))


def t1map(vfa, fa, tr, out, method="nonlinear", b1=None, mask=None, status=None, overwrite=False) -> str:
    """T1 map (s) from a variable flip angle series.

    Args:
        vfa: 4D NIfTI, one volume per flip angle.
        fa: flip angles in degrees, comma separated (2,5,10,15).
        tr: repetition time, s.
        out: output NIfTI (T1 in seconds).
        method: nonlinear (seeded by DESPOT1) | linear (DESPOT1).
        b1: relative B1 map (NIfTI) or number.
        mask: 3D NIfTI; voxels > 0 are fitted.
        status: also write each voxel's status code (NIfTI): 0 outside the mask, 1 ok, 3 a signal not
            finite, 8 no T1 fits, 9 T1 outside 0.05-10 s (set to NaN in the map; counted in a warning).
    """
    from .t1map import t1_map

    return str(t1_map(vfa, fa, tr=tr, out=out, method=method, b1=b1, mask=mask, status=status, overwrite=overwrite))


def aif(name, times, out, hct=0.42, delay=0.0, overwrite=False) -> str:
    """Write a population AIF (plasma, mM) on the frame times to a CSV time_s,cp_mM.

    Args:
        name: parker | georgiou | weinmann | mcgrath.
        times: text file of frame times (s), one a line.
        out: output CSV.
        hct: haematocrit.
        delay: bolus start, s.
    """
    from .aif import plasma_aif, write_aif_csv
    from .io import output_file, read_times
    from .options import haematocrit
    from .workflow import check_delay, check_frame_times

    hct = haematocrit(hct)
    t = read_times(times)
    check_frame_times(t, times)
    cp = plasma_aif(name, t, hct=hct, delay_s=check_delay(delay, t))
    with output_file(out, overwrite=overwrite) as tmp:
        write_aif_csv(tmp, t, cp)
    return str(out)


def dro(out, snr=60.0, seed=0, overwrite=False) -> str:
    """Write a digital reference object (QIBA-like blocks of known Ktrans, ve, vp) as fit inputs.

    Args:
        out: output directory: dce.nii.gz, times.txt, aif.csv, vfa.nii.gz, *_true.nii.gz, dro.json.
        snr: baseline signal over noise standard deviation.
        seed: noise seed.
    """
    from .dro import make_dro, write_dro
    from .options import number

    snr, seed = number(snr, "snr", positive=True), number(seed, "seed", integer=True, low=0)
    return str(write_dro(make_dro(snr=snr, seed=seed), out, overwrite=overwrite))


COMMANDS = {"fit": fit, "fit-roi": fit_roi, "t1map": t1map, "aif": aif, "dro": dro}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input prints one sentence and exits 2 (``--debug`` shows the traceback)."""
    return run_cli(COMMANDS, sys.argv[1:] if argv is None else argv, "kinetics")


if __name__ == "__main__":
    sys.exit(main())
