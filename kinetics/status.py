"""Why each voxel has the estimate it has: the ``fit_status`` codes of a kinetic fit.

Every voxel of a fit gets one code (``fit_status.nii.gz``, a column of ``fit-roi``, counted in
``fit.json``), so a map with holes says why each hole is there. ``ok`` and ``at_bound`` voxels carry
estimates (an ``at_bound`` voxel's parameter on its bound, the others fitted); every other code has
NaN parameters.

>>> import numpy as np
>>> from kinetics.status import FIT_STATUS, status_counts
>>> FIT_STATUS[1]
'ok'
>>> status_counts(np.array([1, 1, 2, 6]))
{'ok': 2, 'at_bound': 1, 'not_enhancing': 1}
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["FIT_STATUS", "STATUS_CODE", "OUTSIDE", "OK", "AT_BOUND", "INPUT_NOT_FINITE", "T10_MISSING",
           "ABOVE_SIGNAL_MAXIMUM", "NOT_ENHANCING", "NOT_CONVERGED", "ESTIMATE_NOT_FINITE", "IMPLAUSIBLE", "has_estimate",
           "status_counts", "conversion_status"]

OUTSIDE = 0  # not asked for (outside the mask)
OK = 1
AT_BOUND = 2  # a parameter ended on a bound of the model (kept there; which one: see ``at_bound`` counts)
INPUT_NOT_FINITE = 3  # a frame of the curve is NaN or infinite
T10_MISSING = 4  # the T10 map has no value here (signal input)
ABOVE_SIGNAL_MAXIMUM = 5  # a frame's signal is above the SPGR maximum for this T10, TR and flip angle
NOT_ENHANCING = 6  # flat, or its mean after the AIF peak is not significantly above zero
NOT_CONVERGED = 7  # the nonlinear fit reached its iteration cap, or the linear system was singular
ESTIMATE_NOT_FINITE = 8  # the fit ended on a non-finite or unphysical value
IMPLAUSIBLE = 9  # the estimates break a physical constraint of the model (2CFM: filtration FT above plasma flow Fp)

FIT_STATUS = {OUTSIDE: "outside_mask", OK: "ok", AT_BOUND: "at_bound", INPUT_NOT_FINITE: "input_not_finite",
              T10_MISSING: "t10_missing", ABOVE_SIGNAL_MAXIMUM: "above_signal_maximum",
              NOT_ENHANCING: "not_enhancing", NOT_CONVERGED: "not_converged",
              ESTIMATE_NOT_FINITE: "estimate_not_finite", IMPLAUSIBLE: "implausible"}
STATUS_CODE = {name: code for code, name in FIT_STATUS.items()}


def has_estimate(status) -> np.ndarray:
    """True where ``status`` is ``ok`` or ``at_bound``: the voxels whose parameters are numbers."""
    status = np.asarray(status)
    return (status == OK) | (status == AT_BOUND)


def status_counts(status, *, skip_outside: bool = True) -> dict:
    """``{name: count}`` of the codes present in ``status``, in code order (``outside_mask`` left out
    unless ``skip_outside`` is False)."""
    codes, counts = np.unique(np.asarray(status, dtype=np.int64), return_counts=True)
    return {FIT_STATUS.get(int(c), f"code_{int(c)}"): int(n) for c, n in zip(codes, counts)
            if not (skip_outside and c == OUTSIDE)}


def conversion_status(signal: ArrayLike, conc: ArrayLike, t10_s: ArrayLike) -> np.ndarray:
    """Per voxel, :mod:`kinetics.status` code of why its concentration curve is not finite where its
    signal is: ``t10_missing`` or ``above_signal_maximum`` (a frame above the SPGR maximum for the
    voxel's T10, TR and flip angle: saturation, inflow, or a T10 or flip angle that is wrong); else 0.

    ``signal`` (..., n_times) a.u. and ``conc`` (..., n_times) mM, the concentration converted from it;
    ``t10_s`` (s), a number or (...). Returns a (...) uint8 array."""
    finite_signal = np.isfinite(signal).all(axis=-1)
    finite_conc = np.isfinite(conc).all(axis=-1)
    with np.errstate(invalid="ignore"):
        positive = np.min(signal, axis=-1) > 0  # background at zero has no S0 to be above: not this reason
    t10 = np.broadcast_to(np.asarray(t10_s, dtype=float), finite_signal.shape)
    out = np.zeros(finite_signal.shape, np.uint8)
    out[finite_signal & positive & ~finite_conc] = ABOVE_SIGNAL_MAXIMUM
    out[~(t10 > 0)] = T10_MISSING
    return out
