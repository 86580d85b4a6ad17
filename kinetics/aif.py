"""Arterial input functions: population models, measured curves, automatic detection, bolus arrival.

Population AIFs give whole-blood concentration (mM) as published; :func:`plasma_aif` divides by
``1 - hct`` to give the plasma concentration the kinetic models take. Times are seconds throughout.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import gammaln

from .errors import KineticsInputError
from .models import SECONDS_PER_MINUTE

__all__ = [
    "parker_aif",
    "georgiou_aif",
    "weinmann_aif",
    "mcgrath_aif",
    "POPULATION_AIFS",
    "plasma_aif",
    "read_aif_csv",
    "write_aif_csv",
    "aif_from_mask",
    "detect_aif",
    "AifDetection",
    "bolus_arrival_time",
]


def _delayed_minutes(t_s, delay_s):
    t = np.asarray(t_s, dtype=float) - float(delay_s)
    return t / SECONDS_PER_MINUTE, t < 0


def parker_aif(t_s: ArrayLike, *, delay_s: float = 0.0) -> np.ndarray:
    """Parker population AIF, whole blood (mM), delayed by ``delay_s`` and zero before it.

    Two Gaussians and a sigmoid-modulated exponential with the published mean parameters.

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
    delay_s : float, s
        The curve is ``Cb(t - delay)`` for ``t >= delay`` and 0 before.

    References
    ----------
    Parker et al. Magn Reson Med 2006;56:993. doi:10.1002/mrm.21066
    """
    tm, before = _delayed_minutes(t_s, delay_s)
    a1, s1, t1, a2, s2, t2 = 0.809, 0.0563, 0.17046, 0.330, 0.132, 0.365
    alpha, beta, s, tau = 1.050, 0.1685, 38.078, 0.483
    cb = (
        a1 / (s1 * np.sqrt(2 * np.pi)) * np.exp(-((tm - t1) ** 2) / (2 * s1**2))
        + a2 / (s2 * np.sqrt(2 * np.pi)) * np.exp(-((tm - t2) ** 2) / (2 * s2**2))
        + alpha * np.exp(-beta * tm) / (1 + np.exp(-s * (tm - tau)))
    )
    return np.where(before, 0.0, cb)


# Georgiou et al. give A1..tau in their Table 3 rounded to 2-3 digits; rounded, the formula departs from
# their published curve (supplementary S2) by up to 3%. These values, refitted to that curve by least
# squares, reproduce it within 3e-5 mM.
_GEORGIOU = dict(
    a=(0.374322, 0.331184, 10.061226), m=(0.112701, 1.174646, 16.019962),
    alpha=5.266989, beta=0.0320788, tau=0.128556,
)


def georgiou_aif(t_s: ArrayLike, *, delay_s: float = 0.0) -> np.ndarray:
    """Georgiou population AIF, whole blood (mM): a train of gamma variates (one per circulation)
    modulated by a sum of three exponentials.

    ``Cb = sum_i A_i exp(-m_i t) * sum_k gamma(t - k tau; (k+1) alpha + k, beta)``, t in minutes.

    References
    ----------
    Georgiou et al. Magn Reson Med 2019;81:1955. doi:10.1002/mrm.27524
    """
    tm, before = _delayed_minutes(t_s, delay_s)
    g = _GEORGIOU
    beta, tau, alpha = g["beta"], g["tau"], g["alpha"]
    train = np.zeros_like(tm)
    for k in range(int(max(np.max(tm), 0.0) // tau) + 2):  # loop over circulations, not samples
        order = (k + 1) * alpha + k
        x = tm - k * tau
        pos = x > 0
        xs = np.where(pos, x, 1.0)
        train += np.where(
            pos, np.exp(order * np.log(xs) - xs / beta - (order + 1) * np.log(beta) - gammaln(order + 1)), 0.0
        )
    envelope = sum(a * np.exp(-m * tm) for a, m in zip(g["a"], g["m"]))
    return np.where(before, 0.0, envelope * train)


def weinmann_aif(t_s: ArrayLike, *, delay_s: float = 0.0, dose_mmol_per_kg: float = 0.1) -> np.ndarray:
    """Weinmann bi-exponential AIF, plasma (mM), zero before the injection at ``delay_s``.

    ``Cp = D (a1 exp(-m1 t) + a2 exp(-m2 t))``, a = 3.99, 4.78 kg/L, m = 0.144, 0.0111 /min.

    References
    ----------
    Tofts, Kermode. Magn Reson Med 1991;17:357. doi:10.1002/mrm.1910170208
    """
    tm, before = _delayed_minutes(t_s, delay_s)
    cp = dose_mmol_per_kg * (3.99 * np.exp(-0.144 * tm) + 4.78 * np.exp(-0.0111 * tm))
    return np.where(before, 0.0, cp)


def mcgrath_aif(t_s: ArrayLike, *, delay_s: float = 0.0) -> np.ndarray:
    """McGrath preclinical (rodent) AIF, model B, whole blood (mM): linear rise over 7 s, then
    bi-exponential decay.

    References
    ----------
    McGrath et al. Magn Reson Med 2009;61:1173. doi:10.1002/mrm.21959
    """
    t = np.asarray(t_s, dtype=float) - float(delay_s)
    a1, a2, k1, k2, t1 = 3.4, 1.81, 0.045, 0.0015, 7.0
    cb = np.where(t <= t1, (a1 + a2) * t / t1, a1 * np.exp(-k1 * (t - t1)) + a2 * np.exp(-k2 * (t - t1)))
    return np.where(t < 0, 0.0, cb)


POPULATION_AIFS = {"parker": parker_aif, "georgiou": georgiou_aif, "weinmann": weinmann_aif, "mcgrath": mcgrath_aif}
_ALREADY_PLASMA = {"weinmann"}


def plasma_aif(name: str, t_s: ArrayLike, *, hct: float = 0.42, delay_s: float = 0.0) -> np.ndarray:
    """Plasma concentration (mM) of the population AIF ``name`` on times ``t_s`` (s).

    Blood curves are divided by ``1 - hct``; Weinmann's is already plasma.

    Parameters
    ----------
    name : {"parker", "georgiou", "weinmann", "mcgrath"}
    t_s : (n_times,) ndarray, s
    hct : float
        Haematocrit, in [0, 1).
    delay_s : float, s
        Time of the bolus start relative to ``t_s``: the curve is zero before it.
    """
    if name not in POPULATION_AIFS:
        raise KineticsInputError(f"aif: unknown population AIF {name!r}; expected one of {sorted(POPULATION_AIFS)}.")
    if not 0.0 <= float(hct) < 1.0:
        raise KineticsInputError(f"hct: haematocrit {hct!r} is outside [0, 1).")
    curve = POPULATION_AIFS[name](t_s, delay_s=delay_s)
    return curve if name in _ALREADY_PLASMA else curve / (1.0 - float(hct))


def read_aif_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a measured AIF: a CSV with header ``time_s,cp_mM`` (plasma). Returns (t_s, cp_mM)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise KineticsInputError(f"{path}: cannot read the AIF file ({err.strerror}).") from None
    if not rows or not {"time_s", "cp_mM"} <= set(rows[0]):
        raise KineticsInputError(f"{path}: an AIF file needs a header 'time_s,cp_mM' and at least one row.")
    try:
        t = np.array([float(r["time_s"]) for r in rows])
        cp = np.array([float(r["cp_mM"]) for r in rows])
    except (TypeError, ValueError):
        raise KineticsInputError(f"{path}: the AIF file has a value that is not a number.") from None
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(cp))):
        raise KineticsInputError(f"{path}: the AIF file has values that are not finite.")
    if np.any(np.diff(t) <= 0):
        raise KineticsInputError(f"{path}: the AIF times must increase.")
    return t, cp


def write_aif_csv(path: str | os.PathLike, t_s: ArrayLike, cp_mM: ArrayLike) -> None:
    """Write an AIF as CSV with header ``time_s,cp_mM``."""
    with open(path, "w", newline="") as fh:
        fh.write("time_s,cp_mM\n")
        for t, c in zip(np.asarray(t_s, float), np.asarray(cp_mM, float)):
            fh.write(f"{t:.6g},{c:.8g}\n")


def aif_from_mask(conc_mM: ArrayLike, mask: ArrayLike) -> np.ndarray:
    """Mean concentration curve (mM) over the voxels of ``mask`` in a (x, y, z, t) series."""
    conc = np.asarray(conc_mM)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != conc.shape[:-1]:
        raise KineticsInputError(f"aif mask: shape {mask.shape} does not match the series' {conc.shape[:-1]}.")
    if not mask.any():
        raise KineticsInputError("aif mask: the mask selects no voxel.")
    curves = conc[mask].astype(float)
    return np.nanmean(curves, axis=0)


class AifDetection(NamedTuple):
    """Automatic AIF: ``curve`` (n_times,) mM, the mean of the chosen voxels; ``voxels`` (n, ndim)
    integer indices of those voxels; ``score`` (n,) their ranking score (higher is more arterial)."""

    curve: np.ndarray
    voxels: np.ndarray
    score: np.ndarray


def detect_aif(
    conc_mM: ArrayLike,
    t_s: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    n_voxels: int = 20,
    candidate_fraction: float = 0.05,
) -> AifDetection:
    """Find arterial voxels in a concentration series: early, high, narrow first-pass peaks.

    Among voxels in the top ``candidate_fraction`` by peak concentration, each is scored by
    ``peak / (time to peak after the earliest candidate arrival + first-pass width)`` and the
    ``n_voxels`` best are averaged. The chosen voxels are returned so they can be inspected.

    Parameters
    ----------
    conc_mM : (..., n_times) ndarray, mM
    t_s : (n_times,) ndarray, s
    mask : None or (...) bool ndarray
        Where to search (for example, a box around the aorta); None searches everywhere.
    """
    conc = np.asarray(conc_mM, dtype=float)
    t = np.asarray(t_s, dtype=float)
    spatial = conc.shape[:-1]
    search = np.ones(spatial, bool) if mask is None else np.asarray(mask, bool)
    search = search & np.all(np.isfinite(conc), axis=-1)
    index = np.flatnonzero(search.reshape(-1))
    if index.size < n_voxels:
        raise KineticsInputError(f"aif: only {index.size} finite voxels to search, {n_voxels} needed.")
    curves = conc.reshape(-1, t.size)[index]
    peak = curves.max(-1)
    n_cand = max(n_voxels, int(np.ceil(candidate_fraction * index.size)))
    cand = np.argsort(peak)[-n_cand:]
    c = curves[cand]
    ttp = t[np.argmax(c, axis=-1)]
    half = c >= 0.5 * c.max(-1, keepdims=True)
    width = np.maximum(half.sum(-1), 1) * np.median(np.diff(t))
    score = c.max(-1) / (ttp - ttp.min() + width)
    best = np.argsort(score)[::-1][:n_voxels]
    chosen = index[cand[best]]
    voxels = np.stack(np.unravel_index(chosen, spatial), axis=-1)
    return AifDetection(curves[cand[best]].mean(0), voxels, score[best])


def bolus_arrival_time(curves: ArrayLike, t_s: ArrayLike) -> np.ndarray:
    """Bolus arrival time (s) of each curve by a piecewise linear-quadratic fit.

    The curve is taken as constant up to the arrival time and quadratic after it (over the rise to
    the peak); the break point with the least squared error is chosen among the frame times, for all
    curves at once.

    Parameters
    ----------
    curves : (..., n_times) ndarray
    t_s : (n_times,) ndarray, s

    References
    ----------
    Cheong et al. Phys Med Biol 2003;48:N83. doi:10.1088/0031-9155/48/5/403
    """
    y = np.asarray(curves, dtype=float)
    t = np.asarray(t_s, dtype=float)
    lead = y.shape[:-1]
    y = y.reshape(-1, t.size)
    peak = np.argmax(y, axis=-1)
    frame = np.arange(t.size)
    sse = np.full((y.shape[0], t.size), np.inf)
    for b in range(1, t.size - 1):  # candidate break frames; each evaluated for all curves at once
        base = y[:, :b].mean(-1, keepdims=True)
        sse_before = ((y[:, :b] - base) ** 2).sum(-1)
        # quadratic from the break point to the peak: y = base + q (t - t_b)^2, q by least squares
        after = (frame >= b)[None, :] & (frame[None, :] <= peak[:, None])
        d2 = np.where(after, (t - t[b]) ** 2, 0.0)
        resid = np.where(after, y - base, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            q = (d2 * resid).sum(-1) / (d2 * d2).sum(-1)
        sse_after = np.where(after, (resid - q[:, None] * d2) ** 2, 0.0).sum(-1)
        sse[:, b] = np.where((peak > b) & (q > 0), sse_before + sse_after, np.inf)
    best = np.argmin(sse, axis=-1)
    bat = np.where(np.isfinite(sse[np.arange(y.shape[0]), best]), t[best], np.nan)
    return bat.reshape(lead)
