"""Geometry of a synthetic case: a label map of one kidney, its surroundings and a tumour.

All shapes are implicit functions on the voxel grid (ellipsoids deformed by smooth random fields), so a
case is a handful of vectorised array expressions, never a loop over voxels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from . import appearance as A


@lru_cache(maxsize=64)
def _linear_upsampling(n_out, n_in):
    """(n_out, n_in) matrix of linear interpolation from n_in to n_out points spanning the same extent."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def smooth_field(rng: np.random.Generator, shape: Sequence[int], scale_vox: float) -> np.ndarray:
    """Zero-mean, unit-SD random field smooth over about ``scale_vox`` voxels.

    Coarse white noise upsampled trilinearly, as three matrix products (separable interpolation).
    """
    coarse = tuple(max(2, int(np.ceil(s / scale_vox)) + 1) for s in shape)
    field = rng.standard_normal(coarse, dtype=np.float32)
    for axis, (n_out, n_in) in enumerate(zip(shape, coarse)):
        field = np.moveaxis(np.tensordot(_linear_upsampling(n_out, n_in), field, axes=(1, axis)), 0, axis)
    field -= field.mean()
    field /= field.std() + 1e-6
    return np.ascontiguousarray(field)


def rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation matrix with each Euler angle within +-max_deg."""
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class Anatomy:
    """``labels`` (x, y, z) uint8 tissue classes (see :mod:`appearance`); ``kidney`` and ``tumour``
    boolean masks (the kidney mask includes the tumour, as in KiTS); ``texture`` (x, y, z) float32
    unit-SD field for tumour heterogeneity; ``diameter_mm`` and ``centre_vox`` of the tumour;
    ``features``: what was drawn (necrosis, scar, inversion, stranding, exophytic)."""

    labels: np.ndarray
    kidney: np.ndarray
    tumour: np.ndarray
    texture: np.ndarray
    diameter_mm: float
    centre_vox: np.ndarray
    features: dict


def build_anatomy(rng: np.random.Generator, labels: Mapping[str, str], *, shape: Sequence[int] = (96, 96, 96),
                  spacing_mm: float = 1.5) -> Anatomy:
    """Draw the geometry of one case for the given labels (subtype, grade, invasion)."""
    subtype, grade, invaded = labels["subtype"], labels["grade"], labels["invasion"] == "yes"
    scale = 96 * 1.5 / (shape[0] * spacing_mm)  # sizes below are for a 144 mm field of view
    grid = (np.indices(shape, dtype=np.float32) - ((np.array(shape) - 1) / 2)[:, None, None, None]) * spacing_mm
    # kidney frame: u medial-lateral (hilum at u < 0), v anterior-posterior, w long axis
    rot = rotation(rng, 15.0)
    centre = rng.normal(0, 4.0, 3) / scale
    rel = grid - centre[:, None, None, None].astype(np.float32)
    u, v, w = (np.tensordot(rot.T[i], rel, axes=1) for i in range(3))
    a_w, a_u, a_v = rng.uniform(50, 60) / scale, rng.uniform(25, 31) / scale, rng.uniform(21, 26) / scale
    r_kidney = np.sqrt((u / a_u) ** 2 + (v / a_v) ** 2 + (w / a_w) ** 2)
    inside = r_kidney < 1.0
    sinus = (((u + 0.45 * a_u) / (0.55 * a_u)) ** 2 + (v / (0.42 * a_v)) ** 2 + (w / (0.6 * a_w)) ** 2) < 1.0
    sinus &= r_kidney < 1.03
    collecting = (((u + 0.4 * a_u) / (0.32 * a_u)) ** 2 + (v / (0.3 * a_v)) ** 2 + (w / (0.25 * a_w)) ** 2) < 1.0
    for pole in (-1, 1):  # calyces towards both poles
        collecting |= (((u + 0.25 * a_u) / (0.2 * a_u)) ** 2 + (v / (0.22 * a_v)) ** 2
                       + ((w - pole * 0.42 * a_w) / (0.18 * a_w)) ** 2) < 1.0
    collecting &= sinus
    parenchyma = inside & ~sinus
    cortex_depth = 7.0 / scale / a_u
    pyramids = smooth_field(rng, shape, 6.0) > -0.3
    medulla = parenchyma & (r_kidney < 1.0 - cortex_depth) & pyramids
    fat_mm = rng.uniform(8.0, 26.0) / scale  # patient fat amount
    r_fat = np.sqrt((u / (a_u + fat_mm)) ** 2 + (v / (a_v + fat_mm)) ** 2 + (w / (a_w + 0.6 * fat_mm)) ** 2)
    lab = np.full(shape, A.BACKGROUND, np.uint8)
    lab[r_fat < 1.0] = A.FAT
    # neighbouring organ on one side, beyond the fat: liver above, bowel loops below
    side = rng.choice([-1.0, 1.0])
    beyond = (side * grid[0] > (a_u + fat_mm) * 0.8) & (r_fat >= 1.0)
    loops = smooth_field(rng, shape, 7.0)
    liver = beyond & (grid[2] > rng.uniform(-10, 20) / scale)
    lab[liver] = A.LIVER
    bowel = beyond & ~liver & (np.abs(loops) < 0.55)
    lab[bowel] = A.BOWEL_WALL
    lab[bowel & (np.abs(loops) < 0.2)] = A.BOWEL_LUMEN
    lab[parenchyma] = A.CORTEX
    lab[medulla] = A.MEDULLA
    lab[sinus] = A.SINUS_FAT
    lab[collecting] = A.COLLECTING

    # tumour: a deformed ellipsoid centred at or beyond the kidney surface, away from the hilum
    mean_d, sd_d = A.DIAMETER_MM[(subtype, grade)]
    diameter = float(np.clip(rng.lognormal(np.log(mean_d), sd_d / mean_d), 15.0, 80.0))
    radius = diameter / 2 / scale
    direction = rng.normal(size=3)
    direction[0] = abs(direction[0]) + 0.3  # lateral half, where the parenchyma is
    direction /= np.linalg.norm(direction)
    exophytic = invaded or rng.random() < 0.55
    depth = rng.uniform(0.85, 1.05) if exophytic else rng.uniform(0.45, 0.75)
    surface = direction / np.sqrt((direction[0] / a_u) ** 2 + (direction[1] / a_v) ** 2 + (direction[2] / a_w) ** 2)
    t_centre = surface * depth  # in the kidney frame (mm)
    du, dv, dw = u - t_centre[0], v - t_centre[1], w - t_centre[2]
    elong = rng.uniform(0.85, 1.15, 3)
    r_t = np.sqrt((du / elong[0]) ** 2 + (dv / elong[1]) ** 2 + (dw / elong[2]) ** 2) / radius
    lobulation = smooth_field(rng, shape, max(3.0, radius / 2.5 / (spacing_mm / scale)))
    r_t = r_t * (1.0 + A.IRREGULARITY[grade] * lobulation)
    tumour = r_t < 1.0
    features = {"exophytic": bool(exophytic), "necrosis": False, "scar": False, "inversion": False, "stranding": False}
    if invaded:  # nodular extension through the capsule into the perinephric fat
        outward = (du * direction[0] + dv * direction[1] + dw * direction[2]) / radius
        nodules = (smooth_field(rng, shape, 2.5) > 1.0) & (r_t < 1.35) & (outward > 0.3) & (r_fat < 1.0)
        tumour |= nodules
    texture = smooth_field(rng, shape, 3.0)
    lab_t = np.full(shape, A.TUMOUR, np.uint8)
    if rng.random() < A.INVERSION_P.get(subtype, 0.0):  # segmental enhancement inversion
        normal = rng.normal(size=3)
        lab_t[(du * normal[0] + dv * normal[1] + dw * normal[2]) > 0] = A.TUMOUR_B
        features["inversion"] = True
    if rng.random() < A.NECROSIS_P[(subtype, grade)]:
        necrotic = (r_t < rng.uniform(0.35, 0.6)) & (smooth_field(rng, shape, 4.0) > -0.8)
        lab_t[necrotic] = A.NECROSIS
        features["necrosis"] = True
    if rng.random() < A.SCAR_P.get(subtype, 0.0):  # central stellate scar
        angle = np.arctan2(dv, du)
        spokes = np.cos(5 * angle + rng.uniform(0, 2 * np.pi)) > 0.85
        lab_t[(r_t < 0.18) | ((r_t < 0.55) & spokes)] = A.SCAR
        features["scar"] = True
    lab[tumour] = lab_t[tumour]
    # fat stranding around the tumour: common with invasion, but also seen without it (oedema, vessels)
    if rng.random() < (0.8 if invaded else 0.25):
        strands = (np.abs(smooth_field(rng, shape, 2.0)) < 0.12) & (r_t < 1.8) & (lab == A.FAT)
        lab[strands] = A.STRANDING
        features["stranding"] = True
    kidney = inside | tumour
    centre_vox = (rot @ t_centre + centre) / spacing_mm + (np.array(shape) - 1) / 2
    return Anatomy(lab, kidney, tumour, texture, diameter, centre_vox, features)
