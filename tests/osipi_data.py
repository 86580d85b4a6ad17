"""Loaders of the OSIPI DCE-MRI test-suite CSVs (github.com/OSIPI/DCE-DSC-MRI_CodeCollection,
commit 40984f7c, test/*/data), following the suite's own loaders: array cells are space-separated
numbers; files may start with a UTF-8 BOM. Tolerances are the suite's, as listed in its README.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from kinetics.tolerance import OSIPI_TOLERANCE

DCE_TOLERANCE = OSIPI_TOLERANCE  # the suite's tolerances, one copy: |measured - reference| <= atol + rtol |reference|


def read_rows(path: Path):
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def array(cell: str) -> np.ndarray:
    return np.array(cell.split(), dtype=float)


def within(measured, reference, atol, rtol):
    return np.abs(np.asarray(measured) - np.asarray(reference)) <= atol + rtol * np.abs(reference)
