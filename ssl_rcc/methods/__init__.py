"""Self-supervised methods as LightningModules, one per file, by their CLI names."""

from __future__ import annotations

from ..errors import InputError
from .base import SSLMethod, learning_rate_factor
from .byol import BYOL
from .dino import DINO
from .mae import MAE
from .simclr import SimCLR

METHODS = {"simclr": SimCLR, "byol": BYOL, "dino": DINO, "mae": MAE}


def get_method(name: str) -> type[SSLMethod]:
    """The method class registered under ``name``; an unknown name raises with the valid ones."""
    if name not in METHODS:
        raise InputError(f"method: unknown method {name!r}; expected one of {sorted(METHODS)}.")
    return METHODS[name]


__all__ = ["METHODS", "get_method", "SSLMethod", "learning_rate_factor", "SimCLR", "BYOL", "DINO", "MAE"]
