"""Synthetic renal cases: multi-phase CT, DCE-MRI, masks and labels (the embedded default data).

Sources of every appearance value: docs/phantoms.md.
"""

from .generate import Case, generate_phantoms, make_case
from .labels import PRIORS, SITES, SUBTYPES, sample_labels

__all__ = ["Case", "generate_phantoms", "make_case", "PRIORS", "SITES", "SUBTYPES", "sample_labels"]
