"""Prediction tasks on a case table: which rows take part and what their label is.

- ``subtype``: ccrcc / prcc / chrcc / oncocytoma / fpaml (5 classes);
- ``malignant``: RCC (ccrcc, prcc, chrcc) against benign (oncocytoma, fpaml), from ``subtype``;
- ``grade``: ISUP low (1-2) against high (3-4); rows without a grade (benign lesions) are left out;
- ``invasion``: perinephric fat invasion, no against yes.

Binary tasks list the negative class first; their second class is the positive one, whose probability
the binary metrics (sensitivity, PPV, ...) are about.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError
from ..phantoms.labels import MALIGNANT, SUBTYPES

__all__ = ["Task", "TASKS", "get_task"]


@dataclass(frozen=True)
class Task:
    """``name``; ``classes`` in order (binary: negative, positive); ``column`` of the case table read."""

    name: str
    classes: tuple
    column: str

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def labels(self, table: pd.DataFrame) -> pd.Series:
        """The label of every row ('' where the row does not take part: no value, or benign for grade)."""
        if self.column not in table.columns:
            raise InputError(f"{table.attrs.get('source', 'case table')}: task {self.name} needs the column {self.column!r}.")
        values = table[self.column].astype(str)
        if self.name == "malignant":
            values = values.map(lambda s: "" if s == "" else ("malignant" if s in MALIGNANT else "benign"))
        return pd.Series(np.where(values.isin(self.classes), values, ""), index=table.index, name=self.name)


TASKS = {
    "subtype": Task("subtype", SUBTYPES, "subtype"),
    "malignant": Task("malignant", ("benign", "malignant"), "subtype"),
    "grade": Task("grade", ("low", "high"), "grade"),
    "invasion": Task("invasion", ("no", "yes"), "invasion"),
}


def get_task(name) -> Task:
    """The task called ``name``; InputError listing the valid names otherwise."""
    if name not in TASKS:
        raise InputError(f"task: unknown task {name!r}; expected one of {sorted(TASKS)}.")
    return TASKS[name]
