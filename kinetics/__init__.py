"""kinetics: DCE-MRI pharmacokinetic maps, validated against the OSIPI test suite.

Signal to concentration and VFA T1 (:mod:`kinetics.signal`), arterial input functions
(:mod:`kinetics.aif`), forward models (:mod:`kinetics.models`), linear and nonlinear fits over voxel
matrices (:mod:`kinetics.fit`), renal function (:mod:`kinetics.renal`), model-driven motion
correction (:mod:`kinetics.motion`, :mod:`kinetics.registration`), preprocessing
(:mod:`kinetics.preprocess`), NIfTI/xarray I/O (:mod:`kinetics.io`), dask scale-out
(:mod:`kinetics.parallel`) and reference objects (:mod:`kinetics.dro`). This package never imports torch.

Modules whose names start with ``_`` are the fitting engine behind :mod:`kinetics.fit` (a block of
voxels, variable projection, Levenberg-Marquardt, worker processes): not API. ``cli``, ``options``,
``io``, ``provenance``, ``quality``, ``workflow`` and ``t1map`` are the command line's file pipelines.
"""

from .errors import KineticsInputError
from .fit import CurveFit, fit_curves, fit_image
from .registry import MODELS

__all__ = ["KineticsInputError", "CurveFit", "fit_curves", "fit_image", "MODELS"]
__version__ = "0.1.0"
