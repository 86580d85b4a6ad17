"""The ``t1map`` command's pipeline: a VFA series file in, a T1 map (and each voxel's status) out."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from .errors import KineticsInputError
from .io import check_output_file, load_image, output_file, read_mask, read_scalar_or_image, save_image, table_sidecar
from .options import PLAUSIBLE, flip_angles, plausible
from .provenance import provenance
from .signal import vfa_t1_linear, vfa_t1_nonlinear
from .status import ESTIMATE_NOT_FINITE, IMPLAUSIBLE, INPUT_NOT_FINITE, OK, OUTSIDE, status_counts

__all__ = ["t1_map"]

log = logging.getLogger("kinetics")


def t1_map(
    vfa: str | os.PathLike,
    fa: str | ArrayLike,
    *,
    tr: float,
    out: str | os.PathLike,
    method: str = "nonlinear",
    b1: float | str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    status: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """T1 map (s) from a variable flip angle series file (x, y, z, n_fa); writes ``out`` (NIfTI).

    T1 outside the plausible range (0.05-10 s: background and noise fit T1s of hours) is set to NaN
    with a warning that counts it; ``status`` (a NIfTI path, optional) also gets every voxel's
    :mod:`kinetics.status` code: ``outside_mask``, ``ok``, ``input_not_finite`` (a flip angle's
    signal), ``estimate_not_finite`` (no T1 fits) or ``implausible``. ``<out>.json`` beside the map
    records the options, the status counts and the provenance (version, commit, command, the inputs'
    content hashes).

    Parameters
    ----------
    fa : str or sequence of float, degrees
        One nominal flip angle per volume of the series ("2,5,10,15").
    method : {"nonlinear", "linear"}
        Nonlinear least squares seeded by DESPOT1, or DESPOT1 alone.
    b1 : None, number or path
        Relative B1 (actual / nominal flip angle), a value or a map.
    """
    if method not in ("nonlinear", "linear"):
        raise KineticsInputError(f"method: unknown method {method!r}; expected 'nonlinear' or 'linear'.")
    angles = np.array(flip_angles(fa))
    tr = plausible(tr, "tr")
    for name, path in (("out", out), ("status", status)):
        if path is not None and not str(path).endswith((".nii", ".nii.gz")):
            raise KineticsInputError(f"{path}: {name} needs a NIfTI file name (.nii or .nii.gz).")
    out = check_output_file(out, overwrite=overwrite)
    check_output_file(table_sidecar(out), overwrite=overwrite)
    if status is not None:
        status = check_output_file(status, overwrite=overwrite)
        if status.resolve() == out.resolve():
            raise KineticsInputError(f"{status}: the status map needs a file of its own, not the T1 map's.")
    data, affine, header = load_image(vfa, ndim=4, name="VFA series")
    if angles.size != data.shape[-1]:
        raise KineticsInputError(f"{vfa}: {data.shape[-1]} volumes for {angles.size} flip angles.")
    roi = read_mask(mask, data.shape[:3], affine)
    roi = np.ones(data.shape[:3], bool) if roi is None else roi
    b1_map = None
    if b1 is not None:
        b1_map = np.broadcast_to(read_scalar_or_image(b1, name="B1 map", shape=data.shape[:3], unit="1", affine=affine), data.shape[:3])
        b1_roi = b1_map[roi]
        if not np.all((b1_roi > 0) & (b1_roi * angles.max() <= 90)):
            raise KineticsInputError(f"{b1}: B1 must be positive and keep every flip angle within 90 degrees.")
    fit_fn = vfa_t1_nonlinear if method == "nonlinear" else vfa_t1_linear
    t1 = np.full(data.shape[:3], np.nan, dtype=np.float32)
    t1[roi] = fit_fn(data[roi], angles, tr_s=tr, b1=None if b1_map is None else b1_map[roi]).t1_s
    low, high, *_ = PLAUSIBLE["t10"]
    implausible = np.isfinite(t1) & ((t1 < low) | (t1 > high))  # background and noise fit T1s of hours
    codes = np.select([~roi, ~np.isfinite(data).all(axis=-1), implausible, ~(t1 > 0)],
                      [OUTSIDE, INPUT_NOT_FINITE, IMPLAUSIBLE, ESTIMATE_NOT_FINITE], OK).astype(np.uint8)
    if implausible.any():
        if implausible.sum() == np.isfinite(t1).sum():
            raise KineticsInputError(f"{vfa}: no voxel has a plausible T1 ({low:g}-{high:g} s); check --tr (s) and --fa (degrees).")
        log.warning("%d of %d voxels have a T1 outside %g-%g s (background or noise) and are set to NaN%s",
                    int(implausible.sum()), int(roi.sum()), low, high, "" if mask is not None else "; --mask fits tissue only")
        t1[implausible] = np.nan
    log.info("T1 status: %s", ", ".join(f"{name} {n}" for name, n in status_counts(codes).items()))
    origin = {"options": {"fa_deg": angles.tolist(), "tr_s": tr, "method": method, "b1": None if b1 is None else str(b1),
                          "mask": None if mask is None else str(mask), "status": None if status is None else str(status)},
              "t1_status": status_counts(codes),
              "provenance": provenance("kinetics", {"vfa": vfa, "b1": b1, "mask": mask})}
    # the T1 map is committed last: if its sidecar or status map cannot be written, neither is it
    with output_file(out, overwrite=overwrite) as tmp:
        save_image(tmp, t1, affine, header)
        with output_file(table_sidecar(out), overwrite=overwrite) as meta:
            meta.write_text(json.dumps(origin, indent=2, default=str))
        if status is not None:
            with output_file(status, overwrite=overwrite) as tmp_status:
                save_image(tmp_status, codes, affine, header)
    return out
