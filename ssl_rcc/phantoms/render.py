"""Images of a case from its anatomy: multi-phase CT (HU) and a DCE-MRI signal series with truth.

The DCE series is made with the :mod:`kinetics` forward models (extended Tofts, SPGR signal), so that
``python -m kinetics fit`` on it can be checked against the true maps written beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from kinetics.aif import plasma_aif
from kinetics.models import extended_tofts
from kinetics.signal import signal_from_concentration

from . import appearance as A
from .anatomy import Anatomy


def _phase_values(rng, phases, timing):
    """HU in the four phases for one tissue of one patient: a lesion that enhances strongly does so in
    every phase, so the per-phase draws share most of their deviation (correlation 0.8)."""
    z = rng.standard_normal()
    unenhanced = phases[0][0] + phases[0][1] * rng.standard_normal()
    values = [unenhanced]
    for mean, sd in phases[1:]:
        draw = mean + sd * (0.8 * z + 0.6 * rng.standard_normal())
        values.append(unenhanced + timing * (draw - phases[0][0]))
    return values


def _tissue_table(rng, subtype, site):
    """Per-case HU lookup (n_classes, n_phases) with between-patient spread and the site's timing."""
    table = np.zeros((A.N_CLASSES, len(A.PHASES)), np.float32)
    timing = A.SITE[site]["timing"] * rng.uniform(0.9, 1.1)  # contrast dose and bolus timing
    for cls, phases in A.TISSUE_HU.items():
        table[cls] = _phase_values(rng, phases, timing)
    table[A.TUMOUR] = _phase_values(rng, A.TUMOUR_HU[subtype], timing)
    table[A.TUMOUR, 1:] = np.maximum(table[A.TUMOUR, 1:], table[A.TUMOUR, 0] + 2.0)
    table[A.TUMOUR_B, 0] = unenhanced = table[A.TUMOUR, 0]
    # the second segment of an inversion: strong early and weak late enhancement swapped
    enh = table[A.TUMOUR, 1:] - unenhanced
    table[A.TUMOUR_B, 1:] = unenhanced + enh[::-1] * np.array([0.8, 1.0, 1.25], np.float32)
    return table


def render_ct(rng, anatomy: Anatomy, subtype, site):
    """Four-phase CT (x, y, z, 4) in HU, int16: tissue values, tumour texture, blur, noise, offset."""
    s = A.SITE[site]
    table = _tissue_table(rng, subtype, site)
    tumour_like = np.isin(anatomy.labels, [A.TUMOUR, A.TUMOUR_B])
    hetero = A.HETEROGENEITY[subtype] * anatomy.texture[tumour_like]
    out = np.empty(anatomy.labels.shape + (4,), np.int16)
    # white noise blurred with the image: the site's reconstruction sets both resolution and noise texture
    noise_gain = _blurred_noise_gain(s["blur_vox"])
    for p in range(4):
        hu = table[anatomy.labels, p]
        base = table[A.TUMOUR, 0]
        hu[tumour_like] = base + (hu[tumour_like] - base) * (1.0 + hetero) + 4.0 * anatomy.texture[tumour_like]
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * (s["noise_hu"] / noise_gain)
        hu = ndimage.gaussian_filter(hu, s["blur_vox"], mode="nearest", truncate=_TRUNCATE)
        out[..., p] = np.clip(np.rint(hu + s["hu_offset"]), -1024, 3071)
    return out


_TRUNCATE = 2.5


def _blurred_noise_gain(sigma):
    """SD of unit white noise after the 3D Gaussian blur that :func:`render_ct` applies."""
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    return float(np.sqrt(np.sum(kernel**2)) ** 3)


def shift_frames_z(series: np.ndarray, shifts_vox: ArrayLike) -> np.ndarray:
    """Move each frame of a (x, y, z, t) series by its own shift along z (voxels): frame t becomes
    ``series[..., z - shift[t], t]``, by the Fourier shift theorem on the series mirrored along z.

    An MR frame of a body moved by d is the unmoved frame's k-space times a linear phase: a Fourier
    shift keeps each frame's resolution, where interpolation would blur it by up to half a voxel (which
    no registration undoes). The mirror copy keeps the shift from wrapping one end of the crop into
    the other (the body goes on beyond the slab).
    """
    from scipy import fft

    nz = series.shape[2]
    mirrored = np.concatenate([series, series[:, :, ::-1]], axis=2)
    kz = fft.rfftfreq(2 * nz)
    phase = np.exp(-2j * np.pi * kz[:, None] * np.asarray(shifts_vox, float)[None, :]).astype(np.complex64)  # (z, t)
    moved = fft.irfft(fft.rfft(mirrored, axis=2) * phase, n=2 * nz, axis=2)
    return moved[:, :, :nz].astype(series.dtype)


@dataclass
class DceSeries:
    """A DCE-MRI acquisition on a coarser grid: ``signal`` (x, y, z, t) float32; ``times_s``; ``cp_mM``
    (plasma AIF on the frame times); ``t10_s`` (x, y, z); ``truth`` dict of ktrans (/min), ve, vp maps;
    ``tumour`` and ``kidney`` masks on this grid; ``affine``; acquisition values."""

    signal: np.ndarray
    times_s: np.ndarray
    cp_mM: np.ndarray
    t10_s: np.ndarray
    truth: dict
    tumour: np.ndarray
    kidney: np.ndarray
    affine: np.ndarray
    tr_s: float = 0.004
    fa_deg: float = 15.0
    frame_shifts_vox: np.ndarray | None = None  # (t,) breathing shift of each frame along z, voxels
    r1_per_mM_s: float = 4.5
    baseline_frames: int = 5


def render_dce(rng, anatomy: Anatomy, subtype, site, *, ct_spacing_mm=1.5, factor=2, size=(40, 40, 32),
               n_frames=50, frame_s=5.0, hct=0.42, motion_scale=1.0):
    """DCE-MRI series on a grid ``factor`` times coarser than the CT, cropped around the tumour.

    Tissue parameters come from the label map (nearest label, so every voxel has exact truth);
    tumour parameters are drawn per case and vary smoothly inside it. The bolus arrival varies
    per case and site; frames move slightly along z (breathing), by the site's amplitude times
    ``motion_scale`` (0 for none). The frames before the bolus arrival are the baseline.
    """
    s = A.SITE[site]
    labels = anatomy.labels[::factor, ::factor, ::factor]
    texture = anatomy.texture[::factor, ::factor, ::factor]
    centre = np.round(anatomy.centre_vox / factor).astype(int)
    lo = [int(np.clip(c - n // 2, 0, max(dim - n, 0))) for c, n, dim in zip(centre, size, labels.shape)]
    crop = tuple(slice(a, a + n) for a, n in zip(lo, size))
    labels, texture = labels[crop], texture[crop]
    tumour = anatomy.tumour[::factor, ::factor, ::factor][crop]
    kidney = anatomy.kidney[::factor, ::factor, ::factor][crop]
    params = np.zeros((A.N_CLASSES, 3), np.float32)
    t10_table = np.ones(A.N_CLASSES, np.float32)
    for cls, (values, t10) in A.TISSUE_KINETICS.items():
        params[cls] = values
        t10_table[cls] = t10
    (kt, ve, vp), t10 = A.TUMOUR_KINETICS[subtype]
    drawn = np.array([max(rng.normal(*kt), 0.02), np.clip(rng.normal(*ve), 0.08, 0.8), max(rng.normal(*vp), 0.0)])
    params[A.TUMOUR] = params[A.TUMOUR_B] = drawn
    t10_table[A.TUMOUR] = t10_table[A.TUMOUR_B] = t10
    maps = params[labels]  # (x, y, z, 3)
    in_tumour = np.isin(labels, [A.TUMOUR, A.TUMOUR_B])
    spread = 1.0 + 0.5 * A.HETEROGENEITY[subtype] * texture[in_tumour]
    maps[in_tumour, 0] *= spread  # heterogeneous Ktrans
    truth = {"ktrans": maps[..., 0], "ve": maps[..., 1], "vp": maps[..., 2]}
    t = np.arange(n_frames) * frame_s
    arrival = s["arrival_s"] + rng.uniform(-5.0, 5.0)
    cp = plasma_aif("parker", t, hct=hct, delay_s=arrival)
    conc = extended_tofts(t, cp, truth["ktrans"].ravel(), truth["ve"].ravel(), truth["vp"].ravel())
    t10_map = t10_table[labels]
    s0 = 1000.0 * (1.0 + 0.1 * texture.ravel())  # proton density varies
    signal = signal_from_concentration(conc, t10_s=t10_map.ravel(), tr_s=0.004, fa_deg=15.0, r1_per_mM_s=4.5, s0=s0)
    signal = signal.reshape(labels.shape + (n_frames,)).astype(np.float32)
    spacing = ct_spacing_mm * factor
    shifts = rng.normal(0.0, motion_scale * s["motion_mm"] / spacing, n_frames)
    signal = shift_frames_z(signal, shifts)
    baseline = max(3, int(arrival // frame_s))  # frames acquired before the bolus arrives
    sd = float(np.median(signal[kidney, :baseline])) / s["snr"] if kidney.any() else 20.0 / s["snr"]
    signal += rng.normal(0.0, sd, signal.shape).astype(np.float32)
    origin = (np.array(lo) * factor - (np.array(anatomy.labels.shape) - 1) / 2) * ct_spacing_mm
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    return DceSeries(signal, t, cp, t10_map, truth, tumour, kidney, affine, baseline_frames=baseline,
                     frame_shifts_vox=shifts)
