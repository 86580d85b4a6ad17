"""The OSIPI DCE-MRI community tolerances, by which maps are judged against a reference.

From the OSIPI DCE-DSC-MRI code collection's test suite (github.com/OSIPI/DCE-DSC-MRI_CodeCollection):
an estimate passes when ``|estimate - reference| <= atol + rtol * |reference|``.

>>> from kinetics.tolerance import within_tolerance
>>> bool(within_tolerance("ktrans", 0.105, 0.1))
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["OSIPI_TOLERANCE", "within_tolerance"]

# parameter -> (atol, rtol), in the units of kinetics' maps (Ktrans and PS /min, Fp mL/100mL/min, delay s)
OSIPI_TOLERANCE = {
    "ktrans": (0.005, 0.1), "ps": (0.005, 0.1), "ve": (0.05, 0.0), "vp": (0.025, 0.0),
    "fp": (5.0, 0.1), "delay": (1.0, 0.0),
}


def within_tolerance(name: str, estimate, reference) -> np.ndarray:
    """Where ``estimate`` lies within the OSIPI tolerance of ``reference`` for parameter ``name``
    (NaN estimates do not)."""
    atol, rtol = OSIPI_TOLERANCE[name]
    reference = np.asarray(reference, dtype=float)
    return np.abs(np.asarray(estimate, dtype=float) - reference) <= atol + rtol * np.abs(reference)
