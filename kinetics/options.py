"""Checks of command-line values: each bad value raises one sentence naming the option and the value."""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import ArrayLike

from .errors import KineticsInputError

__all__ = ["available_cpus", "worker_count", "number", "plausible", "haematocrit", "flip_angles", "iterations", "PLAUSIBLE"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity on Linux; all of them elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_count(workers: int | None) -> int:
    """Cores to use for a ``workers`` option: None means every CPU available, else at least 1."""
    return available_cpus() if workers is None else max(int(workers), 1)


def number(
    value: object,
    name: str,
    unit: str = "",
    *,
    integer: bool = False,
    positive: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float | int:
    """``value`` as a float (or int), or a KineticsInputError that quotes it.

    ``positive`` requires > 0; ``low``/``high`` are inclusive limits.
    """
    what = f"{name}: {value!r}{(' ' + unit) if unit else ''}"
    if isinstance(value, (tuple, list)):
        raise KineticsInputError(f"{what} is a list; give one number.")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise KineticsInputError(f"{what} is not a number.") from None
    if not np.isfinite(x):
        raise KineticsInputError(f"{what} is not finite.")
    if integer:
        if x != int(x):
            raise KineticsInputError(f"{what} is not a whole number.")
        x = int(x)
    if positive and not x > 0:
        raise KineticsInputError(f"{what} must be positive.")
    if low is not None and x < low:
        raise KineticsInputError(f"{what} is below {low}.")
    if high is not None and x > high:
        raise KineticsInputError(f"{what} is above {high}.")
    return x


# Plausible ranges of acquisition values in the units the commands ask for, and the slip that usually
# puts a value outside them: a TR or T1 in milliseconds or a relaxivity per molar fits nothing, or fits
# wrongly, without any error, so such values are refused rather than fitted.
PLAUSIBLE = {
    "tr": (1e-4, 0.1, "s", "an SPGR repetition time", "milliseconds? 4 ms is 0.004 s"),
    "t10": (0.05, 10.0, "s", "a pre-contrast T1", "milliseconds? 1400 ms is 1.4 s"),
    "r1": (0.5, 50.0, "/s/mM", "a contrast agent's relaxivity", "per molar? 4500 /s/M is 4.5 /s/mM"),
}


def plausible(value: object, name: str, kind: str | None = None) -> float:
    """``value`` as a positive float inside the :data:`PLAUSIBLE` range of ``kind`` (default ``name``),
    or a KineticsInputError that names the range and the usual unit slip."""
    low, high, unit, what, slip = PLAUSIBLE[kind or name]
    x = number(value, name, unit, positive=True)
    if not low <= x <= high:
        raise KineticsInputError(f"{name}: {x:g} {unit} is not a plausible value for {what} ({low:g}-{high:g} {unit}); "
                                 f"{slip}")
    return x


def haematocrit(value: object) -> float:
    """Haematocrit in [0, 1)."""
    h = number(value, "hct")
    if not 0.0 <= h < 1.0:
        raise KineticsInputError(f"hct: haematocrit {value!r} is outside [0, 1).")
    return h


def flip_angles(value: str | ArrayLike, name: str = "fa") -> list[float]:
    """Flip angles (degrees) from '2,5,10' or a sequence, each in (0, 90]; all of them under 1 degree
    is refused as radians (a 10 degree angle is 0.17 rad)."""
    items = value.split(",") if isinstance(value, str) else np.atleast_1d(value).tolist()
    angles = [number(a, name, "degrees") for a in items]
    for a in angles:
        if not 0 < a <= 90:
            raise KineticsInputError(f"{name}: flip angle {a:g} degrees is outside (0, 90].")
    if max(angles) < 1.0:
        raise KineticsInputError(f"{name}: flip angles of {', '.join(f'{a:g}' for a in angles)} degrees are not "
                                 f"plausible; radians? give degrees ({angles[-1]:g} rad is {np.degrees(angles[-1]):.3g} degrees).")
    return angles


def iterations(value, name="max_iter") -> int:
    """A positive whole number of iterations, or one sentence."""
    return number(value, name, "iterations", integer=True, positive=True)
