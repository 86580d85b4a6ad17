"""The case table (``cases.csv``): one reader for ``embed``, the k-NN probe, the features and the heads.

One row per lesion; paths relative to the CSV's folder; an empty cell means "not available". Columns
and label values are those of DESIGN.md's case-table contract. Every problem is one sentence naming
the table, the row (as the spreadsheet numbers it: the header is row 1) and the case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..phantoms.labels import SUBTYPES

__all__ = ["read_case_table", "LABEL_VALUES", "PATH_COLUMNS", "NUMBER_COLUMNS", "row_name"]

LABEL_VALUES = {"subtype": SUBTYPES, "grade": ("low", "high"), "invasion": ("no", "yes")}
PATH_COLUMNS = ("ct", "image", "kidney_mask", "tumor_mask", "dce_tumor_mask", "ktrans", "ve", "vp", "kep", "dce",
                "dce_times", "aif", "t10", "ktrans_true", "ve_true", "vp_true")
NUMBER_COLUMNS = ("tr_s", "fa_deg", "r1", "baseline_frames", "diameter_mm")


def row_name(table: pd.DataFrame, i: int) -> str:
    """'cases.csv row 5 (case_0003)': where a row's problem is, as a person finds it in the file."""
    return f"{table.attrs.get('source', 'case table')} row {i + 2} ({table['case_id'].iat[i]})"


def read_case_table(path, *, require=()) -> pd.DataFrame:
    """Read and check a case table; returns it with absolute paths and numbers parsed.

    Parameters
    ----------
    path : str or Path
        The CSV. Paths in it are relative to its folder (absolute ones are kept).
    require : sequence of str
        Columns every row must fill; a path among them must name an existing file.

    Returns
    -------
    pandas.DataFrame
        One row per lesion, in file order, all columns as strings ('' = missing) except
        :data:`NUMBER_COLUMNS` (float, NaN = missing); ``case_id`` unique; ``site`` '' when absent;
        ``attrs['source']`` the CSV's name and ``attrs['folder']`` its folder.

    Raises
    ------
    InputError
        An unreadable table, a missing required column or value, a duplicated case id, a label
        outside :data:`LABEL_VALUES`, a value that is not a number, a required file that is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: case table not found.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:  # pandas raises several types for a broken CSV
        raise InputError(f"{path}: cannot read the case table as CSV ({type(err).__name__}).") from None
    table = table.apply(lambda c: c.str.strip())
    table.attrs.update(source=path.name, folder=str(path.parent.resolve()))
    if len(table) == 0:
        raise InputError(f"{path}: the case table has no row.")
    missing = [c for c in ("case_id", *require) if c not in table.columns]
    if missing:
        raise InputError(f"{path}: the case table lacks the column(s) {missing}; it has {list(table.columns)}.")
    if "site" not in table.columns:
        table["site"] = ""
    for i in np.flatnonzero(table["case_id"].to_numpy() == ""):
        raise InputError(f"{path.name} row {i + 2}: empty case_id.")
    duplicated = table["case_id"][table["case_id"].duplicated()]
    if len(duplicated):
        raise InputError(f"{path}: case_id {duplicated.iat[0]!r} appears more than once.")
    for column, allowed in LABEL_VALUES.items():
        if column in table.columns:
            bad = ~table[column].isin(allowed + ("",))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(f"{row_name(table, i)}: {column} {table[column].iat[i]!r} is not one of {list(allowed)}.")
    for column in NUMBER_COLUMNS:
        if column in table.columns:
            values = pd.to_numeric(table[column].replace("", np.nan), errors="coerce")
            bad = values.isna() & (table[column] != "")
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(f"{row_name(table, i)}: {column} {table[column].iat[i]!r} is not a number.")
            table[column] = values.astype(float)
    folder = path.parent.resolve()
    for column in PATH_COLUMNS:
        if column in table.columns:
            table[column] = [str(folder / p) if p else "" for p in table[column]]
    for column in require:
        for i, value in enumerate(table[column]):
            if (isinstance(value, str) and not value) or (not isinstance(value, str) and not np.isfinite(value)):
                raise InputError(f"{row_name(table, i)}: {column} is empty.")
            if column in PATH_COLUMNS and not Path(value).exists():
                raise InputError(f"{row_name(table, i)}: {column} file {Path(value).name} not found.")
    return table
