"""The options of a pretraining run, checked once: :class:`PretrainConfig`.

``pretrain`` resolves every option a user may leave out (from the recipe, or, when resuming, from the
run's own run.json), checks them all before anything is written, and from then on reads this frozen
object instead of two dozen loose arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kinetics.options import number

from .errors import InputError
from .methods import get_method
from .models import ARCHITECTURES
from .recipes import OPTIONS, RUN_OPTIONS, recipe_defaults

__all__ = ["PretrainConfig", "PRECISIONS", "RESUME_MUST_MATCH"]

log = logging.getLogger("ssl_rcc")
# whole-model half precision ("bf16-true") left the weights non-finite within two steps here: mixed only
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")
# options a resumed run may only repeat (it reads them from its run.json)
RESUME_MUST_MATCH = RUN_OPTIONS  # every option a run.json records


# options whose config field names the unit
_FIELD = {"spacing": "spacing_mm", "max_time": "max_time_min"}
_OPTION = {field: option for option, field in _FIELD.items()}


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """Every run-defining option of ``pretrain``, resolved and checked (see :meth:`resolve`)."""

    method: str
    recipe: str
    architecture: str
    patch: list[int]  # a list, as run.json keeps it
    vit_patch: int
    spacing_mm: float
    batch_size: int
    accumulate: int
    lr: float
    temperature: float
    crop_scale: list[float] | None  # a list, as run.json keeps it
    intensity: float
    gamma: list[float] | None
    normalise_target: bool
    seed: int
    devices: int
    num_nodes: int
    workers: int
    checkpoint_every: int
    probe_every: int
    max_time_min: float | None
    max_steps: int | None  # as given (None: from the run or from epochs, once the images are counted)
    epochs: float | None
    warmup_steps: int | None  # None: a tenth of the run
    augment: str  # what was asked: auto, loader or device
    precision: str | None  # None: by the device
    accelerator: str

    @property
    def world(self) -> int:
        """Processes training together (devices x nodes)."""
        return self.devices * self.num_nodes

    @classmethod
    def resolve(cls, given: Mapping[str, Any], previous: Mapping[str, Any], *, cuda: bool, where: str) -> PretrainConfig:
        """The config of ``given`` options (``method`` and any of :data:`OPTIONS`; None or absent: not
        given), completed from ``previous`` (a resumed run's run.json, else empty) and then from the
        recipe; every value checked, one sentence per problem. ``where`` names the run in the message
        when a resumed run is given another value."""
        unknown = sorted(set(given) - set(OPTIONS) - {"method"})
        if unknown:
            raise InputError(f"pretrain: unknown option {unknown[0]!r}; the options are {', '.join(OPTIONS)}.")
        method = given["method"]
        method_cls = get_method(method)
        given = {_FIELD.get(k, k): given.get(k, option.default) for k, option in OPTIONS.items()}
        accelerator = given["accelerator"]
        if accelerator not in ("auto", "cpu", "gpu", "cuda"):
            raise InputError(f"accelerator: {accelerator!r} is not one of auto, cpu, gpu.")
        recipe, defaults = recipe_defaults(given.get("recipe") or previous.get("recipe", "auto"), method, cuda=cuda)
        chosen = {k: given[k] if given.get(k) is not None else previous.get(k, defaults[k]) for k in RUN_OPTIONS}
        crop_scale = _ordered_pair(chosen["crop_scale"], "crop_scale",
                                   "factors (smallest, largest view side over the patch)")
        if chosen["architecture"] not in ARCHITECTURES:
            raise InputError(f"architecture: unknown {chosen['architecture']!r}; expected one of {sorted(ARCHITECTURES)}.")
        if not isinstance(chosen["normalise_target"], bool):
            raise InputError(f"normalise_target: {chosen['normalise_target']!r} is neither true nor false.")
        optional = {name: None if given[name] is None else number(given[name], name, **kind) for name, kind in
                    (("max_steps", dict(integer=True, low=0)), ("epochs", dict(positive=True)),
                     ("warmup_steps", dict(integer=True, low=0)))}
        config = cls(
            method=method, recipe=recipe, architecture=chosen["architecture"], patch=_patch3(chosen["patch"]),
            vit_patch=int(number(chosen["vit_patch"], "vit_patch", "voxels", integer=True, positive=True)),
            spacing_mm=number(chosen["spacing_mm"], "spacing", "mm", positive=True),
            batch_size=number(chosen["batch_size"], "batch_size", integer=True, positive=True),
            accumulate=number(chosen["accumulate"], "accumulate", integer=True, positive=True),
            lr=number(chosen["lr"], "lr", positive=True),
            temperature=number(chosen["temperature"], "temperature", positive=True),
            crop_scale=crop_scale, intensity=number(chosen["intensity"], "intensity", low=0),
            gamma=_ordered_pair(chosen["gamma"], "gamma", "exponents (lo, hi)"),
            normalise_target=chosen["normalise_target"],
            seed=int(number(chosen["seed"], "seed", integer=True, low=0)),
            devices=number(given["devices"], "devices", integer=True, positive=True),
            num_nodes=number(given["num_nodes"], "num_nodes", integer=True, positive=True),
            workers=number(given["workers"], "workers", integer=True, low=0),
            checkpoint_every=number(given["checkpoint_every"], "checkpoint_every", "steps", integer=True, positive=True),
            probe_every=number(given["probe_every"], "probe_every", "steps", integer=True, positive=True),
            max_time_min=None if given["max_time_min"] is None else number(given["max_time_min"], "max_time", "minutes",
                                                                           positive=True),
            **optional, augment=given["augment"], precision=given["precision"], accelerator=accelerator,
        )
        for name in RESUME_MUST_MATCH:
            if name in previous and given[name] is not None and previous[name] != getattr(config, name):
                option = _OPTION.get(name, name).replace("_", "-")
                raise InputError(f"{where}: --{option} {given[name]} differs from the run's {previous[name]}; "
                                 f"a resumed run continues with its own (leave the option out).")
        if config.batch_size < method_cls.min_batch_size:
            raise InputError(f"batch_size: {config.batch_size} volume per device; {method} needs at least "
                             f"{method_cls.min_batch_size} (its loss compares samples of the batch and its head "
                             "normalises over it).")
        if config.augment not in ("auto", "loader", "device"):
            raise InputError(f"augment: {config.augment!r} is not one of auto, loader, device.")
        if config.precision is not None and str(config.precision) not in PRECISIONS:
            raise InputError(f"precision: {config.precision!r} is not one of {', '.join(PRECISIONS)}.")
        if previous and (previous.get("devices", config.devices) * previous.get("num_nodes", config.num_nodes) != config.world
                         or previous.get("workers", config.workers) != config.workers):
            log.warning("resuming with another number of processes or loader workers: the samples from here on are "
                        "not those an uninterrupted run would have drawn")
        return config


def _patch3(patch) -> list[int]:
    values = patch if isinstance(patch, (tuple, list)) else (patch,) * 3
    if len(values) != 3:
        raise InputError(f"patch: give one size or three, not {len(values)}.")
    return [number(p, "patch", "voxels", integer=True, low=8) for p in values]


def _ordered_pair(value, name: str, what: str) -> list[float] | None:
    """None, or two positive numbers (lo <= hi) from a pair or "lo,hi"; ``what`` says what they are."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"{name}: give two {what}, not {value!r}.")
    lo, hi = (number(v, name, positive=True) for v in value)
    if lo > hi:
        raise InputError(f"{name}: {lo:g} is larger than {hi:g}.")
    return [lo, hi]
