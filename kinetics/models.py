"""Tracer-kinetic forward models: tissue concentration (mM) from a plasma input, vectorised over voxels.

Every model takes ``t_s`` (n_times,) in seconds, the plasma concentration ``cp_mM`` as (n_times,) or
(n_voxels, n_times) and its parameters as scalars or (n_voxels,) arrays in the units of the literature
(Ktrans and PS in /min, Fp and FT in mL/100mL/min, volumes as fractions, Tt in s); it returns the tissue
concentration, (n_voxels, n_times) in mM. Units are converted once, here, to seconds.
The input is taken as linear between samples and convolved exactly (see :mod:`kinetics.convolution`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .convolution import cumulative_integral, exp_conv, exp_conv_and_derivative

__all__ = [
    "SECONDS_PER_MINUTE",
    "tofts",
    "extended_tofts",
    "patlak",
    "two_compartment_exchange",
    "two_compartment_uptake",
    "two_compartment_filtration",
    "tofts_jacobian",
    "extended_tofts_jacobian",
    "patlak_jacobian",
]

SECONDS_PER_MINUTE = 60.0
_PER_100ML_MIN = 100.0 * SECONDS_PER_MINUTE  # mL/100mL/min -> /s


def _col(x):
    """Per-voxel parameter (scalar or (n,)) as a column that broadcasts against (n, n_times)."""
    return np.asarray(x, dtype=float)[..., None]


def _vec(x):
    return np.asarray(x, dtype=float)


def tofts(t_s: ArrayLike, cp_mM: ArrayLike, ktrans_per_min: ArrayLike, ve: ArrayLike) -> np.ndarray:
    """Standard Tofts model: ``C = Ktrans * (cp conv exp(-kep t))``, ``kep = Ktrans/ve``.

    References
    ----------
    Tofts et al. J Magn Reson Imaging 1999;10:223. doi:10.1002/(SICI)1522-2586(199909)10:3<223::AID-JMRI2>3.0.CO;2-S
    """
    ktrans = _vec(ktrans_per_min) / SECONDS_PER_MINUTE
    with np.errstate(divide="ignore", invalid="ignore"):
        kep = ktrans / _vec(ve)
    return _col(ktrans) * exp_conv(t_s, cp_mM, kep)


def extended_tofts(
    t_s: ArrayLike, cp_mM: ArrayLike, ktrans_per_min: ArrayLike, ve: ArrayLike, vp: ArrayLike
) -> np.ndarray:
    """Extended Tofts model: ``C = vp cp + Ktrans * (cp conv exp(-kep t))``."""
    return _col(vp) * np.asarray(cp_mM, dtype=float) + tofts(t_s, cp_mM, ktrans_per_min, ve)


def patlak(t_s: ArrayLike, cp_mM: ArrayLike, ktrans_per_min: ArrayLike, vp: ArrayLike) -> np.ndarray:
    """Patlak model (irreversible uptake): ``C = vp cp + Ktrans * integral(cp)``.

    References
    ----------
    Patlak, Blasberg, Fenstermacher. J Cereb Blood Flow Metab 1983;3:1. doi:10.1038/jcbfm.1983.1
    """
    cp = np.asarray(cp_mM, dtype=float)
    ktrans = _col(ktrans_per_min) / SECONDS_PER_MINUTE
    return _col(vp) * cp + ktrans * cumulative_integral(t_s, cp)


def two_compartment_exchange(
    t_s: ArrayLike, cp_mM: ArrayLike, fp_ml_100ml_min: ArrayLike, ps_per_min: ArrayLike, ve: ArrayLike, vp: ArrayLike
) -> np.ndarray:
    """Two-compartment exchange model (2CXM), bi-exponential impulse response.

    ``C = Fp [ (1 - E-) cp conv exp(-K+ t) + E- cp conv exp(-K- t) ]`` with
    ``K± = (1/Tp + 1/Te ± sqrt((1/Tp + 1/Te)^2 - 4/(Te Tb))) / 2``, ``Tp = vp/(Fp+PS)``,
    ``Te = ve/PS``, ``Tb = vp/Fp`` and ``E- = (K+ - 1/Tb)/(K+ - K-)``.

    References
    ----------
    Sourbron, Buckley. NMR Biomed 2013;26:1004. doi:10.1002/nbm.2940
    """
    fp = _vec(fp_ml_100ml_min) / _PER_100ML_MIN
    ps = _vec(ps_per_min) / SECONDS_PER_MINUTE
    ve, vp = _vec(ve), _vec(vp)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (fp + ps) / vp + ps / ve  # 1/Tp + 1/Te
        b = fp * ps / (vp * ve)  # 1/(Tb Te)
        root = np.sqrt(np.maximum(a * a - 4.0 * b, 0.0))
        k_pos = 0.5 * (a + root)
        k_neg = b / k_pos  # = (a - root)/2 without cancellation
        e_neg = np.where(root > 0, (k_pos - fp / vp) / root, 0.5)
    return _col(fp) * (
        _col(1.0 - e_neg) * exp_conv(t_s, cp_mM, k_pos) + _col(e_neg) * exp_conv(t_s, cp_mM, k_neg)
    )


def two_compartment_uptake(
    t_s: ArrayLike, cp_mM: ArrayLike, fp_ml_100ml_min: ArrayLike, ps_per_min: ArrayLike, vp: ArrayLike
) -> np.ndarray:
    """Two-compartment uptake model (2CUM): 2CXM without back-flux from the interstitium.

    ``C = Fp (1 - E) cp conv exp(-t/Tp) + Fp E integral(cp)``, ``E = PS/(Fp+PS)``, ``Tp = vp/(Fp+PS)``.

    References
    ----------
    Sourbron, Buckley. NMR Biomed 2013;26:1004. doi:10.1002/nbm.2940
    """
    fp = _vec(fp_ml_100ml_min) / _PER_100ML_MIN
    ps = _vec(ps_per_min) / SECONDS_PER_MINUTE
    with np.errstate(divide="ignore", invalid="ignore"):
        e = ps / (fp + ps)
        rate = (fp + ps) / _vec(vp)
    return _col(fp * (1.0 - e)) * exp_conv(t_s, cp_mM, rate) + _col(fp * e) * cumulative_integral(
        t_s, cp_mM
    )


def two_compartment_filtration(
    t_s: ArrayLike,
    cp_mM: ArrayLike,
    fp_ml_100ml_min: ArrayLike,
    vp: ArrayLike,
    ft_ml_100ml_min: ArrayLike,
    tt_s: ArrayLike,
) -> np.ndarray:
    """Two-compartment filtration model (2CFM) of the kidney.

    Plasma (volume ``vp``, flow ``Fp``, mean transit time ``Tp = vp/Fp``) filters at ``FT`` into a
    tubular compartment that drains with mean transit time ``Tt``, without back-flux:
    ``C = Fp cp conv exp(-t/Tp) + FT (Fp/vp) (cp conv exp(-t/Tp)) conv exp(-t/Tt)``.
    The second convolution treats the plasma curve as linear between samples.

    References
    ----------
    Sourbron et al. Invest Radiol 2008;43:40. doi:10.1097/RLI.0b013e31815597c5
    """
    fp = _vec(fp_ml_100ml_min) / _PER_100ML_MIN
    ft = _vec(ft_ml_100ml_min) / _PER_100ML_MIN
    with np.errstate(divide="ignore", invalid="ignore"):
        plasma_rate = fp / _vec(vp)
        tubular_rate = 1.0 / _vec(tt_s)
    plasma = _col(fp) * exp_conv(t_s, cp_mM, plasma_rate)  # vp * plasma concentration
    with np.errstate(divide="ignore", invalid="ignore"):
        tubules = _col(ft / _vec(vp)) * exp_conv(t_s, plasma, tubular_rate)
    return plasma + tubules


def tofts_jacobian(
    t_s: ArrayLike, cp_mM: ArrayLike, ktrans_per_min: ArrayLike, ve: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tofts` and its Jacobian (n_voxels, n_times, 2) with respect to (ktrans, ve), exactly.

    The Jacobian columns are in mM per /min and mM per unit ve; used by the nonlinear fit.
    """
    ktrans = _vec(ktrans_per_min) / SECONDS_PER_MINUTE
    ve = _vec(ve)
    with np.errstate(divide="ignore", invalid="ignore"):
        kep = ktrans / ve
    y, dy = exp_conv_and_derivative(t_s, cp_mM, kep)
    f = _col(ktrans) * y
    # f = K y(K/ve): df/dK = y + K y' / ve ; df/dve = -K y' K / ve^2 ; K per s -> per min
    d_ktrans = (y + _col(kep) * dy) / SECONDS_PER_MINUTE
    d_ve = -_col(ktrans * kep / ve) * dy
    return f, np.stack([d_ktrans, d_ve], axis=-1)


def extended_tofts_jacobian(
    t_s: ArrayLike, cp_mM: ArrayLike, ktrans_per_min: ArrayLike, ve: ArrayLike, vp: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`extended_tofts` and its Jacobian (n_voxels, n_times, 3) w.r.t. (ktrans, ve, vp)."""
    cp = np.asarray(cp_mM, dtype=float)
    f, jac = tofts_jacobian(t_s, cp, ktrans_per_min, ve)
    d_vp = np.broadcast_to(cp, f.shape)
    return f + _col(vp) * cp, np.concatenate([jac, d_vp[..., None]], axis=-1)


def patlak_jacobian(
    t_s: ArrayLike, cp_mM: ArrayLike, ktrans_per_min: ArrayLike, vp: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`patlak` and its Jacobian (n_voxels, n_times, 2) w.r.t. (ktrans, vp)."""
    cp = np.asarray(cp_mM, dtype=float)
    f = patlak(t_s, cp, ktrans_per_min, vp)
    d_ktrans = np.broadcast_to(cumulative_integral(t_s, cp) / SECONDS_PER_MINUTE, f.shape)
    return f, np.stack([d_ktrans, np.broadcast_to(cp, f.shape)], axis=-1)
