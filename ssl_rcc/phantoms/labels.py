"""Case labels: subtype, ISUP grade, perinephric fat invasion, site, drawn from priors.

Label draws are separate from rendering so that priors can be checked on thousands of cases at no
cost. Sources for every number are in docs/phantoms.md.
"""

from __future__ import annotations

import numpy as np

SUBTYPES = ("ccrcc", "prcc", "chrcc", "oncocytoma", "fpaml")
MALIGNANT = ("ccrcc", "prcc", "chrcc")
SITES = ("site_a", "site_b", "site_c", "site_d")

# Surgical series named in the product brief: 310 / 45 / 38 / 26 / 8 of 427 lesions.
SERIES_COUNTS = {"ccrcc": 310, "prcc": 45, "chrcc": 38, "oncocytoma": 26, "fpaml": 8}
PRIORS = {k: v / sum(SERIES_COUNTS.values()) for k, v in SERIES_COUNTS.items()}

# P(ISUP 3-4 | subtype); benign lesions are not graded
HIGH_GRADE = {"ccrcc": 0.40, "prcc": 0.30, "chrcc": 0.15}

# P(perinephric fat invasion | subtype, grade): about 20% of all lesions, rising with grade (and size)
INVASION = {
    ("ccrcc", "low"): 0.12, ("ccrcc", "high"): 0.38,
    ("prcc", "low"): 0.08, ("prcc", "high"): 0.25,
    ("chrcc", "low"): 0.08, ("chrcc", "high"): 0.25,
    ("oncocytoma", ""): 0.02, ("fpaml", ""): 0.0,
}


def sample_labels(rng: np.random.Generator, n: int, *, balanced: bool = False) -> list[dict]:
    """Draw ``n`` label sets: dicts with subtype, grade ('low'/'high', '' for benign), invasion
    ('yes'/'no') and site. ``balanced`` draws subtypes with equal probability instead of the priors."""
    probs = np.full(len(SUBTYPES), 1 / len(SUBTYPES)) if balanced else np.array([PRIORS[s] for s in SUBTYPES])
    subtypes = rng.choice(len(SUBTYPES), size=n, p=probs)
    out = []
    for s in subtypes:
        subtype = SUBTYPES[s]
        grade = ("high" if rng.random() < HIGH_GRADE[subtype] else "low") if subtype in HIGH_GRADE else ""
        invasion = "yes" if rng.random() < INVASION[(subtype, grade)] else "no"
        out.append({"subtype": subtype, "grade": grade, "invasion": invasion, "site": SITES[rng.integers(len(SITES))]})
    return out
