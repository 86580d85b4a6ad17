"""Checks of command-line values: each bad value raises one sentence naming the option and the value."""

from __future__ import annotations

import os

import numpy as np

from .errors import KineticsInputError

__all__ = ["available_cpus", "worker_count", "number", "haematocrit", "flip_angles"]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity on Linux; all of them elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_count(workers: int | None) -> int:
    """Cores to use for a ``workers`` option: None means every CPU available, else at least 1."""
    return available_cpus() if workers is None else max(int(workers), 1)


def number(value, name, unit="", *, integer=False, positive=False, low=None, high=None):
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


def haematocrit(value):
    """Haematocrit in [0, 1)."""
    h = number(value, "hct")
    if not 0.0 <= h < 1.0:
        raise KineticsInputError(f"hct: haematocrit {value!r} is outside [0, 1).")
    return h


def flip_angles(value, name="fa"):
    """Flip angles (degrees) from '2,5,10' or a sequence, each in (0, 90]."""
    items = value.split(",") if isinstance(value, str) else np.atleast_1d(value).tolist()
    angles = [number(a, name, "degrees") for a in items]
    for a in angles:
        if not 0 < a <= 90:
            raise KineticsInputError(f"{name}: flip angle {a:g} degrees is outside (0, 90].")
    return angles
