"""Many scans' ROI curves in one call (``python -m kinetics fit-roi --study study.csv``).

A renography study is a hundred scans of two kidneys each, every scan with its own acquisition values
and measured T1s. One process reads a study table, fits each scan's curves as :func:`kinetics.roi.fit_roi`
would, and writes one table: a row per scan and ROI, with the scan's id and each ROI's status.

The study table (CSV), one row per scan:

- ``curves`` (required): the scan's curves CSV (``time_s``, the AIF column, a column per ROI), relative
  to the study table's folder;
- ``scan_id`` (optional): the id written in the output; default the curves file's name;
- any of ``aif_column``, ``input``, ``t10_aif``, ``tr``, ``fa``, ``r1``, ``baseline``, ``hct``,
  ``uptake_s``: this scan's value, in place of the one given to the command;
- ``t10`` (one T10 for every ROI) or ``t10_<ROI>`` (one column per ROI, e.g. ``t10_LK``, ``t10_RK``),
  and ``volume_ml`` or ``volume_ml_<ROI>`` likewise.

An empty cell takes the command's value. A problem with a row is one sentence naming the row and the
scan; nothing is written unless every scan could be fitted.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from .errors import KineticsInputError
from .io import check_output_file, table_sidecar, write_table
from .provenance import provenance
from .roi import roi_parameters

__all__ = ["fit_study", "read_study", "STUDY_COLUMNS"]

log = logging.getLogger("kinetics")

# per-scan values a study table may give, with their types
STUDY_COLUMNS = {"aif_column": str, "input": str, "t10_aif": float, "tr": float, "fa": float, "r1": float,
                 "baseline": float, "hct": float, "uptake_s": float}  # baseline: checked as a whole number later
PER_ROI = ("t10", "volume_ml")


def read_study(path) -> pd.DataFrame:
    """The study table as strings (empty cells ''), with a ``curves`` column; checked."""
    path = Path(path)
    if not path.is_file():
        raise KineticsInputError(f"{path}: study table not found.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:
        raise KineticsInputError(f"{path}: cannot read the study table as CSV ({err}).") from None
    if "curves" not in table.columns:
        raise KineticsInputError(f"{path}: the study table needs a 'curves' column; it has {list(table.columns)}.")
    if table.empty:
        raise KineticsInputError(f"{path}: the study table has no scan.")
    # a misspelt column (T10_LK, tr_s) would silently leave the command's value in force
    known = {"curves", "scan_id", *STUDY_COLUMNS, *PER_ROI}
    unknown = [c for c in table.columns
               if c not in known and not any(c.startswith(name + "_") and len(c) > len(name) + 1 for name in PER_ROI)]
    if unknown:
        raise KineticsInputError(f"{path}: unknown column(s) {unknown}; a study table has curves, scan_id, "
                                 f"{', '.join(STUDY_COLUMNS)}, t10 or t10_<ROI>, volume_ml or volume_ml_<ROI>.")
    return table


def _scan_options(row, defaults, where):
    """The keyword arguments of :func:`kinetics.roi.roi_parameters` for one study row."""
    options = dict(defaults)
    for name, kind in STUDY_COLUMNS.items():
        cell = row.get(name, "").strip()
        if cell:
            try:
                options[name] = kind(cell)
            except ValueError:
                raise KineticsInputError(f"{where}: {name} {cell!r} is not a number.") from None
    for name in PER_ROI:
        cell = row.get(name, "").strip()
        per_roi = {column[len(name) + 1:]: row[column].strip() for column in row.index
                   if column.startswith(name + "_") and column not in STUDY_COLUMNS and row[column].strip()}
        if cell and per_roi:
            raise KineticsInputError(f"{where}: give {name} or {name}_<ROI> columns, not both.")
        try:
            if cell:
                options[name] = float(cell)
            elif per_roi:
                options[name] = {roi: float(v) for roi, v in per_roi.items()}
        except ValueError:
            raise KineticsInputError(f"{where}: a {name} value is not a number.") from None
    return options


def fit_study(
    study: str | os.PathLike, *, out: str | os.PathLike, overwrite: bool = False, progress: bool = True, **defaults
) -> Path:
    """Fit every scan of a study table (see the module docstring) and write one CSV to ``out``: the
    columns of :func:`kinetics.roi.fit_roi` after ``scan_id``. ``defaults`` are the
    :func:`kinetics.roi.fit_roi` options that rows do not give. Returns ``out``."""
    from tqdm.auto import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: it would make the fits refuse to fork
    out = Path(out)
    for path in (out, table_sidecar(out)):  # before the fits, not when they are done
        check_output_file(path, overwrite=overwrite)
    table = read_study(study)
    root = Path(study).parent
    ids = [r["scan_id"].strip() if r.get("scan_id", "").strip() else Path(r["curves"]).stem for _, r in table.iterrows()]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise KineticsInputError(f"{study}: scan ids {repeated[:5]} appear more than once; give a scan_id column.")
    results = []
    curves = {}  # each scan's curves file, whose content hash the sidecar records beside the study table's
    rows = tqdm(list(table.iterrows()), desc="scans", unit="scan", disable=not progress, leave=False)
    for (index, row), scan in zip(rows, ids):
        where = f"{study}, row {index + 2} (scan {scan})"  # the header is line 1
        if not row["curves"].strip():
            raise KineticsInputError(f"{where}: no curves file.")
        options = _scan_options(row, defaults, where)
        if options.get("aif_column") is None:
            raise KineticsInputError(f"{where}: no AIF column; give --aif-column or an aif_column column.")
        curves[f"curves of {scan}"] = root / row["curves"].strip()
        try:
            params = roi_parameters(curves[f"curves of {scan}"], **options)
        except KineticsInputError as err:
            raise KineticsInputError(f"{where}: {err}") from None
        params.insert(0, "scan_id", scan)
        results.append(params)
    write_table(out, pd.concat(results, ignore_index=True),
                dict(options=defaults, provenance=provenance("kinetics", {"study": study} | curves)), overwrite=overwrite)
    log.info("fitted %d scans (%d ROIs): %s", len(results), sum(len(r) for r in results), out)
    return out
