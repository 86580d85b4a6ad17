"""Speed and accuracy of the kinetics fits against a per-voxel curve_fit baseline and dcmri.

    python -m benchmarks.kinetics_speed [--n 200000] [--n-baseline 300] [--n-dcmri 100] [--no-memory]
                                        [--workers N] [--repeats 3]

The same synthetic extended-Tofts DCE-MRI data (60 frames, 5 s apart, Parker AIF, SPGR signal with
Gaussian noise at baseline SNR 50) is fitted by:

- this project, signal -> concentration -> linear (Murase) fit, and -> nonlinear fit, on all voxels,
  on every core (``--workers``); the fit and the conversion are timed apart, each the best of
  ``--repeats`` runs (as ``timeit`` advises: slower runs measure the machine's other load);
- a per-voxel ``scipy.optimize.curve_fit`` loop (bounded, on concentration, with the same exact model),
  on a subsample;
- dcmri's ``TissueArray`` (kinetics 'HF', i.e. extended Tofts, fitted to signal pixel by pixel), on a
  subsample.

It prints voxels/s (the fit alone, on concentration, and signal to maps), Ktrans errors on the common
subsample, the speed ratios against the baseline in the same run (signal to maps for both), and the
peak memory of a 128x128x40 volume fit relative to its input size. Peak memory is traced in one
process (``workers=1``); each worker process adds its own block's work, a few MiB.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import warnings

import numpy as np

from kinetics.aif import plasma_aif
from kinetics.fit import fit_curves, fit_image
from kinetics.models import extended_tofts
from kinetics.signal import concentration_from_signal, signal_from_concentration

N_FRAMES, FRAME_S, BASELINE = 60, 5.0, 5
TR_S, FA_DEG, R1, T10_S, HCT, S0 = 0.004, 15.0, 4.5, 1.2, 0.42, 1000.0


def synthetic(n, rng):
    t = np.arange(N_FRAMES) * FRAME_S
    cp = plasma_aif("parker", t, hct=HCT, delay_s=25.0)
    truth = {"ktrans": rng.uniform(0.01, 0.5, n), "ve": rng.uniform(0.1, 0.6, n), "vp": rng.uniform(0.0, 0.1, n)}
    conc = extended_tofts(t, cp, truth["ktrans"], truth["ve"], truth["vp"])
    clean = signal_from_concentration(conc, t10_s=T10_S, tr_s=TR_S, fa_deg=FA_DEG, r1_per_mM_s=R1, s0=S0)
    sd = clean[:, :BASELINE].mean() / 50.0
    return t, cp, truth, (clean + rng.normal(0, sd, clean.shape)).astype(np.float32)


def to_concentration(signal):
    return concentration_from_signal(signal, t10_s=T10_S, tr_s=TR_S, fa_deg=FA_DEG, r1_per_mM_s=R1, baseline=BASELINE)


def best_time(function, repeats):
    """(result, least seconds) over ``repeats`` calls."""
    best, result = np.inf, None
    for _ in range(max(int(repeats), 1)):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return result, best


def project(conc, t, cp, method, workers, repeats):
    res, seconds = best_time(
        lambda: fit_curves(conc, t, cp, model="extended_tofts", method=method, workers=workers), repeats
    )
    return res.params["ktrans"], seconds


def curve_fit_baseline(signal, t, cp):
    from scipy.optimize import curve_fit

    start = time.perf_counter()
    conc = to_concentration(signal)
    out = np.full(conc.shape[0], np.nan)
    model = lambda tt, kt, ve, vp: extended_tofts(tt, cp, kt, ve, vp)  # noqa: E731
    for i, curve in enumerate(conc):  # the per-voxel loop this project avoids
        try:
            p, _ = curve_fit(model, t, curve, p0=(0.1, 0.3, 0.02), bounds=([0, 1e-3, 0], [5, 1, 1]))
            out[i] = p[0]
        except (RuntimeError, ValueError):
            pass
    return out, time.perf_counter() - start


def dcmri_baseline(signal, t, cp):
    import dcmri

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tissue = dcmri.TissueArray(
            (signal.shape[0],), kinetics="HF", water_exchange="FF", sequence="SS", ca=cp * 1e-3 * (1 - HCT), t=t,
            TR=TR_S, FA=FA_DEG, R10=1.0 / T10_S, r1=R1 * 1e3, H=HCT, n0=BASELINE, parallel=False, verbose=0,
        )
        tissue.train(t, signal.astype(float))
    return np.asarray(tissue.params("PS")) * 60.0, time.perf_counter() - start


def accuracy(ktrans, truth):
    from kinetics.tolerance import within_tolerance

    return float(np.nanmedian(np.abs(ktrans - truth))), float(np.mean(within_tolerance("ktrans", ktrans, truth)))


def memory_of_volume_fit(rng, workers):
    shape = (128, 128, 40)
    t = np.arange(N_FRAMES) * FRAME_S
    cp = plasma_aif("parker", t, hct=HCT, delay_s=25.0)
    n = int(np.prod(shape))
    kt, ve, vp = rng.uniform(0.01, 0.5, n), rng.uniform(0.1, 0.6, n), rng.uniform(0, 0.1, n)
    conc = np.empty((n, N_FRAMES), np.float32)
    for s in range(0, n, 65536):  # build it in pieces so that building it does not set the peak
        conc[s:s + 65536] = extended_tofts(t, cp, kt[s:s + 65536], ve[s:s + 65536], vp[s:s + 65536])
    conc += rng.normal(0, 0.02, conc.shape).astype(np.float32)
    conc = conc.reshape(shape + (N_FRAMES,))
    seconds = {}
    for method in ("llsq", "nlls"):
        start = time.perf_counter()
        fit_image(conc, t, cp, model="extended_tofts", method=method, workers=workers)
        seconds[method] = time.perf_counter() - start
    tracemalloc.start()  # a second, traced run in this process: tracing slows allocation, so it is not timed
    base = tracemalloc.get_traced_memory()[0]
    fit_image(conc, t, cp, model="extended_tofts", method="nlls", workers=1)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return conc.nbytes, peak, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="voxels fitted by the project")
    parser.add_argument("--n-baseline", type=int, default=300, help="voxels fitted by the curve_fit loop")
    parser.add_argument("--n-dcmri", type=int, default=100, help="voxels fitted by dcmri")
    parser.add_argument("--no-memory", action="store_true", help="skip the 128x128x40 volume")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="cores for the project's fits (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each of the project's steps; the best counts")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t, cp, truth, signal = synthetic(args.n, rng)
    sub = np.arange(min(args.n_baseline, args.n))
    sub_dcmri = np.arange(min(args.n_dcmri, args.n))
    conc, conversion_s = best_time(lambda: to_concentration(signal), args.repeats)
    rows = []
    for method in ("llsq", "nlls"):
        kt, seconds = project(conc, t, cp, method, args.workers, args.repeats)
        rows.append((f"ssl-rcc {method}", args.n, args.n / seconds, args.n / (seconds + conversion_s),
                     *accuracy(kt[sub], truth["ktrans"][sub]), accuracy(kt[sub_dcmri], truth["ktrans"][sub_dcmri])[0]))
    kt, seconds = curve_fit_baseline(signal[sub], t, cp)
    baseline_rate = sub.size / seconds
    rows.append(("curve_fit loop", sub.size, np.nan, baseline_rate, *accuracy(kt, truth["ktrans"][sub]),
                 accuracy(kt[sub_dcmri], truth["ktrans"][sub_dcmri])[0]))
    try:
        kt, seconds = dcmri_baseline(signal[sub_dcmri], t, cp)
        rows.append(("dcmri TissueArray", sub_dcmri.size, np.nan, sub_dcmri.size / seconds, np.nan, np.nan,
                     accuracy(kt, truth["ktrans"][sub_dcmri])[0]))
    except ImportError:
        print("dcmri is not installed (pip install -e .[dev]); skipped")
    print(f"\nExtended Tofts, {N_FRAMES} frames, SNR 50; Ktrans errors in /min on the first {sub.size} voxels "
          f"(last column: first {sub_dcmri.size}, the dcmri subsample)\n")
    print(f"signal -> concentration: {args.n / conversion_s:,.0f} voxels/s ({conversion_s:.3f} s)\n")
    print("| fitter | voxels | fit voxels/s | signal -> maps voxels/s | x curve_fit | median abs err Ktrans "
          "| within OSIPI tol | median err (dcmri subsample) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n, fit_rate, rate, err, within, err_small in rows:
        within_text = "-" if np.isnan(within) else f"{100 * within:.1f}%"
        err_text = "-" if np.isnan(err) else f"{err:.4f}"
        fit_text = "-" if np.isnan(fit_rate) else f"{fit_rate:,.0f}"
        print(f"| {name} | {n} | {fit_text} | {rate:,.0f} | {rate / baseline_rate:,.0f} | {err_text} | {within_text} "
              f"| {err_small:.4f} |")
    if not args.no_memory:
        nbytes, peak, seconds = memory_of_volume_fit(rng, args.workers)
        n_volume = 128 * 128 * 40
        print(f"\n128x128x40 volume, 60 frames (float32 concentration, {nbytes / 2**20:.0f} MiB): linear fit in "
              f"{seconds['llsq']:.2f} s ({n_volume / seconds['llsq']:,.0f} voxels/s), nonlinear in {seconds['nlls']:.2f} s "
              f"({n_volume / seconds['nlls']:,.0f} voxels/s); peak memory of the nonlinear fit "
              f"{(nbytes + peak) / 2**20:.0f} MiB = input + {peak / 2**20:.0f} MiB of work = {(nbytes + peak) / nbytes:.2f} x the input")


if __name__ == "__main__":
    main()
