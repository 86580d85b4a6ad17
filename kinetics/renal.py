"""Single-kidney function from a kidney ROI curve: GFR and renal plasma flow (mL/min).

Kidney function decides between partial and radical nephrectomy; DCE-MRI gives it per kidney.
The two-compartment filtration model (2CFM) gives plasma flow Fp and tubular flow FT per unit tissue;
the Patlak-Rutland plot gives FT from the early uptake alone. Either, times the kidney volume, is an
absolute single-kidney flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .aif import bolus_arrival_time
from .errors import KineticsInputError
from .convolution import cumulative_integral
from .linear import solve_linear
from .models import SECONDS_PER_MINUTE

__all__ = ["patlak_rutland", "PatlakRutland", "PATLAK_RUTLAND_FORMS", "single_kidney_function"]


class PatlakRutland(NamedTuple):
    """``ft`` (mL/100mL/min), ``vp``, both (n_rois,); ``window_s`` (start, end) of the frames used;
    ``form`` ("plot" or "time")."""

    ft: np.ndarray
    vp: np.ndarray
    window_s: tuple
    form: str = "plot"


PATLAK_RUTLAND_FORMS = ("plot", "time")


def patlak_rutland(
    t_s: ArrayLike,
    kidney_mM: ArrayLike,
    cp_mM: ArrayLike,
    *,
    form: str = "plot",
    window_s: Sequence[float] | None = None,
    uptake_s: float = 90.0,
) -> PatlakRutland:
    """Filtration rate FT from the early, pre-excretion uptake: ``C(t) = vp cp(t) + FT integral(cp)``,
    which holds until filtered tracer leaves the nephron.

    Parameters
    ----------
    t_s : (n_times,) ndarray, s
    kidney_mM : (n_rois, n_times) ndarray, mM
        Mean concentration of each kidney ROI (cortex or whole parenchyma).
    cp_mM : (n_times,) ndarray, mM
        Plasma AIF.
    form : {"plot", "time"}
        - ``"plot"`` (default): the Patlak-Rutland plot, ``C/cp`` against ``integral(cp)/cp``, a straight
          line of slope FT and intercept vp, fitted by least squares over the window. Dividing by cp
          weighs every frame by the inverse of the input, which keeps the early frames (highest cp,
          most vascular signal) from dominating: the form of the renography literature.
        - ``"time"``: the same relation fitted in the time domain (``C`` against ``cp`` and
          ``integral(cp)``), whose errors are those of the concentrations.
    window_s : None or (float, float), s
        Frames used. None: for the plot, from the AIF's peak (before it, ``cp`` is small and the
        ratios are noise) to ``uptake_s`` after the bolus arrival; for the time form, from the arrival
        to ``uptake_s`` after it.
    uptake_s : float, s
        Length of the uptake phase after the bolus arrival (tubular transit: 90-120 s in adults).

    References
    ----------
    Rutland. Phys Med Biol 1979;24:1150 (the plot). Rutland, Que. Nucl Med Commun 1985;6:11.
    Hackstein et al. J Magn Reson Imaging 2003;18:714 (MR renography). Annet et al. J Magn Reson
    Imaging 2004;20:843 (Patlak-Rutland against a two-compartment model).
    """
    if form not in PATLAK_RUTLAND_FORMS:
        raise KineticsInputError(f"form: unknown Patlak-Rutland form {form!r}; expected one of {list(PATLAK_RUTLAND_FORMS)}.")
    t = np.asarray(t_s, dtype=float)
    cp = np.asarray(cp_mM, float)
    kidney = np.atleast_2d(np.asarray(kidney_mM, float))
    if window_s is None:
        arrival = float(bolus_arrival_time(cp, t))
        start = float(t[int(np.argmax(cp))]) if form == "plot" else arrival
        window_s = (start, max(start, arrival + float(uptake_s)))
    else:
        window_s = tuple(float(w) for w in window_s)
        if len(window_s) != 2 or not window_s[0] < window_s[1]:
            raise KineticsInputError(f"window_s: {window_s} is not a (start, end) pair in seconds with start < end.")
    use = (t >= window_s[0]) & (t <= window_s[1])
    if form == "plot":
        use &= cp > 0
    if use.sum() < 3:
        raise KineticsInputError(f"window_s: {int(use.sum())} frames in {window_s} s; the Patlak-Rutland fit needs 3 "
                                 "(give a wider --window-s, or check the AIF's times).")
    int_cp = cumulative_integral(t, cp)  # from the first frame; only the window enters the regression
    if form == "plot":
        x = int_cp[use] / cp[use]
        y = kidney[:, use] / cp[use]
        coef, _ = solve_linear([x, np.ones_like(x)], y)
    else:
        coef, _ = solve_linear([int_cp[use], cp[use]], kidney[:, use])
    ft_per_min = coef[:, 0] * SECONDS_PER_MINUTE  # mL/min per mL of tissue
    return PatlakRutland(ft_per_min * 100.0, coef[:, 1], tuple(window_s), form)


def single_kidney_function(
    *,
    volume_ml: ArrayLike,
    ft_ml_100ml_min: ArrayLike | None = None,
    fp_ml_100ml_min: ArrayLike | None = None,
    hct: float = 0.42,
) -> dict[str, np.ndarray | float]:
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
