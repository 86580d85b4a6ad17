"""The kinetic models by their CLI names: parameters, units, bounds, forward model and linear fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import linear, models
from .errors import KineticsInputError

__all__ = ["ModelSpec", "MODELS", "get_model"]


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One kinetic model as the fitting engine sees it.

    ``forward(t_s, cp_mM, *params) -> (n_voxels, n_times)`` with params in ``units``;
    ``linear(t_s, conc_mM, cp_mM, *, axis, c_dot_c) -> LinearFit``; ``derived(params) -> dict`` of extra maps;
    ``jacobian(t_s, cp_mM, *params) -> (curve, (n_voxels, n_times, n_params))``, exact, where a model
    has one (others get forward differences); ``implausible(params) -> (n_voxels,) bool``, where a
    model has a physical constraint its bounds cannot express (the fit's status is then
    ``implausible``).
    """

    name: str
    params: tuple[str, ...]
    units: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    initial: tuple[float, ...]
    forward: Callable
    linear: Callable
    derived: Callable[[dict], dict]
    derived_units: dict
    jacobian: Callable | None = None
    implausible: Callable | None = None


def _kep(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"kep": p["ktrans"] / p["ve"]}


_ML_PER_100ML = 100.0  # flows in mL/100mL/min divided by this are in /min (mL/min per mL)


def _exchange_derived(p):
    """Extraction fraction E = PS/(Fp + PS) and Ktrans = E Fp (/min), with Fp converted to /min."""
    fp_per_min = p["fp"] / _ML_PER_100ML
    with np.errstate(divide="ignore", invalid="ignore"):
        e = p["ps"] / (fp_per_min + p["ps"])
    return {"e": e, "ktrans": e * fp_per_min}


def _filtration_implausible(p):
    """Filtration above the plasma flow that carries it (a filtration fraction above 1)."""
    with np.errstate(invalid="ignore"):
        return p["ft"] > p["fp"]


def _filtration_derived(p):
    """Filtration fraction FT/Fp and plasma mean transit time Tp = vp/Fp (s)."""
    fp_per_s = p["fp"] / _ML_PER_100ML / models.SECONDS_PER_MINUTE
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"ff": p["ft"] / p["fp"], "tp": p["vp"] / fp_per_s}


_V, _K = "1", "/min"
_F = "mL/100mL/min"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="tofts", params=("ktrans", "ve"), units=(_K, _V),
            lower=(0.0, 1e-3), upper=(5.0, 1.0), initial=(0.6, 0.2),
            forward=models.tofts, linear=linear.llsq_tofts, jacobian=models.tofts_jacobian,
            derived=_kep, derived_units={"kep": _K},
        ),
        ModelSpec(
            name="extended_tofts", params=("ktrans", "ve", "vp"), units=(_K, _V, _V),
            lower=(0.0, 1e-3, 0.0), upper=(5.0, 1.0, 1.0), initial=(0.6, 0.2, 0.01),
            forward=models.extended_tofts, linear=linear.llsq_extended_tofts, jacobian=models.extended_tofts_jacobian,
            derived=_kep, derived_units={"kep": _K},
        ),
        ModelSpec(
            name="patlak", params=("ktrans", "vp"), units=(_K, _V),
            lower=(0.0, 0.0), upper=(5.0, 1.0), initial=(0.05, 0.05),
            forward=models.patlak, linear=linear.llsq_patlak, jacobian=models.patlak_jacobian,
            derived=lambda p: {}, derived_units={},
        ),
        ModelSpec(
            name="2cxm", params=("fp", "ps", "ve", "vp"), units=(_F, _K, _V, _V),
            lower=(1e-3, 0.0, 1e-3, 1e-4), upper=(200.0, 5.0, 1.0, 1.0), initial=(20.0, 0.6, 0.2, 0.01),
            forward=models.two_compartment_exchange, linear=linear.llsq_two_compartment_exchange,
            derived=_exchange_derived, derived_units={"e": _V, "ktrans": _K},
        ),
        ModelSpec(
            name="2cum", params=("fp", "ps", "vp"), units=(_F, _K, _V),
            lower=(1e-3, 0.0, 1e-4), upper=(200.0, 5.0, 1.0), initial=(20.0, 0.6, 0.01),
            forward=models.two_compartment_uptake, linear=linear.llsq_two_compartment_uptake,
            derived=_exchange_derived, derived_units={"e": _V, "ktrans": _K},
        ),
        ModelSpec(
            name="2cfm", params=("fp", "vp", "ft", "tt"), units=(_F, _V, _F, "s"),
            lower=(1e-3, 1e-4, 0.0, 1.0), upper=(2000.0, 1.0, 500.0, 3600.0), initial=(200.0, 0.2, 20.0, 120.0),
            forward=models.two_compartment_filtration, linear=linear.llsq_two_compartment_filtration,
            derived=_filtration_derived, derived_units={"ff": _V, "tp": "s"}, implausible=_filtration_implausible,
        ),
    ]
}


def get_model(name: str) -> ModelSpec:
    """The model registered under ``name``; an unknown name raises with the valid ones."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise KineticsInputError(
            f"model: unknown model {name!r}; expected one of {sorted(MODELS)}."
        ) from None
