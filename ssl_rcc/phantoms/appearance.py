"""Tissue and tumour appearance: CT attenuation per phase, DCE kinetics, T10 and site nuisances.

Values, their sources and how firm they are: docs/phantoms.md. Each case draws its own values around
these means (enhancement scaled per case, per-lesion spread as published), so classes overlap.
"""

from __future__ import annotations

import numpy as np

PHASES = ("unenhanced", "corticomedullary", "nephrographic", "excretory")

# Tissue classes of the label map
BACKGROUND, FAT, CORTEX, MEDULLA, SINUS_FAT, COLLECTING, LIVER, BOWEL_WALL, BOWEL_LUMEN, STRANDING = range(10)
TUMOUR, NECROSIS, SCAR, TUMOUR_B = 10, 11, 12, 13  # TUMOUR_B: the second segment (enhancement inversion)
N_CLASSES = 14

# Hounsfield units per phase, (mean, between-patient SD); normal tissues
TISSUE_HU = {
    BACKGROUND: ((45, 5), (60, 8), (75, 8), (65, 8)),  # muscle and soft tissue
    FAT: ((-100, 8), (-98, 8), (-96, 8), (-96, 8)),
    CORTEX: ((35, 5), (200, 25), (170, 20), (125, 15)),
    MEDULLA: ((35, 5), (80, 15), (170, 20), (135, 15)),
    SINUS_FAT: ((-95, 8), (-93, 8), (-92, 8), (-92, 8)),
    COLLECTING: ((8, 4), (10, 4), (25, 8), (600, 150)),  # excreted contrast in the last phase
    LIVER: ((55, 6), (80, 10), (115, 12), (90, 10)),
    BOWEL_WALL: ((38, 5), (100, 15), (110, 15), (80, 10)),
    BOWEL_LUMEN: ((5, 10), (5, 10), (5, 10), (5, 10)),
    STRANDING: ((-40, 15), (-25, 15), (-20, 15), (-25, 15)),  # oedema or tumour in fat strands
    NECROSIS: ((22, 6), (26, 6), (28, 6), (28, 6)),
    SCAR: ((30, 6), (45, 10), (70, 12), (95, 15)),  # fibrous: slow, delayed enhancement
}

# Tumours: (mean, SD across lesions) per phase; SD as published, so subtypes overlap
TUMOUR_HU = {
    "ccrcc": ((32, 8), (150, 45), (125, 35), (90, 25)),
    "prcc": ((35, 8), (65, 20), (80, 20), (70, 15)),
    "chrcc": ((35, 8), (105, 30), (110, 30), (85, 20)),
    "oncocytoma": ((32, 8), (145, 40), (130, 35), (85, 20)),
    "fpaml": ((42, 8), (130, 35), (115, 30), (90, 20)),
}
# Texture amplitude (fraction of the enhancement) by subtype; ccRCC is the heterogeneous one
HETEROGENEITY = {"ccrcc": 0.30, "prcc": 0.12, "chrcc": 0.08, "oncocytoma": 0.15, "fpaml": 0.06}
# P(visible necrosis | subtype, grade)
NECROSIS_P = {("ccrcc", "low"): 0.18, ("ccrcc", "high"): 0.60, ("prcc", "low"): 0.30, ("prcc", "high"): 0.55,
              ("chrcc", "low"): 0.12, ("chrcc", "high"): 0.35, ("oncocytoma", ""): 0.03, ("fpaml", ""): 0.02}
SCAR_P = {"oncocytoma": 0.45, "chrcc": 0.05}
INVERSION_P = {"oncocytoma": 0.6, "ccrcc": 0.05, "chrcc": 0.05}
# Maximum diameter (mm), (mean, SD) of a log-normal-ish draw, by subtype and grade
DIAMETER_MM = {("ccrcc", "low"): (40, 14), ("ccrcc", "high"): (62, 18), ("prcc", "low"): (38, 13),
               ("prcc", "high"): (55, 16), ("chrcc", "low"): (45, 16), ("chrcc", "high"): (60, 18),
               ("oncocytoma", ""): (38, 13), ("fpaml", ""): (30, 10)}
IRREGULARITY = {"low": 0.06, "high": 0.16, "": 0.04}

# DCE-MRI extended Tofts parameters: Ktrans (/min), ve, vp as (mean, SD); T10 (s) at 1.5 T
TISSUE_KINETICS = {
    BACKGROUND: ((0.08, 0.15, 0.02), 0.9),
    FAT: ((0.02, 0.10, 0.01), 0.3),
    CORTEX: ((0.60, 0.30, 0.30), 1.0),
    MEDULLA: ((0.25, 0.30, 0.10), 1.4),
    SINUS_FAT: ((0.02, 0.10, 0.01), 0.3),
    COLLECTING: ((0.0, 0.05, 0.0), 3.0),
    LIVER: ((0.50, 0.25, 0.20), 0.6),
    BOWEL_WALL: ((0.15, 0.20, 0.05), 0.9),
    BOWEL_LUMEN: ((0.0, 0.05, 0.0), 2.5),
    STRANDING: ((0.08, 0.25, 0.02), 0.8),
    NECROSIS: ((0.01, 0.05, 0.0), 2.0),
    SCAR: ((0.05, 0.40, 0.01), 1.2),
}
TUMOUR_KINETICS = {  # ((Ktrans mean, SD), (ve mean, SD), (vp mean, SD)), T10 (s)
    "ccrcc": (((0.45, 0.12), (0.35, 0.08), (0.10, 0.03)), 1.4),
    "prcc": (((0.10, 0.04), (0.22, 0.06), (0.02, 0.01)), 1.2),
    "chrcc": (((0.22, 0.06), (0.28, 0.06), (0.05, 0.02)), 1.3),
    "oncocytoma": (((0.40, 0.10), (0.35, 0.08), (0.08, 0.03)), 1.4),
    "fpaml": (((0.35, 0.10), (0.25, 0.06), (0.07, 0.02)), 1.1),
}

# Per-site scanner differences: CT noise SD (HU), blur (voxels), HU calibration offset, contrast timing
# factor on enhancement; MR baseline SNR, bolus arrival (s), breathing motion SD (mm)
SITE = {
    "site_a": dict(noise_hu=12.0, blur_vox=0.6, hu_offset=0.0, timing=1.00, snr=60.0, arrival_s=25.0, motion_mm=0.3),
    "site_b": dict(noise_hu=18.0, blur_vox=0.9, hu_offset=6.0, timing=0.90, snr=50.0, arrival_s=30.0, motion_mm=0.5),
    "site_c": dict(noise_hu=9.0, blur_vox=0.5, hu_offset=-5.0, timing=1.08, snr=70.0, arrival_s=22.0, motion_mm=0.3),
    "site_d": dict(noise_hu=22.0, blur_vox=1.1, hu_offset=3.0, timing=0.95, snr=45.0, arrival_s=35.0, motion_mm=0.6),
}


def draw(rng: np.random.Generator, mean_sd: tuple[float, float], low: float | None = None) -> float:
    """One value from (mean, SD); clipped below at ``low`` when given."""
    value = rng.normal(*mean_sd)
    return value if low is None else max(value, low)
