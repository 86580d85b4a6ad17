"""Single-kidney function from a kidney ROI curve: GFR and renal plasma flow (mL/min).

Kidney function decides between partial and radical nephrectomy; DCE-MRI gives it per kidney.
The two-compartment filtration model (2CFM) gives plasma flow Fp and tubular flow FT per unit tissue;
the Patlak-Rutland plot gives FT from the early uptake alone. Either, times the kidney volume, is an
absolute single-kidney flow.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .aif import bolus_arrival_time
from .errors import KineticsInputError
from .convolution import cumulative_integral
from .linear import solve_linear
from .models import SECONDS_PER_MINUTE

__all__ = ["patlak_rutland", "PatlakRutland", "single_kidney_function"]


class PatlakRutland(NamedTuple):
    """``ft`` (mL/100mL/min), ``vp``, both (n_rois,); ``window_s`` (start, end) of the frames used."""

    ft: np.ndarray
    vp: np.ndarray
    window_s: tuple


def patlak_rutland(t_s, kidney_mM, cp_mM, *, window_s=None, uptake_s=90.0):
    """Filtration rate FT by the Patlak-Rutland plot over the early, pre-excretion uptake.

    ``C(t) = vp cp(t) + FT integral(cp)`` holds until filtered tracer leaves the nephron, so the fit
    uses frames from the arterial bolus arrival to ``uptake_s`` later.

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
    kidney_mM : (n_rois, n_times) ndarray, mM
        Mean concentration of each kidney ROI (cortex or whole parenchyma).
    cp_mM : (n_times,) ndarray, mM
        Plasma AIF.
    window_s : None or (float, float), s
        Frames used; None means from the AIF's bolus arrival to ``uptake_s`` after it.

    References
    ----------
    Rutland. Phys Med Biol 1979;24:1150. Hackstein et al. J Magn Reson Imaging 2003;18:714.
    """
    t = np.asarray(t_s, dtype=float)
    if window_s is None:
        start = float(bolus_arrival_time(np.asarray(cp_mM, float), t))
        window_s = (start, start + float(uptake_s))
    use = (t >= window_s[0]) & (t <= window_s[1])
    if use.sum() < 3:
        raise KineticsInputError(f"window_s: {int(use.sum())} frames in {window_s} s; the Patlak-Rutland fit needs 3.")
    cp = np.asarray(cp_mM, float)
    # the integral runs from the first frame; only the frames in the window enter the regression
    coef, _ = solve_linear([cumulative_integral(t, cp)[use], cp[use]], np.atleast_2d(np.asarray(kidney_mM, float))[:, use])
    ft_per_min = coef[:, 0] * SECONDS_PER_MINUTE  # mL/min per mL of tissue
    return PatlakRutland(ft_per_min * 100.0, coef[:, 1], tuple(window_s))


def single_kidney_function(*, volume_ml, ft_ml_100ml_min=None, fp_ml_100ml_min=None, hct=0.42):
    """Single-kidney GFR, renal plasma and blood flow (mL/min) from per-tissue flows and volume.

    Parameters
    ----------
    volume_ml : float or ndarray, mL
        Kidney (parenchyma) volume, as from the kidney mask.
    ft_ml_100ml_min, fp_ml_100ml_min : float or ndarray, mL/100mL/min
        Tubular (filtration) flow and plasma flow per 100 mL of tissue.

    Returns
    -------
    dict with ``gfr_ml_min``, ``rpf_ml_min``, ``rbf_ml_min`` (those that can be computed).
    """
    v = np.asarray(volume_ml, dtype=float)
    if np.any(~(v > 0)):
        raise KineticsInputError(f"volume_ml: kidney volume {volume_ml!r} mL must be positive.")
    if not 0.0 <= hct < 1.0:
        raise KineticsInputError(f"hct: haematocrit {hct!r} is outside [0, 1).")
    out = {}
    if ft_ml_100ml_min is not None:
        out["gfr_ml_min"] = np.asarray(ft_ml_100ml_min, float) / 100.0 * v
    if fp_ml_100ml_min is not None:
        out["rpf_ml_min"] = np.asarray(fp_ml_100ml_min, float) / 100.0 * v
        out["rbf_ml_min"] = out["rpf_ml_min"] / (1.0 - hct)
    return out
